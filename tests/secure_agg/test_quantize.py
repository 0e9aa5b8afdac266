"""Fixed-point quantization: sums, error bounds, overflow refusal, unbiased rounding."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import (
    ErrorCode,
    QuantSegment,
    SecAggError,
    SecAggParams,
    SegmentLayout,
    SessionConfig,
    decode_sum,
    encode,
    max_bits,
    sum_error_bound,
    update_layout,
)

from .harness import seeded_source


def _layout(bits: int = 12, max_clients: int = 64, ring_bits: int = 32) -> SegmentLayout:
    return SegmentLayout(
        ring_bits=ring_bits,
        max_clients=max_clients,
        segments=(
            QuantSegment("delta", 5, -0.5, 0.5, bits),
            QuantSegment("moment", 3, 0.0, 2.0, bits + 2),
            QuantSegment("clips", 1, 0.0, float(2**10 - 1), 10, counts_clips_of=("delta",)),
        ),
    )


def _ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for vector in vectors:
        total += vector
    return total


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    clients=st.integers(min_value=1, max_value=20),
    ring_bits=st.sampled_from([32, 64]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_decoded_sum_is_within_the_documented_bound(
    clients: int, ring_bits: int, seed: int
) -> None:
    layout = _layout(max_clients=64, ring_bits=ring_bits)
    rng = np.random.default_rng(seed)
    inputs = [
        {"delta": rng.uniform(-0.7, 0.7, 5), "moment": rng.uniform(0.0, 2.5, 3)}
        for _ in range(clients)
    ]
    encoded = [
        encode(layout, values, source=seeded_source(seed, i)) for i, values in enumerate(inputs)
    ]
    assert all(vector.dtype == layout.dtype and vector.shape == (9,) for vector in encoded)
    decoded = decode_sum(layout, _ring_sum(encoded), num_clients=clients)
    for name, low, high in (("delta", -0.5, 0.5), ("moment", 0.0, 2.0)):
        truth = sum(np.clip(values[name], low, high) for values in inputs)
        bound = sum_error_bound(layout.segment(name), clients)
        assert np.all(np.abs(decoded[name] - truth) <= bound)
    clipped = sum(int(np.count_nonzero(np.abs(values["delta"]) > 0.5)) for values in inputs)
    assert decoded["clips"][0] == clipped


def test_stochastic_rounding_is_unbiased_within_a_variance_bound() -> None:
    segment = QuantSegment("x", 4096, -1.0, 1.0, 8)
    layout = SegmentLayout(ring_bits=32, max_clients=1, segments=(segment,))
    rng = np.random.default_rng(11)
    x = rng.uniform(-1.0, 1.0, segment.length)
    codes = (x - segment.low) / segment.step
    fractions = codes - np.floor(codes)
    trials = 64
    errors = np.empty((trials, segment.length))
    for trial in range(trials):
        encoded = encode(layout, {"x": x}, source=seeded_source("sr", trial))
        errors[trial] = decode_sum(layout, encoded, num_clients=1)["x"] - x
    # Each error is step * (Bernoulli(f) - f): |error| < step, variance step^2 f (1 - f).
    assert np.all(np.abs(errors) < segment.step * (1 + 1e-9))
    samples = errors.size
    sigma = segment.step * math.sqrt(trials * float(np.sum(fractions * (1 - fractions)))) / samples
    mean_error = float(errors.mean())
    assert abs(mean_error) <= 6 * sigma
    # The bound has teeth: round-to-nearest on the inputs whose fraction is below one half
    # would be biased by about a quarter step, over a hundred sigmas.
    skewed = fractions[fractions < 0.5]
    assert abs(float(np.mean(segment.step * (np.round(skewed) - skewed)))) > 100 * sigma


@pytest.mark.parametrize(("ring_bits", "max_clients"), [(32, 256), (32, 1000), (64, 2**20)])
def test_max_clients_at_the_top_of_the_range_decode_exactly(
    ring_bits: int, max_clients: int
) -> None:
    bits = max_bits(ring_bits, max_clients)
    assert max_clients * (2**bits - 1) < 2**ring_bits
    assert bits == 52 or max_clients * (2 ** (bits + 1) - 1) >= 2**ring_bits
    segment = QuantSegment("delta", 4, -3.0, 5.0, bits)
    layout = SegmentLayout(ring_bits=ring_bits, max_clients=max_clients, segments=(segment,))
    top = encode(layout, {"delta": np.full(4, 5.0)}, source=seeded_source("top"))
    bottom = encode(layout, {"delta": np.full(4, -3.0)}, source=seeded_source("bottom"))
    assert np.all(top == 2**bits - 1)
    assert np.all(bottom == 0)
    total = np.zeros(4, dtype=layout.dtype)
    for _ in range(max_clients):
        total += top
    assert int(total[0]) == max_clients * (2**bits - 1)  # no wrap-around
    decoded = decode_sum(layout, total, num_clients=max_clients)["delta"]
    assert np.allclose(decoded, 5.0 * max_clients, rtol=1e-12, atol=0)
    assert np.all(
        decode_sum(layout, bottom * 0, num_clients=max_clients)["delta"] == -3.0 * max_clients
    )


@pytest.mark.parametrize(("ring_bits", "max_clients"), [(32, 256), (32, 1000), (64, 2**20)])
def test_one_bit_too_tight_is_refused(ring_bits: int, max_clients: int) -> None:
    bits = max_bits(ring_bits, max_clients)
    SegmentLayout(
        ring_bits=ring_bits,
        max_clients=max_clients,
        segments=(QuantSegment("delta", 1, -1.0, 1.0, bits),),
    )
    for wider, clients in ((bits + 1, max_clients), (bits, max_clients * 2 + 1)):
        if wider > 52:
            continue
        # Those clients at the top of the range really would wrap the ring...
        assert clients * (2**wider - 1) >= 2**ring_bits
        # ...so the layout refuses them.
        with pytest.raises(SecAggError) as caught:
            SegmentLayout(
                ring_bits=ring_bits,
                max_clients=clients,
                segments=(QuantSegment("delta", 1, -1.0, 1.0, wider),),
            )
        assert caught.value.code is ErrorCode.INVALID_PARAMETERS


def test_the_wrap_the_check_prevents_is_real() -> None:
    # 256 clients at 25 bits in a 32-bit ring: the ring sum of the top code wraps.
    top = np.full(1, 2**25 - 1, dtype=np.uint32)
    total = np.zeros(1, dtype=np.uint32)
    for _ in range(256):
        total += top
    assert int(total[0]) != 256 * (2**25 - 1)
    assert max_bits(32, 256) == 24


def test_clip_counter_counts_and_saturates() -> None:
    layout = SegmentLayout(
        ring_bits=32,
        max_clients=4,
        segments=(
            QuantSegment("delta", 6, -1.0, 1.0, 10),
            QuantSegment("clips", 1, 0.0, 3.0, 2, counts_clips_of=("delta",)),
        ),
    )
    values = np.array([-2.0, -1.0, 0.0, 1.0, 1.5, np.inf])
    encoded = encode(layout, {"delta": values}, source=seeded_source("clip"))
    assert int(encoded[-1]) == 3  # three clipped: -2, 1.5, inf
    encoded = encode(layout, {"delta": np.full(6, 9.0)}, source=seeded_source("clip"))
    assert int(encoded[-1]) == 3  # six clipped, saturates at 2**2 - 1


def test_update_layout_orders_segments_and_gives_moments_more_bits() -> None:
    layout = update_layout(
        delta_length=10,
        delta_clip=0.1,
        moment_length=3,
        moment_max=1e-3,
        weight_max=1000.0,
        max_clients=500,
    )
    assert [segment.name for segment in layout.segments] == [
        "delta",
        "second_moment",
        "weight",
        "clip_count",
    ]
    assert layout.offsets() == {
        "delta": (0, 10),
        "second_moment": (10, 13),
        "weight": (13, 14),
        "clip_count": (14, 15),
    }
    delta, moment = layout.segment("delta"), layout.segment("second_moment")
    assert (delta.low, delta.high) == (-0.1, 0.1)
    assert moment.low == 0.0
    assert moment.bits > delta.bits
    assert layout.segment("clip_count").counts_clips_of == ("delta",)


def test_update_layout_can_carry_summed_training_statistics() -> None:
    layout = update_layout(
        delta_length=2,
        delta_clip=0.1,
        moment_length=1,
        moment_max=1.0,
        weight_max=1.0,
        max_clients=4,
        samples_max=640.0,
        loss_max=100.0,
    )
    assert [s.name for s in layout.segments] == [
        "delta",
        "second_moment",
        "weight",
        "samples",
        "train_loss",
        "clip_count",
    ]
    values = {
        "delta": np.zeros(2),
        "second_moment": [0.5],
        "weight": [1.0],
        "samples": [640.0],
        "train_loss": [2.25],
    }
    ring = sum(encode(layout, values, source=seeded_source(f"s{i}")) for i in range(3))
    sums = decode_sum(layout, np.asarray(ring, dtype=layout.dtype), num_clients=3)
    assert sums["samples"][0] == pytest.approx(1920.0, abs=3 * layout.segment("samples").step)
    assert sums["train_loss"][0] == pytest.approx(6.75, abs=3 * layout.segment("train_loss").step)


def test_update_layout_without_second_moments_leaves_the_segment_out() -> None:
    layout = update_layout(
        delta_length=4,
        delta_clip=0.1,
        moment_length=0,
        moment_max=1.0,
        weight_max=1.0,
        max_clients=5,
    )
    assert [segment.name for segment in layout.segments] == ["delta", "weight", "clip_count"]
    encoded = encode(layout, {"delta": np.zeros(4), "weight": [1.0]}, source=seeded_source("w"))
    sums = decode_sum(layout, encoded, num_clients=1)
    assert set(sums) == {"delta", "weight", "clip_count"}
    assert sums["weight"][0] == 1.0


def test_parameter_objects_round_trip_through_json() -> None:
    layout = _layout()
    params = SecAggParams(threshold=3, degree=4, layout=layout)
    config = SessionConfig(round_id="r-9", model_hash=b"\x01" * 32, params=params)
    for obj in (layout.segments[0], layout, params, config):
        again = type(obj).from_dict(json.loads(json.dumps(obj.to_dict())))
        assert again == obj
    assert SecAggParams.from_dict(params.to_dict()).canonical_bytes() == params.canonical_bytes()


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"ring_bits": 16, "max_clients": 2, "segments": []},
        {"ring_bits": 32, "max_clients": 2, "segments": [{"name": "x"}]},
    ],
)
def test_bad_parameter_dicts_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(SecAggError) as caught:
        SegmentLayout.from_dict(bad)
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS


def test_encode_refuses_bad_inputs() -> None:
    layout = _layout()
    good = {"delta": np.zeros(5), "moment": np.zeros(3)}
    for bad in (
        {"delta": np.zeros(5)},
        {**good, "clips": np.zeros(1)},
        {**good, "delta": np.zeros(4)},
        {**good, "moment": np.array([0.0, np.nan, 1.0])},
        {**good, "delta": np.array(["a"] * 5)},
    ):
        with pytest.raises(SecAggError) as caught:
            encode(layout, bad, source=seeded_source("bad"))
        assert caught.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(SecAggError):
        decode_sum(layout, np.zeros(9, dtype=np.uint64), num_clients=1)
    with pytest.raises(SecAggError):
        decode_sum(layout, np.zeros(9, dtype=np.uint32), num_clients=65)
