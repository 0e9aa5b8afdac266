"""The coordinator's blob store and spool turn read-only, or fill up, in each phase of a round.

The blob directory (``DIR/blobs``) and the masked-input spool (``DIR/spool``) of a real
coordinator process each lie on a small tmpfs of their own; the database (SQLite, in
``DIR``) does not. One round per phase, four in-process agents: two send their message for
the phase, and once it is durable both filesystems are remounted read-only (or filled by a
ballast file to the last byte), the other two send theirs, and the mounts stay so for
``HOLD`` seconds before they are made writable again (or the ballast deleted). Read-only
runs on SQLite and on PostgreSQL, full on SQLite. Every agent waits before its message for
the next phase until then, so the fault stays in its phase. What must hold after each round
(docs/architecture.md, section 5):

- nothing acknowledged is lost: the round commits with all four, and the new model is the
  exact mean of the four inputs;
- versions only move forward, and no partial version exists (each version's blobs read back
  with their sha256);
- whatever needed to write said so: an upload is refused with UNAVAILABLE ("cannot store
  data now"), never INTERNAL, and the log says the storage failed and recovered; a commit
  that cannot write its blobs stalls the driver loudly (ERROR, ``fedadamw_round_driver_
  stalled``, health NOT_SERVING) and completes once the disk is writable.

The phases that write nothing (the key phases, the consistency check) must not notice.
Mounting needs root (or CAP_SYS_ADMIN), as on this project's CI machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.blobs import BlobStore
from edge_client.session import Outcome
from tests.e2e.harness import FAST, Coordinator, TestAgent, merged
from tests.e2e.test_dropouts import Known
from tests.faults import matrix
from tests.faults.test_crash import STEPS, _gated, _store, _wait_durable
from tests.faults.test_storage import fill, small_tmpfs

HOLD = 4.0  # seconds the storage stays read-only once the gated agents have sent
SETTINGS = merged(
    FAST,
    rounds=len(STEPS),
    cohort=4,
    min_clients=4,
    retention={"keep_versions": len(STEPS) + 1},  # every version is checked at the end
    deadlines={
        "advertise_keys": 60,
        "share_keys": 60,
        "masked_input": 60,
        "consistency_check": 60,
        "unmasking": 60,
        "restart_grace": 30,
    },
)


def _remount(paths: list[Path], mode: str) -> None:
    for path in paths:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


@contextlib.contextmanager
def _mounted(data_dir: Path) -> Iterator[list[Path]]:
    with (
        small_tmpfs(data_dir / "blobs", 64 << 20) as blobs,
        small_tmpfs(data_dir / "spool", 64 << 20) as spool,
    ):
        try:
            yield [blobs, spool]
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(blobs)], check=False)
            subprocess.run(["mount", "-o", "remount,rw", str(spool)], check=False)


def _metrics(coordinator: Coordinator) -> dict[str, float]:
    url = f"http://127.0.0.1:{coordinator.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _sum(values: dict[str, float], prefix: str, *parts: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix) and all(p in k for p in parts))


def _refused(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Requests refused UNAVAILABLE in between, by method."""
    out = {}
    for key, value in after.items():
        if key.startswith("fedadamw_grpc_requests_total{") and 'code="UNAVAILABLE"' in key:
            method = key.split('method="')[1].split('"')[0]
            if value - before.get(key, 0.0) > 0:
                out[method] = value - before.get(key, 0.0)
    return out


class _Fault:
    """Makes the mounts fail one way (``break_``) and then heals them."""

    def __init__(self, kind: str, mounts: list[Path]) -> None:
        self.kind = kind
        self.mounts = mounts
        self._ballast: list[Path] = []

    def break_(self) -> None:
        if self.kind == "read-only":
            _remount(self.mounts, "ro")
        else:
            self._ballast = [fill(mount, leave=0) for mount in self.mounts]

    def heal(self) -> None:
        if self.kind == "read-only":
            _remount(self.mounts, "rw")
        else:
            for ballast in self._ballast:
                ballast.unlink()


@pytest.mark.parametrize(
    ("kind", "backend"),
    [("read-only", "sqlite"), ("read-only", "postgresql"), ("full", "sqlite")],
    indirect=["backend"],
)
def test_a_failing_blob_store_in_each_phase_loses_nothing(
    tmp_path: Path, kind: str, backend: str | None
) -> None:
    coordinator = Coordinator(tmp_path, SETTINGS, db_url=backend)
    coordinator.data_dir.mkdir(mode=0o700)
    with _mounted(coordinator.data_dir) as mounts:
        storage = _Fault(kind, mounts)
        coordinator.start()
        observed: list[tuple[str, dict[str, float], float, bool]] = []
        try:

            async def scenario() -> list[list[Known]]:
                agents = await TestAgent.many(coordinator, tmp_path, 4)
                inputs = []
                try:
                    for r, (proto_phase, phase, status) in enumerate(STEPS):
                        # the fault stays in its phase: every agent waits before the next
                        # phase's message until the storage is writable again
                        fault, after = asyncio.Event(), asyncio.Event()
                        following = STEPS[r + 1][0] if r + 1 < len(STEPS) else None
                        later = {following: after} if following is not None else {}
                        kinds = [_gated(later), _gated({proto_phase: fault, **later})]
                        updates = [Known(100 * r + i) for i in range(4)]
                        assignments = await asyncio.gather(*(a.assignment() for a in agents))
                        runs = [
                            asyncio.ensure_future(a.session(assignment, u, kinds[i % 2]).run())
                            for i, (a, assignment, u) in enumerate(
                                zip(agents, assignments, updates, strict=True)
                            )
                        ]
                        steady = {a.credentials.client_id for a in agents[::2]}
                        await asyncio.to_thread(_wait_durable, coordinator, phase, status, steady)
                        before = _metrics(coordinator)
                        storage.break_()
                        fault.set()
                        stalled = False
                        until = time.monotonic() + HOLD
                        while time.monotonic() < until:
                            await asyncio.sleep(0.25)
                            now = await asyncio.to_thread(_metrics, coordinator)
                            stalled |= now.get("fedadamw_round_driver_stalled", 0.0) == 1.0
                        during = await asyncio.to_thread(_metrics, coordinator)
                        storage.heal()
                        after.set()
                        results = await asyncio.gather(*runs)
                        assert [x.outcome for x in results] == [Outcome.COMMITTED] * 4, (
                            phase,
                            results,
                        )
                        refused = _refused(before, during)
                        internal = _sum(during, "fedadamw_grpc_requests_total", 'code="INTERNAL"')
                        observed.append((phase.value, refused, internal, stalled))
                        inputs.append(updates)
                finally:
                    for a in agents:
                        await a.close()
                return inputs

            inputs = asyncio.run(scenario())
            log = coordinator.log()
            status = coordinator.status()
        finally:
            coordinator.stop()
        store = _store(coordinator)
        blobs = BlobStore(coordinator.data_dir / "blobs")
        try:
            versions = store.list_versions()
            models = [blobs.read_array(v.model_sha256, "<f4").astype(np.float64) for v in versions]
            for v in versions:  # whole: every blob hashes to its name
                for sha in v.blob_hashes:
                    blobs.verify(sha)
            rounds = store.list_rounds()
        finally:
            store.close()

    assert [v.version for v in versions] == list(range(len(STEPS) + 1))
    assert [(r.outcome.value, r.survivors) for r in rounds] == [("committed", 4)] * len(STEPS)
    for r, updates in enumerate(inputs):
        expected = models[r] + np.mean([u.sent["delta"] for u in updates], axis=0)
        np.testing.assert_allclose(models[r + 1], expected, atol=2e-6, err_msg=f"round {r}")
    assert status["model_version"] == len(STEPS)
    assert "Traceback" not in log
    by_phase = {
        phase: (refused, internal, stalled) for phase, refused, internal, stalled in observed
    }
    # nothing is INTERNAL, in any phase
    assert all(internal == 0 for _, internal, _ in by_phase.values()), by_phase
    # the phases that write nothing do not notice
    for quiet in ("advertise_keys", "share_keys", "consistency_check"):
        assert by_phase[quiet] == ({}, 0, False), (quiet, by_phase[quiet])
    # uploads were refused as temporary and retried; the log said so, and the recovery
    assert set(by_phase["masked_input"][0]) == {"UploadMaskedInput"}, by_phase
    assert re.search(r"ERROR .*the storage is failing: UploadMaskedInput refused", log), log
    assert "the storage recovered after" in log
    # the commit stalled the driver loudly, then went through
    assert by_phase["unmasking"][2], by_phase
    assert "round driver: BlobError while it was to commit" in log
    assert "round driver: recovered after" in log

    outcome = "committed 4/4, exact mean"
    for phase, refused, _, _ in observed:
        if phase == "masked_input":
            seen = (
                f"{refused['UploadMaskedInput']:.0f} uploads refused UNAVAILABLE and retried; "
                "the log said the storage failed, then recovered"
            )
        elif phase == "unmasking":
            seen = "commit stalled (driver_stalled=1, ERROR), then committed"
        else:
            seen = "nothing written in this phase: no refusal, no stall"
        matrix.record(
            f"blob store {kind}",
            f"blobs and spool remounted ro for {HOLD:.0f} s"
            if kind == "read-only"
            else f"blobs and spool tmpfs filled to 0 bytes free for {HOLD:.0f} s",
            phase,
            outcome,
            seen,
            backend="postgresql" if backend else "sqlite",
        )
