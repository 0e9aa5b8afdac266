"""Privacy sanity: one masked input looks uniform, and what the server may learn is not enough.

The chi-square test runs on the low 8 bits of ring elements (256 bins). The critical value
at p = 1e-4 comes from the Wilson-Hilferty approximation, accurate to well under 1% at 255
degrees of freedom; a false alarm rate of 1e-4 per check keeps the suite stable.
"""

from __future__ import annotations

import math

import numpy as np

from secure_agg import AdvertiseKeys, MaskedInput, UnmaskResponse, kdf, shamir
from secure_agg.prg import add_masks
from secure_agg.session import self_mask_seed

from .harness import Round, make_config

D = 1 << 14
_Z_1E4 = 3.719  # one-sided standard normal quantile for p = 1e-4


def _chi_square_low_byte(values: np.ndarray) -> float:
    counts = np.bincount((values & 0xFF).astype(np.int64), minlength=256)
    expected = values.size / 256
    return float(np.sum((counts - expected) ** 2) / expected)


def _critical(df: int = 255, z: float = _Z_1E4) -> float:
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _zeros(config_length: int) -> dict[str, np.ndarray]:
    return {"delta": np.zeros(config_length), "second_moment": np.zeros(2), "weight": np.zeros(1)}


def _masked_inputs(round_: Round) -> dict[int, np.ndarray]:
    return {m.client_id: m.values for m in round_.sent if isinstance(m, MaskedInput)}


def test_a_masked_input_is_uniform_while_the_plain_one_is_not() -> None:
    config = make_config(delta_length=D, threshold=2, degree=None, ring_bits=32)
    round_ = Round(config, (1, 2, 3), seed="chi")
    round_.advertise()
    round_.deliver()
    round_.close()
    round_.deliver()
    round_.mask(values_for=lambda cid: _zeros(D))
    masked = _masked_inputs(round_)[1]
    assert _chi_square_low_byte(masked) < _critical()
    # The test has power: the plain quantized vector fails it by a wide margin.
    assert _chi_square_low_byte(round_.encoded[1]) > 10 * _critical()


def test_revealed_shares_never_rebuild_one_clients_input() -> None:
    config = make_config(delta_length=D, threshold=3, degree=None, ring_bits=32)
    round_ = Round(config, range(1, 7), seed="view")
    state = round_.run(after_shares={6})
    assert state.phase.name == "COMPLETED"
    responses = [m for m in round_.sent if isinstance(m, UnmaskResponse)]
    # Never both shares of one owner, in one response or across all of them.
    b_owners = {item.owner for r in responses for item in r.self_mask_shares}
    s_owners = {item.owner for r in responses for item in r.key_shares}
    assert b_owners == {1, 2, 3, 4, 5}
    assert s_owners == {6}
    # Play the server: rebuild every secret the revealed shares allow...
    threshold = config.params.threshold
    masked = _masked_inputs(round_)
    session_id = next(m.session_id for m in responses)
    keys = {m.client_id: m for m in round_.sent if isinstance(m, AdvertiseKeys)}
    b_shares: dict[int, dict[int, int]] = {}
    s_shares: dict[int, dict[int, int]] = {}
    for response in responses:
        for item in response.self_mask_shares:
            b_shares.setdefault(item.owner, {})[response.client_id] = shamir.decode_share(
                item.share
            )
        for item in response.key_shares:
            s_shares.setdefault(item.owner, {})[response.client_id] = shamir.decode_share(
                item.share
            )
    dropped_key = kdf.private_key_from_scalar(shamir.combine(s_shares[6], threshold=threshold))

    def strip_known_masks(client: int) -> np.ndarray:
        """The client's masked input minus its self mask and its pair mask with client 6."""
        residual = masked[client].copy()
        seed = self_mask_seed(
            session_id=session_id,
            client_id=client,
            secret=shamir.combine(b_shares[client], threshold=threshold),
        )
        pair_with_dropped = kdf.derive_pair_key(
            dropped_key,
            keys[client].masking_key,
            session_id=session_id,
            purpose=kdf.Purpose.PAIR_MASK,
            own_id=6,
            peer_id=client,
        )
        add_masks(residual, subtract=[seed, pair_with_dropped])
        return residual

    residuals = {client: strip_known_masks(client) for client in range(1, 6)}
    # Those secrets are exactly enough for the sum: the remaining pair masks cancel...
    total = np.zeros_like(residuals[1])
    for residual in residuals.values():
        total += residual
    assert np.array_equal(total, round_.expected_ring_sum(range(1, 6)))
    # ...but any one residual is still masked by the pairs with its surviving neighbours.
    victim = 1
    assert not np.array_equal(residuals[victim], round_.encoded[victim])
    assert _chi_square_low_byte(residuals[victim]) < _critical()
    # (The plain input fails: the ~9% of deltas outside the clip range pile up on two codes.)
    assert _chi_square_low_byte(round_.encoded[victim]) > 10 * _critical()
    # The victim's masking key stays out of reach: no share of it was ever revealed.
    assert victim not in s_shares
