"""Protocol parameters and the per-round configuration, with JSON-able forms.

:class:`SecAggParams` is what the round configuration carries about secure aggregation: the
Shamir threshold ``t`` (counted in neighbours' shares), the neighbour degree ``k``
(``None`` for the complete graph) and the quantization :class:`~secure_agg.quantize.SegmentLayout`
(ring, clip ranges, bit widths, the most clients a sum may hold). :class:`SessionConfig`
adds the round id and the hash of the model the round trains, which the session id binds.

``to_dict``/``from_dict`` give plain JSON-able dicts; :meth:`SecAggParams.canonical_bytes`
is the exact byte string the session id hashes (sorted keys, no whitespace), so a client and
the server that agree on the dict agree on the session id.

Raises :class:`~secure_agg.errors.SecAggError` (``INVALID_PARAMETERS``) for parameters that
cannot work: ``t < 2``, an odd or too-small degree, ``t > k``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.quantize import SegmentLayout

__all__ = ["SecAggParams", "SessionConfig"]


def _invalid(message: str) -> SecAggError:
    return SecAggError(ErrorCode.INVALID_PARAMETERS, message)


@dataclasses.dataclass(frozen=True)
class SecAggParams:
    """Threshold ``t``, degree ``k`` (``None``: complete graph) and quantization layout.

    In a cohort of ``n`` advertised clients each client has ``min(k, n - 1)`` neighbours
    (all others when ``k`` is ``None`` or ``k >= n - 1``) and Shamir-shares its secrets
    ``t``-of-that-many; the round needs at least ``t`` neighbours alive around every client
    whose masks must be removed. Use :func:`~secure_agg.graph_params.choose_parameters`
    to pick ``(k, t)``.
    """

    threshold: int
    degree: int | None
    layout: SegmentLayout

    def __post_init__(self) -> None:
        if self.threshold < 2:
            raise _invalid(f"threshold must be >= 2, got {self.threshold}")
        if self.degree is not None:
            if self.degree < 2 or self.degree % 2:
                raise _invalid(f"degree must be even and >= 2, got {self.degree}")
            if self.threshold > self.degree:
                raise _invalid(f"threshold {self.threshold} exceeds degree {self.degree}")
        if self.threshold > self.layout.max_clients - 1:
            raise _invalid(
                f"threshold {self.threshold} needs more clients than max_clients "
                f"{self.layout.max_clients} allows"
            )

    @property
    def max_clients(self) -> int:
        return self.layout.max_clients

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "degree": self.degree, "layout": self.layout.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SecAggParams:
        try:
            degree = data["degree"]
            return cls(
                threshold=int(data["threshold"]),
                degree=None if degree is None else int(degree),
                layout=SegmentLayout.from_dict(data["layout"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"not a secure-aggregation parameter set: {exc}") from exc

    def canonical_bytes(self) -> bytes:
        """The canonical JSON encoding that the session id hashes."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False
        ).encode("utf-8")


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """One round's secure-aggregation configuration, known to the server and every client.

    ``round_id`` is the coordinator's round identifier (unique per round), ``model_hash``
    the digest of the model version the round trains (any length, typically 32 bytes).
    """

    round_id: str
    model_hash: bytes
    params: SecAggParams

    def __post_init__(self) -> None:
        if not self.round_id:
            raise _invalid("round_id must be non-empty")

    def to_dict(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id,
            "model_hash": self.model_hash.hex(),
            "params": self.params.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionConfig:
        try:
            return cls(
                round_id=str(data["round_id"]),
                model_hash=bytes.fromhex(data["model_hash"]),
                params=SecAggParams.from_dict(data["params"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"not a session configuration: {exc}") from exc
