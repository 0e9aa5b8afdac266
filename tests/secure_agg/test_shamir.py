"""Shamir t-of-n over 2**255 - 19: reconstruction, secrecy below t, tampering."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agg import ErrorCode, SecAggError
from secure_agg.shamir import PRIME, combine, decode_share, encode_share, split

from .harness import seeded_source


def test_every_t_subset_reconstructs_and_no_smaller_one_does() -> None:
    secret = 123456789 * 2**200 % PRIME
    xs = [3, 5, 8, 13, 21, 34]
    threshold = 3
    shares = dict(
        zip(xs, split(secret, threshold=threshold, xs=xs, source=seeded_source(1)), strict=True)
    )
    for subset in itertools.combinations(xs, threshold):
        assert combine({x: shares[x] for x in subset}, threshold=threshold) == secret
    for subset in itertools.combinations(xs, threshold - 1):
        with pytest.raises(SecAggError) as caught:
            combine({x: shares[x] for x in subset}, threshold=threshold)
        assert caught.value.code is ErrorCode.TOO_FEW_SHARES


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    secret=st.integers(min_value=0, max_value=PRIME - 1),
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_random_t_subsets_reconstruct(secret: int, n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(min_value=1, max_value=n))
    xs = data.draw(st.lists(st.integers(1, 2**63 - 1), min_size=n, max_size=n, unique=True))
    shares = dict(
        zip(xs, split(secret, threshold=threshold, xs=xs, source=seeded_source(n)), strict=True)
    )
    subset = data.draw(st.permutations(xs))[: data.draw(st.integers(threshold, n))]
    assert combine({x: shares[x] for x in subset}, threshold=threshold) == secret


def test_t_minus_one_shares_are_consistent_with_every_secret() -> None:
    # With t-1 true shares, one more point (x*, y) fixes the polynomial. As y runs over the
    # field, the secret moves by a fixed nonzero step per unit of y, so every secret is
    # equally possible: t-1 shares say nothing about it.
    threshold, xs = 4, [1, 2, 3, 4, 5]
    secret = random.Random(7).randrange(PRIME)
    shares = split(secret, threshold=threshold, xs=xs, source=seeded_source(2))
    known = dict(zip(xs[: threshold - 1], shares[: threshold - 1], strict=True))
    extra = xs[threshold - 1]
    candidates = [combine({**known, extra: y}, threshold=threshold) for y in (0, 1, 2)]
    step = (candidates[1] - candidates[0]) % PRIME
    assert step != 0
    assert (candidates[2] - candidates[1]) % PRIME == step
    # The true share gives the true secret; a shifted one gives a shifted secret.
    true_y = shares[threshold - 1]
    assert combine({**known, extra: true_y}, threshold=threshold) == secret
    assert (
        combine({**known, extra: (true_y + 5) % PRIME}, threshold=threshold)
        == (secret + 5 * step) % PRIME
    )


def test_tampered_share_is_detected_with_extra_shares_and_wrong_without() -> None:
    secret = 42
    xs = [10, 20, 30, 40, 50]
    threshold = 3
    shares = dict(
        zip(xs, split(secret, threshold=threshold, xs=xs, source=seeded_source(3)), strict=True)
    )
    tampered = dict(shares)
    tampered[20] = (tampered[20] + 1) % PRIME
    with pytest.raises(SecAggError) as caught:
        combine(tampered, threshold=threshold)
    assert caught.value.code is ErrorCode.INCONSISTENT_SHARES
    exactly_t = {x: tampered[x] for x in (10, 20, 30)}
    assert combine(exactly_t, threshold=threshold) != secret


def test_share_encoding_round_trips_and_rejects_non_field_elements() -> None:
    for value in (0, 1, PRIME - 1):
        assert decode_share(encode_share(value)) == value
    with pytest.raises(SecAggError) as caught:
        decode_share(PRIME.to_bytes(32, "little"))
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    with pytest.raises(SecAggError):
        decode_share(b"\x00" * 31)


@pytest.mark.parametrize(
    ("secret", "threshold", "xs"),
    [
        (PRIME, 2, [1, 2]),
        (1, 0, [1, 2]),
        (1, 3, [1, 2]),
        (1, 2, [1, 1]),
        (1, 2, [0, 1]),
        (1, 2, [1, PRIME]),
    ],
)
def test_split_refuses_bad_parameters(secret: int, threshold: int, xs: list[int]) -> None:
    with pytest.raises(SecAggError) as caught:
        split(secret, threshold=threshold, xs=xs, source=seeded_source(4))
    assert caught.value.code is ErrorCode.INVALID_PARAMETERS
