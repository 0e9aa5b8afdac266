"""The AES-CTR PRG: keystream layout, mask accumulation across chunks, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secure_agg import ErrorCode, SecAggError
from secure_agg.prg import CHUNK_BYTES, Keystream, add_masks, keystream_into

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
SEED_C = bytes(range(64, 96))


def _reference(seed: bytes, nbytes: int) -> bytes:
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    return encryptor.update(bytes(nbytes))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_keystream_is_aes_ctr_of_zeros_read_little_endian(dtype: type) -> None:
    # Crosses the chunk size, ends off a block boundary.
    count = CHUNK_BYTES // np.dtype(dtype).itemsize + 5
    out = np.empty(count, dtype=dtype)
    keystream_into(SEED_A, out)
    expected = np.frombuffer(
        _reference(SEED_A, out.nbytes), dtype=np.dtype(dtype).newbyteorder("<")
    )
    assert np.array_equal(out, expected)


def test_keystream_pieces_continue_the_stream() -> None:
    whole = np.empty(1001, dtype=np.uint32)
    keystream_into(SEED_B, whole)
    stream = Keystream(SEED_B)
    first, second = np.empty(3, dtype=np.uint32), np.empty(998, dtype=np.uint32)
    stream.fill(first)
    stream.fill(second)
    assert np.array_equal(np.concatenate([first, second]), whole)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_add_masks_matches_separate_keystreams(dtype: type) -> None:
    count = 2 * CHUNK_BYTES // np.dtype(dtype).itemsize + 7
    rng = np.random.default_rng(3)
    start = rng.integers(0, np.iinfo(dtype).max, size=count, dtype=dtype, endpoint=True)
    target = start.copy()
    add_masks(target, add=[SEED_A, SEED_B], subtract=[SEED_C])
    expected = start.copy()
    for seed, sign in ((SEED_A, 1), (SEED_B, 1), (SEED_C, -1)):
        stream = np.empty(count, dtype=dtype)
        keystream_into(seed, stream)
        if sign > 0:
            expected += stream
        else:
            expected -= stream
    assert np.array_equal(target, expected)
    # Adding and then subtracting the same masks restores the input exactly (the ring wraps).
    add_masks(target, add=[SEED_C], subtract=[SEED_A, SEED_B])
    assert np.array_equal(target, start)


def test_add_masks_without_seeds_leaves_target_alone() -> None:
    target = np.arange(10, dtype=np.uint32)
    add_masks(target)
    assert np.array_equal(target, np.arange(10, dtype=np.uint32))


def test_different_seeds_give_different_masks() -> None:
    a, b = np.empty(64, dtype=np.uint32), np.empty(64, dtype=np.uint32)
    keystream_into(SEED_A, a)
    keystream_into(SEED_B, b)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(8, dtype=np.int32),
        np.zeros(8, dtype=np.float64),
        np.zeros(16, dtype=np.uint32)[::2],
        np.zeros((2, 4), dtype=np.uint32),
    ],
)
def test_add_masks_refuses_bad_buffers(bad: np.ndarray) -> None:
    with pytest.raises(SecAggError) as caught:
        add_masks(bad, add=[SEED_A])
    assert caught.value.code is ErrorCode.INVALID_INPUT


def test_seed_must_be_32_bytes() -> None:
    with pytest.raises(SecAggError) as caught:
        keystream_into(b"short", np.empty(4, dtype=np.uint32))
    assert caught.value.code is ErrorCode.INVALID_INPUT
