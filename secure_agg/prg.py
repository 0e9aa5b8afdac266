"""AES-256-CTR pseudorandom generator that expands a seed into ring elements.

Contract:

* The seed is the 32-byte AES-256 key; the counter block starts at zero. A seed must be used
  for one vector only (the key schedule derives a fresh seed per session, pair and purpose).
* Element ``i`` of a ``uint32`` (``uint64``) output is keystream bytes ``[4i, 4i+4)``
  (``[8i, 8i+8)``) read as a little-endian integer, on any host byte order, so a client and
  the server always derive the same mask.
* Output goes into a caller-owned, preallocated, C-contiguous numpy buffer; nothing of size
  ``d`` is allocated here. :func:`add_masks` works through the target in cache-sized chunks,
  drawing every seed's keystream into one reused scratch buffer and adding it with numpy's
  wrapping unsigned arithmetic, so memory stays ``O(chunk)`` whatever the number of seeds.
* Speed is that of ``cryptography``'s AES-CTR (several GB/s with AES-NI); the numpy add costs
  a fraction of that.

Raises :class:`~secure_agg.errors.SecAggError` (``INVALID_INPUT``) for a seed that is not
32 bytes or a buffer that is not a C-contiguous ``uint32``/``uint64`` array.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from secure_agg.errors import ErrorCode, SecAggError

__all__ = ["CHUNK_BYTES", "SEED_BYTES", "Keystream", "add_masks", "keystream_into"]

SEED_BYTES = 32
CHUNK_BYTES = 1 << 20
"""Bytes of keystream drawn per call: large enough to amortise the call, small for cache."""

_ZERO_IV = bytes(16)
_BLOCK = 16
_ZEROS = memoryview(bytes(CHUNK_BYTES))
_BIG_ENDIAN_HOST = sys.byteorder == "big"


def _encryptor(seed: bytes, counter_block: bytes = _ZERO_IV) -> CipherContext:
    if len(seed) != SEED_BYTES:
        raise SecAggError(ErrorCode.INVALID_INPUT, f"PRG seed must be 32 bytes, got {len(seed)}")
    if len(counter_block) != _BLOCK:
        raise SecAggError(ErrorCode.INVALID_INPUT, "the initial counter block is 16 bytes")
    return Cipher(algorithms.AES(seed), modes.CTR(counter_block)).encryptor()


def _check_buffer(out: np.ndarray) -> None:
    if out.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
        raise SecAggError(
            ErrorCode.INVALID_INPUT, f"ring buffer must be uint32/uint64, got {out.dtype}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise SecAggError(ErrorCode.INVALID_INPUT, "ring buffer must be C-contiguous and writeable")


def _fill(encryptor: CipherContext, view: memoryview, nbytes: int) -> None:
    """Write the next ``nbytes`` of keystream into ``view[:nbytes]``, in chunks."""
    offset = 0
    while offset < nbytes:
        step = min(CHUNK_BYTES, nbytes - offset)
        target = view[offset:]
        try:
            encryptor.update_into(_ZEROS[:step], target)
        except ValueError:
            # Older releases of ``cryptography`` want BLOCK - 1 bytes of slack past the
            # payload; only the last chunk of an exactly sized buffer lacks it.
            bounce = bytearray(step + _BLOCK - 1)
            encryptor.update_into(_ZEROS[:step], bounce)
            target[:step] = bounce[:step]
        offset += step


class Keystream:
    """One seed's keystream, handed out in consecutive pieces.

    ``fill(out)`` overwrites ``out`` with the next ``out.nbytes`` bytes of ``PRG(seed)``, so
    filling two halves in turn gives the same words as one :func:`keystream_into` call.
    ``counter_block`` (16 bytes, big-endian counter) is zero in the protocol; known-answer
    tests set it to the standard's initial counter.
    """

    def __init__(self, seed: bytes, *, counter_block: bytes = _ZERO_IV) -> None:
        self._encryptor = _encryptor(seed, counter_block)

    def fill(self, out: np.ndarray) -> None:
        """Overwrite ``out`` (C-contiguous ``uint32``/``uint64``) with the next keystream."""
        _check_buffer(out)
        _fill(self._encryptor, out.data.cast("B"), out.nbytes)
        if _BIG_ENDIAN_HOST:
            out.byteswap(inplace=True)


def keystream_into(seed: bytes, out: np.ndarray) -> None:
    """Overwrite ``out`` (C-contiguous ``uint32``/``uint64``, any shape) with ``PRG(seed)``."""
    Keystream(seed).fill(out)


def add_masks(
    target: np.ndarray,
    *,
    add: Sequence[bytes] = (),
    subtract: Sequence[bytes] = (),
) -> None:
    """In place: ``target += sum(PRG(s) for s in add) - sum(PRG(s) for s in subtract)``.

    Arithmetic wraps modulo ``2**32`` or ``2**64`` (the dtype of ``target``, a 1-D
    C-contiguous ``uint32``/``uint64`` array owned by the caller). Every seed is expanded from
    keystream position zero over the whole length of ``target``.
    """
    _check_buffer(target)
    if target.ndim != 1:
        raise SecAggError(ErrorCode.INVALID_INPUT, f"target must be 1-D, got shape {target.shape}")
    if not add and not subtract:
        return
    itemsize = target.dtype.itemsize
    per_chunk = CHUNK_BYTES // itemsize
    scratch = np.empty(per_chunk, dtype=target.dtype)
    scratch_bytes = scratch.data.cast("B")
    streams = [(_encryptor(seed), True) for seed in add]
    streams += [(_encryptor(seed), False) for seed in subtract]
    length = target.shape[0]
    for start in range(0, length, per_chunk):
        count = min(per_chunk, length - start)
        window = target[start : start + count]
        words = scratch[:count]
        for encryptor, positive in streams:
            _fill(encryptor, scratch_bytes, count * itemsize)
            if _BIG_ENDIAN_HOST:
                words.byteswap(inplace=True)
            if positive:
                np.add(window, words, out=window)
            else:
                np.subtract(window, words, out=window)
