"""Fixed-point encoding of float vectors into the ring ``Z_R``, ``R = 2**32`` or ``2**64``.

A client's vector is laid out as named *segments* (:class:`QuantSegment`), each with its own
length, clip range ``[low, high]`` and bit width ``b``. For FedAdamW the layout is
``[model delta (d) | second-moment block means (B) | weight (1) | clip count (1)]``
(:func:`update_layout`), but the layout is generic so the coordinator can build it from the
round configuration, and every parameter object has a JSON-able ``to_dict``/``from_dict``.

Encoding a value ``x`` of a segment (:func:`encode`):

1. clip to ``[low, high]`` (clipped values are counted);
2. scale to ``z = (x - low) / step`` with ``step = (high - low) / (2**b - 1)``;
3. round *stochastically*: up with probability ``z - floor(z)``, so ``E[round(z)] = z``.
   The uniform variates come from an AES-CTR keystream seeded by the injected
   :data:`~secure_agg.randomness.RandomSource` (53-bit uniforms, bias below ``2**-53``).

A clip-counter segment (``counts_clips_of`` non-empty, length 1, range ``[0, 2**b - 1]``)
is not given by the caller: :func:`encode` fills it with the number of clipped values in
the segments it names (saturating at ``2**b - 1``), so the server learns only the summed
count and can tune the clip range.

Sums and overflow. Each encoded value lies in ``[0, 2**b - 1]``, so the ring sum of ``N``
clients is exact as long as ``N * (2**b - 1) < R``. :class:`SegmentLayout` refuses any
segment for which ``max_clients`` clients all at the top of the range could wrap around.

Decoding (:func:`decode_sum`) turns the ring sum of ``N`` clients into the float64 sum
``N * low + S * step``. Its error against the sum of the clipped inputs is below
:func:`sum_error_bound`: ``N * step`` from rounding (each client is off by less than one
step) plus ``2**-50 * N * (|low| + high - low)`` for float64 evaluation.
Bit widths are capped at 52 so the scaled value keeps its fractional part in float64.

Raises :class:`~secure_agg.errors.SecAggError`: ``INVALID_PARAMETERS`` for a layout that
cannot work, ``INVALID_INPUT`` for missing, extra, misshapen or NaN inputs.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.prg import SEED_BYTES, Keystream
from secure_agg.randomness import RandomSource, system_random

__all__ = [
    "MAX_SEGMENT_BITS",
    "RING_BITS",
    "QuantSegment",
    "SegmentLayout",
    "UpdateSegment",
    "decode_sum",
    "encode",
    "max_bits",
    "ring_dtype",
    "sum_error_bound",
    "update_layout",
]

RING_BITS = (32, 64)
MAX_SEGMENT_BITS = 52
_CHUNK = 1 << 18
_UNIFORM_SCALE = 2.0**-53


class UpdateSegment(enum.StrEnum):
    """The names of the segments of a FedAdamW upload (:func:`update_layout`)."""

    DELTA = "delta"
    SECOND_MOMENT = "second_moment"
    WEIGHT = "weight"
    SAMPLES = "samples"
    TRAIN_LOSS = "train_loss"
    CLIP_COUNT = "clip_count"


def ring_dtype(ring_bits: int) -> np.dtype[Any]:
    """``uint32`` for ``Z_{2^32}``, ``uint64`` for ``Z_{2^64}``."""
    if ring_bits == 32:
        return np.dtype(np.uint32)
    if ring_bits == 64:
        return np.dtype(np.uint64)
    raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"ring_bits must be 32 or 64, got {ring_bits}")


def max_bits(ring_bits: int, max_clients: int) -> int:
    """Largest ``b <= 52`` with ``max_clients * (2**b - 1) < 2**ring_bits``."""
    ring_dtype(ring_bits)
    if max_clients < 1:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, "max_clients must be >= 1")
    bits = 0
    while bits < MAX_SEGMENT_BITS and max_clients * (2 ** (bits + 1) - 1) < 2**ring_bits:
        bits += 1
    if bits == 0:
        raise SecAggError(
            ErrorCode.INVALID_PARAMETERS,
            f"{max_clients} clients do not fit a {ring_bits}-bit ring even at one bit",
        )
    return bits


def _invalid(message: str) -> SecAggError:
    return SecAggError(ErrorCode.INVALID_PARAMETERS, message)


@dataclasses.dataclass(frozen=True)
class QuantSegment:
    """One named run of ``length`` values, clipped to ``[low, high]`` and coded in ``bits``.

    ``counts_clips_of`` non-empty makes this a clip counter (see the module docstring).
    """

    name: str
    length: int
    low: float
    high: float
    bits: int
    counts_clips_of: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise _invalid("a segment needs a name")
        if self.length < 1:
            raise _invalid(f"segment {self.name!r}: length must be >= 1, got {self.length}")
        if not 1 <= self.bits <= MAX_SEGMENT_BITS:
            raise _invalid(f"segment {self.name!r}: bits must be in [1, 52], got {self.bits}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise _invalid(f"segment {self.name!r}: need finite low < high")
        if self.counts_clips_of and (
            self.length != 1 or self.low != 0 or self.high != float(self.levels)
        ):
            raise _invalid(
                f"clip counter {self.name!r} must have length 1 and range [0, 2**bits - 1]"
            )

    @property
    def levels(self) -> int:
        """The largest code, ``2**bits - 1``."""
        return int(2**self.bits - 1)

    @property
    def step(self) -> float:
        """The value of one code unit, ``(high - low) / (2**bits - 1)``."""
        return (self.high - self.low) / self.levels

    @property
    def is_clip_counter(self) -> bool:
        return bool(self.counts_clips_of)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; :meth:`from_dict` inverts it."""
        return {
            "name": self.name,
            "length": self.length,
            "low": self.low,
            "high": self.high,
            "bits": self.bits,
            "counts_clips_of": list(self.counts_clips_of),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantSegment:
        try:
            return cls(
                name=str(data["name"]),
                length=int(data["length"]),
                low=float(data["low"]),
                high=float(data["high"]),
                bits=int(data["bits"]),
                counts_clips_of=tuple(str(n) for n in data.get("counts_clips_of", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"not a segment description: {exc}") from exc


@dataclasses.dataclass(frozen=True)
class SegmentLayout:
    """The segments of a client vector, the ring and the most clients a sum may hold.

    Construction refuses any layout where ``max_clients`` clients at the top of a segment's
    range would overflow the ring (``max_clients * (2**bits - 1) >= 2**ring_bits``).
    """

    ring_bits: int
    max_clients: int
    segments: tuple[QuantSegment, ...]

    def __post_init__(self) -> None:
        ring_dtype(self.ring_bits)
        if self.max_clients < 1:
            raise _invalid(f"max_clients must be >= 1, got {self.max_clients}")
        if not self.segments:
            raise _invalid("a layout needs at least one segment")
        names = [segment.name for segment in self.segments]
        if len(set(names)) != len(names):
            raise _invalid(f"segment names must be unique, got {names}")
        counted = {s.name for s in self.segments if not s.is_clip_counter}
        for segment in self.segments:
            unknown = set(segment.counts_clips_of) - counted
            if unknown:
                raise _invalid(f"clip counter {segment.name!r} names unknown segments {unknown}")
            if self.max_clients * segment.levels >= 2**self.ring_bits:
                raise _invalid(
                    f"segment {segment.name!r}: {self.max_clients} clients at {segment.bits} "
                    f"bits could overflow the {self.ring_bits}-bit ring; use at most "
                    f"{max_bits(self.ring_bits, self.max_clients)} bits or fewer clients"
                )

    @property
    def length(self) -> int:
        """Total number of ring elements in one client vector."""
        return sum(segment.length for segment in self.segments)

    @property
    def dtype(self) -> np.dtype[Any]:
        return ring_dtype(self.ring_bits)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``{name: (start, stop)}`` of each segment in the flat vector."""
        result = {}
        start = 0
        for segment in self.segments:
            result[segment.name] = (start, start + segment.length)
            start += segment.length
        return result

    def segment(self, name: str) -> QuantSegment:
        for segment in self.segments:
            if segment.name == name:
                return segment
        raise SecAggError(ErrorCode.INVALID_INPUT, f"layout has no segment {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form; :meth:`from_dict` inverts it."""
        return {
            "ring_bits": self.ring_bits,
            "max_clients": self.max_clients,
            "segments": [segment.to_dict() for segment in self.segments],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SegmentLayout:
        try:
            segments = tuple(QuantSegment.from_dict(item) for item in data["segments"])
            return cls(
                ring_bits=int(data["ring_bits"]),
                max_clients=int(data["max_clients"]),
                segments=segments,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _invalid(f"not a layout description: {exc}") from exc


def update_layout(
    *,
    delta_length: int,
    delta_clip: float,
    moment_length: int,
    moment_max: float,
    weight_max: float,
    max_clients: int,
    ring_bits: int = 32,
    delta_bits: int | None = None,
    moment_bits: int | None = None,
    weight_bits: int | None = None,
    count_bits: int | None = None,
    samples_max: float = 0.0,
    loss_max: float = 0.0,
) -> SegmentLayout:
    """The FedAdamW upload layout: ``delta | second_moment | weight | clip_count``.

    With ``samples_max`` and ``loss_max`` above 0 it also carries two statistics that are
    only ever seen summed: ``samples`` (``[0, samples_max]``, the samples a client trained
    on) and ``train_loss`` (``[0, loss_max]``, its mean local loss), before ``clip_count``.

    ``delta`` is symmetric, ``[-delta_clip, delta_clip]``; ``second_moment`` is
    ``[0, moment_max]``; ``weight`` is ``[0, weight_max]``; ``clip_count`` counts clipped
    ``delta`` values. ``moment_length=0`` leaves ``second_moment`` out (for algorithms that
    carry no v̄). Unset bit widths default to the most the ring allows for
    ``max_clients`` (:func:`max_bits`), except ``delta_bits``, which defaults to 8 bits fewer
    (at least 1), leaving the second moments the finer grid.
    """
    widest = max_bits(ring_bits, max_clients)
    counter_bits = count_bits if count_bits is not None else widest
    delta = QuantSegment(
        UpdateSegment.DELTA,
        delta_length,
        -delta_clip,
        delta_clip,
        delta_bits if delta_bits is not None else max(1, widest - 8),
    )
    weight = QuantSegment(
        UpdateSegment.WEIGHT, 1, 0.0, weight_max, weight_bits if weight_bits is not None else widest
    )
    clips = QuantSegment(
        UpdateSegment.CLIP_COUNT,
        1,
        0.0,
        float(2**counter_bits - 1),
        counter_bits,
        counts_clips_of=(UpdateSegment.DELTA,),
    )
    segments: list[QuantSegment] = [delta]
    if moment_length:
        segments.append(
            QuantSegment(
                UpdateSegment.SECOND_MOMENT,
                moment_length,
                0.0,
                moment_max,
                moment_bits if moment_bits is not None else widest,
            )
        )
    segments.append(weight)
    if samples_max > 0 and loss_max > 0:
        segments.append(QuantSegment(UpdateSegment.SAMPLES, 1, 0.0, samples_max, widest))
        segments.append(QuantSegment(UpdateSegment.TRAIN_LOSS, 1, 0.0, loss_max, widest))
    segments.append(clips)
    return SegmentLayout(ring_bits=ring_bits, max_clients=max_clients, segments=tuple(segments))


def _encode_segment(
    segment: QuantSegment,
    values: np.ndarray,
    out: np.ndarray,
    uniforms: Keystream,
) -> int:
    """Stochastically round ``values`` into ``out``; return how many were clipped."""
    scale = segment.levels / (segment.high - segment.low)
    random_words = np.empty(min(_CHUNK, segment.length), dtype=np.uint64)
    clipped = 0
    for start in range(0, segment.length, _CHUNK):
        stop = min(start + _CHUNK, segment.length)
        chunk = values[start:stop].astype(np.float64)
        if np.isnan(chunk).any():
            raise SecAggError(ErrorCode.INVALID_INPUT, f"segment {segment.name!r} holds NaN")
        clipped += int(np.count_nonzero((chunk < segment.low) | (chunk > segment.high)))
        np.clip(chunk, segment.low, segment.high, out=chunk)
        chunk -= segment.low
        chunk *= scale
        floor = np.floor(chunk)
        chunk -= floor
        words = random_words[: stop - start]
        uniforms.fill(words)
        words >>= np.uint64(11)
        uniform = words.astype(np.float64)
        uniform *= _UNIFORM_SCALE
        floor += uniform < chunk
        np.minimum(floor, segment.levels, out=floor)
        out[start:stop] = floor
    return clipped


def encode(
    layout: SegmentLayout,
    values: Mapping[str, ArrayLike],
    *,
    source: RandomSource = system_random,
) -> np.ndarray:
    """Quantize one client's values into a new 1-D ring vector of ``layout.length`` elements.

    ``values`` maps every non-counter segment name to an array (any shape, any real dtype)
    with exactly ``segment.length`` elements; the caller keeps ownership. Clip counters are
    computed here and must not be given. Returns ``uint32``/``uint64`` per the layout.
    """
    expected = {s.name for s in layout.segments if not s.is_clip_counter}
    if set(values) != expected:
        raise SecAggError(
            ErrorCode.INVALID_INPUT,
            f"expected values for {sorted(expected)}, got {sorted(values)}",
        )
    out = np.empty(layout.length, dtype=layout.dtype)
    uniforms = Keystream(source(SEED_BYTES))
    offsets = layout.offsets()
    clipped: dict[str, int] = {}
    for segment in layout.segments:
        if segment.is_clip_counter:
            continue
        array = np.asarray(values[segment.name])
        if array.size != segment.length or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        ):
            raise SecAggError(
                ErrorCode.INVALID_INPUT,
                f"segment {segment.name!r} wants {segment.length} real values, "
                f"got {array.size} of {array.dtype}",
            )
        start, stop = offsets[segment.name]
        clipped[segment.name] = _encode_segment(
            segment, array.reshape(-1), out[start:stop], uniforms
        )
    for segment in layout.segments:
        if segment.is_clip_counter:
            count = sum(clipped[name] for name in segment.counts_clips_of)
            out[offsets[segment.name][0]] = min(count, segment.levels)
    return out


def decode_sum(
    layout: SegmentLayout, ring_sum: np.ndarray, *, num_clients: int
) -> dict[str, np.ndarray]:
    """Float64 sums per segment from the ring sum of ``num_clients`` encoded vectors.

    ``ring_sum`` is a 1-D array of ``layout.length`` elements of the layout's dtype (it is
    not modified). Returns ``{name: float64 array of segment.length}``; clip counters come
    back as exact counts (as floats) while they stay below ``2**53``.
    """
    if not 1 <= num_clients <= layout.max_clients:
        raise SecAggError(
            ErrorCode.INVALID_INPUT,
            f"num_clients must be in [1, {layout.max_clients}], got {num_clients}",
        )
    if ring_sum.dtype != layout.dtype or ring_sum.shape != (layout.length,):
        raise SecAggError(
            ErrorCode.INVALID_INPUT,
            f"ring sum must be {layout.dtype} of shape ({layout.length},), "
            f"got {ring_sum.dtype} {ring_sum.shape}",
        )
    result = {}
    offsets = layout.offsets()
    for segment in layout.segments:
        start, stop = offsets[segment.name]
        decoded = ring_sum[start:stop].astype(np.float64)
        decoded *= segment.step
        decoded += num_clients * segment.low
        result[segment.name] = decoded
    return result


def sum_error_bound(segment: QuantSegment, num_clients: int) -> float:
    """Bound on ``|decoded sum - sum of clipped inputs|`` per element (module docstring)."""
    rounding = num_clients * segment.step
    evaluation = 2.0**-50 * num_clients * (abs(segment.low) + (segment.high - segment.low))
    return rounding + evaluation
