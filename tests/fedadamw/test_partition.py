"""The Dirichlet non-IID partitioner."""

from __future__ import annotations

import numpy as np
import pytest

from fedadamw.errors import InvalidArgumentError
from fedadamw.partition import dirichlet_partition

LABELS = np.repeat(np.arange(10), 60)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 100.0])
def test_every_sample_goes_to_exactly_one_client(alpha: float) -> None:
    parts = dirichlet_partition(LABELS, num_clients=12, alpha=alpha, seed=3)
    assert len(parts) == 12
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(LABELS)))
    assert min(len(p) for p in parts) >= 8


def test_the_seed_fixes_the_split() -> None:
    a = dirichlet_partition(LABELS, num_clients=8, alpha=0.3, seed=11)
    b = dirichlet_partition(LABELS, num_clients=8, alpha=0.3, seed=11)
    c = dirichlet_partition(LABELS, num_clients=8, alpha=0.3, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def _classes_per_client(alpha: float) -> float:
    parts = dirichlet_partition(LABELS, num_clients=10, alpha=alpha, seed=0)
    # classes holding at least 10% of a client's samples
    return float(
        np.mean([np.sum(np.bincount(LABELS[p], minlength=10) >= 0.1 * len(p)) for p in parts])
    )


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    assert _classes_per_client(0.1) < 3.5 < _classes_per_client(100.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 0}, "num_clients"),
        ({"alpha": 0.0}, "alpha must be > 0"),
        ({"num_clients": 100}, "cannot give 100 clients"),
    ],
)
def test_bad_requests_say_why(kwargs: dict[str, float], message: str) -> None:
    args = {"num_clients": 5, "alpha": 0.5, "seed": 0, **kwargs}
    with pytest.raises(InvalidArgumentError, match=message):
        dirichlet_partition(LABELS, **args)  # type: ignore[arg-type]


def test_an_impossible_minimum_is_refused_after_bounded_draws() -> None:
    with pytest.raises(InvalidArgumentError, match="use fewer clients or a larger alpha"):
        dirichlet_partition(LABELS, num_clients=40, alpha=0.01, seed=0, min_size=15)
