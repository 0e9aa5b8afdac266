"""The real coordinator with one lie injected: ``python -m tests.e2e.lying_coordinator``.

    python -m tests.e2e.lying_coordinator --lie NAME --to IDS [--about ID] [--threshold T] \
        [--record PATH] [run] ARGS...

runs ``fedadamw-coordinator run ARGS...`` (``coordinator.cli.main``) unchanged: the real
``coordinator.server.Coordinator``, store, TLS and mutual TLS, enrollment and round
machine. Only its gRPC servicer is replaced (``coordinator.server.EdgeService`` is patched
before the server is built) by ``LyingEdgeService``, a subclass of the honest
``coordinator.service.EdgeService`` that lies to the participants whose secagg ids are in
``--to`` and otherwise answers exactly as the honest one:

``threshold``
    ``GetRoundConfig`` carries a secure-aggregation session whose threshold is
    ``--threshold`` (default 2) instead of the round's.
``split``
    The consistency check tells them that ``--about`` dropped, while the others are told the
    truth (it survived): a split view, so that the ones told "alive" reveal its b-shares
    and the ones told "dead" its s-shares. The round machine would refuse signatures over
    the false list, so the liar keeps them and acknowledges; at unmasking it sends these
    participants (dropped by the round machine for not signing) a prompt with every
    signature that verifies over their view, which is all a liar can forge. Whatever they
    send to ``Unmask`` is recorded and acknowledged, never passed on.
``overlap``
    The consistency check lists ``--about`` both alive and dead.
``layout``
    ``GetRoundConfig`` carries a quantization layout whose segments the task does not
    produce (the update's ``delta`` renamed), so the agent's update cannot be encoded.

Each lie told and each answer to it is appended to ``--record`` (default
``DATA_DIR/lies.jsonl``) as one JSON object per line, with ``round_id``, ``lie``,
``secagg_id`` and ``event`` (``told``, ``signed``, ``prompted``, ``revealed``), so a test
can check that the lie was told and what it bought; what the coordinator accepted from each
participant on the honest path (each phase's message: ``ShareKeys`` recipients, uploaded
chunk indices, ``Unmask`` share owners) is appended as ``received``, since a round's
protocol records are deleted from the store when it ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc

import coordinator.server
from coordinator import cli, pki
from coordinator.errors import CoordinatorError
from coordinator.service import EdgeService
from wire.v1 import edge_pb2 as pb

__all__ = ["LIES", "LyingEdgeService", "main"]

log = logging.getLogger("lying_coordinator")

LIES = ("threshold", "split", "overlap", "layout")
Context = grpc.aio.ServicerContext[Any, Any]


class Lie:
    """What to lie about, to whom, and where to record it."""

    def __init__(
        self, name: str, targets: frozenset[int], about: int, threshold: int, record: Path
    ) -> None:
        self.name = name
        self.targets = targets
        self.about = about
        self.threshold = threshold
        self.record_path = record
        self._lock = threading.Lock()
        # split: per round, the session id and the signatures kept from the targets
        self.session_ids: dict[str, bytes] = {}
        self.signatures: dict[str, dict[int, bytes]] = {}

    def record(self, round_id: str, secagg_id: int, event: str, **detail: Any) -> None:
        entry = {
            "round_id": round_id,
            "lie": self.name,
            "secagg_id": secagg_id,
            "event": event,
            **detail,
        }
        level = logging.INFO if event == "received" else logging.WARNING
        log.log(level, "LIE %s", json.dumps(entry, sort_keys=True))
        with self._lock, self.record_path.open("a") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


class LyingEdgeService(EdgeService):
    """The honest service, but for the one lie of ``LyingEdgeService.lie``."""

    lie: Lie  # set by main() before the server is built

    def _secagg_id(self, context: Context, round_id: str) -> int | None:
        """The caller's secagg id in the open round ``round_id``, if it is a participant."""
        auth = {key: list(values) for key, values in context.auth_context().items()}
        try:
            client_id = pki.client_id_from_auth_context(auth)
        except CoordinatorError:
            return None  # no client certificate: the honest path refuses it
        active = self.machine.active
        if active is None or active.round_id != round_id:
            return None
        participant = active.state.participants.get(client_id)
        return None if participant is None else participant.secagg_id

    def _targeted(self, context: Context, round_id: str) -> int | None:
        secagg = self._secagg_id(context, round_id)
        return secagg if secagg is not None and secagg in self.lie.targets else None

    async def GetRoundConfig(  # noqa: N802
        self, request: pb.RoundRef, context: Context
    ) -> pb.RoundConfig:
        config = await super().GetRoundConfig(request, context)
        lie = self.lie
        if (
            lie.name == "threshold"
            and config.secagg_id in lie.targets
            and config.secagg_session_json
        ):
            session = json.loads(config.secagg_session_json)
            honest = session["params"]["threshold"]
            session["params"]["threshold"] = lie.threshold
            config.secagg_session_json = _canonical(session)
            lie.record(
                config.round_id, config.secagg_id, "told", honest=honest, threshold=lie.threshold
            )
        if lie.name == "layout" and config.secagg_id in lie.targets:
            layout = json.loads(config.quantization_json)
            renamed = {"delta": "not_this_tasks_delta"}
            for segment in layout["segments"]:
                segment["name"] = renamed.get(segment["name"], segment["name"])
                counted = segment.get("counts_clips_of", [])
                segment["counts_clips_of"] = [renamed.get(n, n) for n in counted]
            config.quantization_json = _canonical(layout)
            lie.record(config.round_id, config.secagg_id, "told")
        return config

    async def WatchRound(  # noqa: N802
        self, request: pb.RoundRef, context: Context
    ) -> AsyncIterator[pb.RoundEvent]:
        secagg = self._targeted(context, request.round_id)
        async for event in super().WatchRound(request, context):
            if secagg is not None:
                self._distort(event, secagg)
            yield event

    def _distort(self, event: pb.RoundEvent, secagg: int) -> None:
        lie = self.lie
        kind = event.WhichOneof("event")
        if kind == "consistency" and lie.name in ("split", "overlap"):
            request = event.consistency
            alive, dead = list(request.alive), list(request.dead)
            if lie.about not in alive or lie.about == secagg:
                return
            if lie.name == "split":
                alive.remove(lie.about)
                lie.session_ids[event.round_id] = bytes(request.session_id)
            dead = sorted({*dead, lie.about})
            event.consistency.CopyFrom(
                pb.ConsistencyRequest(session_id=request.session_id, alive=alive, dead=dead)
            )
            lie.record(event.round_id, secagg, "told", alive=alive, dead=dead)
        elif (
            kind is None
            and lie.name == "split"
            and event.phase == pb.PHASE_UNMASKING
            and event.round_id in lie.session_ids
        ):
            # dropped by the round machine (it never saw this signature): forge the prompt
            kept = lie.signatures.get(event.round_id, {})
            event.unmask.CopyFrom(
                pb.UnmaskPrompt(
                    session_id=lie.session_ids[event.round_id],
                    signatures=[
                        pb.SurvivorSignature(secagg_id=signer, signature=signature)
                        for signer, signature in sorted(kept.items())
                    ],
                )
            )
            lie.record(event.round_id, secagg, "prompted", signers=sorted(kept))

    async def SubmitConsistencySignature(  # noqa: N802
        self, request: pb.ConsistencySignatureRequest, context: Context
    ) -> pb.Ack:
        lie = self.lie
        secagg = self._targeted(context, request.round_id)
        if lie.name != "split" or secagg is None or request.round_id not in lie.session_ids:
            return await self._honest_signature(request, context)
        lie.signatures.setdefault(request.round_id, {})[secagg] = bytes(request.signature)
        lie.record(request.round_id, secagg, "signed")
        return pb.Ack(round_id=request.round_id, phase=request.phase)

    def _received(self, context: Context, round_id: str, method: str, **detail: Any) -> None:
        """Record what the coordinator accepted from a participant on the honest path: a
        round's protocol records are deleted when it ends, so the tests read from here
        what the coordinator obtained."""
        secagg = self._secagg_id(context, round_id)
        if secagg is not None:
            self.lie.record(round_id, secagg, "received", method=method, **detail)

    async def AdvertiseKeys(  # noqa: N802
        self, request: pb.AdvertiseKeysRequest, context: Context
    ) -> pb.Ack:
        answer = await super().AdvertiseKeys(request, context)
        self._received(context, request.round_id, "AdvertiseKeys")
        return answer

    async def ShareKeys(  # noqa: N802
        self, request: pb.ShareKeysRequest, context: Context
    ) -> pb.Ack:
        answer = await super().ShareKeys(request, context)
        recipients = sorted(share.recipient for share in request.shares)
        self._received(context, request.round_id, "ShareKeys", recipients=recipients)
        return answer

    async def UploadMaskedInput(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.MaskedInputChunk], context: Context
    ) -> pb.UploadStatus:
        seen: list[pb.MaskedInputChunk] = []

        async def tapped() -> AsyncIterator[pb.MaskedInputChunk]:
            async for chunk in request_iterator:
                seen.append(chunk)
                yield chunk

        answer = await super().UploadMaskedInput(tapped(), context)
        if seen:
            chunks = [c.chunk_index for c in seen]
            self._received(context, seen[0].round_id, "UploadMaskedInput", chunks=chunks)
        return answer

    async def _honest_signature(
        self, request: pb.ConsistencySignatureRequest, context: Context
    ) -> pb.Ack:
        answer = await super().SubmitConsistencySignature(request, context)
        self._received(context, request.round_id, "SubmitConsistencySignature")
        return answer

    async def Unmask(  # noqa: N802
        self, request: pb.UnmaskRequest, context: Context
    ) -> pb.Ack:
        lie = self.lie
        secagg = self._targeted(context, request.round_id)
        if lie.name != "split" or secagg is None or request.round_id not in lie.session_ids:
            answer = await super().Unmask(request, context)
            self._received(
                context,
                request.round_id,
                "Unmask",
                self_mask_owners=sorted(share.owner for share in request.self_mask_shares),
                key_owners=sorted(share.owner for share in request.key_shares),
            )
            return answer
        lie.record(
            request.round_id,
            secagg,
            "revealed",
            self_mask_owners=sorted(s.owner for s in request.self_mask_shares),
            key_owners=sorted(s.owner for s in request.key_shares),
        )
        return pb.Ack(round_id=request.round_id, phase=request.phase)


def _ids(text: str) -> frozenset[int]:
    return frozenset(int(item) for item in text.split(",") if item.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.lying_coordinator")
    parser.add_argument("--lie", required=True, choices=LIES)
    parser.add_argument("--to", type=_ids, required=True, help="secagg ids lied to, e.g. 1,2")
    parser.add_argument("--about", type=int, default=0, help="the client a list lies about")
    parser.add_argument("--threshold", type=int, default=2, help="the threshold to claim")
    parser.add_argument("--record", type=Path, default=None)
    ours, rest = parser.parse_known_args(argv)
    if not rest or rest[0] != "run":
        rest = ["run", *rest]
    record = ours.record
    if record is None:
        where = argparse.ArgumentParser(add_help=False)
        where.add_argument("--data-dir", type=Path, required=True)
        record = where.parse_known_args(rest[1:])[0].data_dir / "lies.jsonl"
    LyingEdgeService.lie = Lie(ours.lie, ours.to, ours.about, ours.threshold, record)
    coordinator.server.EdgeService = LyingEdgeService  # type: ignore[attr-defined]
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
