"""Where the package's randomness comes from.

Every function that needs randomness takes a :data:`RandomSource`: a callable that returns
``n`` fresh random bytes, with the signature of :func:`os.urandom` (the default). Tests pass
a seeded fake (for example ``random.Random(seed).randbytes``) to make runs repeatable; in
production the source must be a CSPRNG.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from secure_agg.errors import ErrorCode, SecAggError

__all__ = ["RandomSource", "random_below", "system_random"]

RandomSource = Callable[[int], bytes]
"""``source(n)`` returns ``n`` random bytes."""

system_random: RandomSource = os.urandom
"""The default source: the operating system's CSPRNG."""


def random_below(source: RandomSource, bound: int) -> int:
    """Return a uniform integer in ``[0, bound)`` by rejection sampling.

    Draws whole bytes covering ``bound.bit_length()`` bits, masks off the excess and retries
    on values ``>= bound``, so each try succeeds with probability above one half.
    Raises :class:`SecAggError` (``INVALID_PARAMETERS``) if ``bound < 1``.
    """
    if bound < 1:
        raise SecAggError(ErrorCode.INVALID_PARAMETERS, f"bound must be >= 1, got {bound}")
    bits = (bound - 1).bit_length()
    if bits == 0:
        return 0
    nbytes = (bits + 7) // 8
    mask = (1 << bits) - 1
    while True:
        value = int.from_bytes(source(nbytes), "little") & mask
        if value < bound:
            return value
