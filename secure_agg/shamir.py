"""Shamir t-of-n secret sharing over the prime field ``p = 2**255 - 19``.

Contract:

* A secret is an integer in ``[0, p)``; :func:`split` evaluates a random polynomial ``f`` of
  degree ``threshold - 1`` with ``f(0) = secret`` at the given nonzero, distinct
  x-coordinates (the protocol uses client ids). Coefficients come from the injected
  :data:`~secure_agg.randomness.RandomSource`, uniform in ``[0, p)``.
* Any ``threshold`` shares determine the secret; any ``threshold - 1`` shares are consistent
  with every secret (each share is uniform and independent of it), so they reveal nothing.
* :func:`combine` interpolates at zero from the ``threshold`` shares with the smallest
  x-coordinates, then checks every further share against that polynomial. Hence a tampered
  share is *detected* (``INCONSISTENT_SHARES``) whenever more than ``threshold`` shares are
  given, and with exactly ``threshold`` shares it silently yields a *wrong secret*. So
  the protocol checks every rebuilt secret against a commitment
  (:func:`secure_agg.unmasking.recover_secret`).
* Shares travel as 32-byte little-endian integers (:func:`encode_share`,
  :func:`decode_share`).

Raises :class:`~secure_agg.errors.SecAggError`: ``INVALID_PARAMETERS`` for a bad threshold,
secret or x-coordinate, ``TOO_FEW_SHARES``, ``INCONSISTENT_SHARES``, and ``INVALID_MESSAGE``
for an encoded share that is not a field element.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from secure_agg.errors import ErrorCode, SecAggError
from secure_agg.randomness import RandomSource, random_below

__all__ = [
    "PRIME",
    "SHARE_BYTES",
    "combine",
    "decode_share",
    "encode_share",
    "evaluate",
    "split",
]

PRIME = 2**255 - 19
SHARE_BYTES = 32


def _check_xs(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, "share x-coordinates must be distinct")
    for x in xs:
        if not 0 < x < PRIME:
            raise SecAggError(
                ErrorCode.INVALID_PARAMETERS, f"share x-coordinate {x} is not in [1, p)"
            )


def split(secret: int, *, threshold: int, xs: Sequence[int], source: RandomSource) -> list[int]:
    """Return ``[f(x) for x in xs]`` for a fresh random ``f`` of degree ``threshold - 1``."""
    if not 0 <= secret < PRIME:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, "a Shamir secret must be in [0, p)")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(
            ErrorCode.INVALID_PARAMETERS,
            f"threshold must be in [1, {len(xs)}] for {len(xs)} shares, got {threshold}",
        )
    _check_xs(xs)
    coefficients = [secret] + [random_below(source, PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        acc = 0
        for coefficient in reversed(coefficients):
            acc = (acc * x + coefficient) % PRIME
        shares.append(acc)
    return shares


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod p of nonzero ``values`` with one modular exponentiation."""
    prefix = [1] * (len(values) + 1)
    for i, value in enumerate(values):
        prefix[i + 1] = prefix[i] * value % PRIME
    inverse = pow(prefix[-1], -1, PRIME)
    result = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        result[i] = prefix[i] * inverse % PRIME
        inverse = inverse * values[i] % PRIME
    return result


@functools.lru_cache(maxsize=128)
def _barycentric_weights(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``w_i = 1 / prod_{j != i} (x_i - x_j)``; shared by every secret with these x's."""
    denominators = []
    for i, xi in enumerate(xs):
        product = 1
        for j, xj in enumerate(xs):
            if i != j:
                product = product * (xi - xj) % PRIME
        denominators.append(product)
    return tuple(_batch_inverse(denominators))


@functools.lru_cache(maxsize=128)
def _zero_coefficients(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Lagrange coefficients at 0: ``secret = sum(c_i * y_i)``."""
    weights = _barycentric_weights(xs)
    ell_zero = 1
    for x in xs:
        ell_zero = ell_zero * (-x) % PRIME
    inverses = _batch_inverse([(-x) % PRIME for x in xs])
    return tuple(ell_zero * w * inv % PRIME for w, inv in zip(weights, inverses, strict=True))


def evaluate(xs: tuple[int, ...], ys: Sequence[int], at: int) -> int:
    """Value at ``at`` (not one of ``xs``) of the polynomial through ``(xs, ys)``."""
    weights = _barycentric_weights(xs)
    differences = [(at - x) % PRIME for x in xs]
    ell = 1
    for difference in differences:
        ell = ell * difference % PRIME
    inverses = _batch_inverse(differences)
    total = 0
    for w, y, inv in zip(weights, ys, inverses, strict=True):
        total += w * y % PRIME * inv
    return ell * total % PRIME


def combine(shares: Mapping[int, int], *, threshold: int) -> int:
    """Rebuild the secret from ``{x: y}`` shares; see the module docstring for tampering."""
    if threshold < 1:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise SecAggError(ErrorCode.TOO_FEW_SHARES, f"need {threshold} shares, have {len(shares)}")
    ordered = sorted(shares)
    _check_xs(ordered)
    for x in ordered:
        if not 0 <= shares[x] < PRIME:
            raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"share at x={x} is not in [0, p)")
    basis = tuple(ordered[:threshold])
    ys = [shares[x] for x in basis]
    coefficients = _zero_coefficients(basis)
    secret = sum(c * y for c, y in zip(coefficients, ys, strict=True)) % PRIME
    for x in ordered[threshold:]:
        if evaluate(basis, ys, x) != shares[x]:
            raise SecAggError(
                ErrorCode.INCONSISTENT_SHARES,
                f"share at x={x} does not lie on the polynomial of the first {threshold} shares",
            )
    return secret


def encode_share(value: int) -> bytes:
    """A field element as 32 little-endian bytes."""
    return value.to_bytes(SHARE_BYTES, "little")


def decode_share(data: bytes) -> int:
    """Inverse of :func:`encode_share`; raises ``INVALID_MESSAGE`` unless a field element."""
    if len(data) != SHARE_BYTES:
        raise SecAggError(ErrorCode.INVALID_MESSAGE, f"a share is 32 bytes, got {len(data)}")
    value = int.from_bytes(data, "little")
    if value >= PRIME:
        raise SecAggError(ErrorCode.INVALID_MESSAGE, "a share must be below 2**255 - 19")
    return value
