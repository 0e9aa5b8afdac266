"""A client that reveals a forged share: never a wrong sum, and no abort where it can be outvoted.

Shamir alone cannot see a forged share when exactly t shares of a secret are revealed; the
commitments can (the self-mask secret against the hash its owner signed, the masking key
against the advertised public key), and the round aborts. With more than t shares the
forger is told apart: the secret of the honest shares meets its commitment, so it is the
owner's, and the round completes with the exact sum, naming the forger.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secure_agg import (
    AbortReason,
    RevealedShare,
    ServerAborted,
    ServerCompleted,
    UnmaskResponse,
    shamir,
)

from .harness import Round, make_config

FORGER = 2


def _forge(share: RevealedShare) -> RevealedShare:
    value = (shamir.decode_share(share.share) + 1) % shamir.PRIME
    return RevealedShare(share.owner, shamir.encode_share(value))


def _unmask_with_forgery(*, owner: int, kind: str, drop: set[int]) -> Round:
    """Six clients, complete graph, t = 3; ``drop`` leaves before unmasking (after their
    input, so they count as survivors) or before their input (``kind == "key"``). The
    forger alters its share of ``owner``'s secret."""
    config = make_config(delta_length=8, threshold=3, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed=f"forge-{owner}-{kind}")
    round_.advertise()
    round_.deliver()
    round_.close()
    round_.deliver()
    round_.mask(drop=drop if kind == "key" else set())
    round_.close()
    round_.deliver()
    round_.close()
    for cid, message in sorted(round_.outbox.items()):
        if kind == "self" and cid in drop:
            continue
        step = round_.clients[cid].handle(message)
        round_.clients[cid] = step.state
        response = step.message
        assert isinstance(response, UnmaskResponse)
        if cid == FORGER:
            field = "self_mask_shares" if kind == "self" else "key_shares"
            shares = tuple(
                _forge(share) if share.owner == owner else share
                for share in getattr(response, field)
            )
            assert shares != getattr(response, field)
            response = dataclasses.replace(response, **{field: shares})
        round_.send(response)
    round_.close()
    return round_


def test_a_forged_share_of_exactly_t_aborts_the_round_and_names_no_one() -> None:
    # Responders 1-4: client 1's b has exactly t = 3 shares (from 2, 3, 4): caught by the
    # commitment, the forger cannot be told apart.
    round_ = _unmask_with_forgery(owner=1, kind="self", drop={5, 6})
    state = round_.server
    assert not isinstance(state, ServerCompleted)
    assert isinstance(state, ServerAborted)
    assert state.reason is AbortReason.INCONSISTENT_SHARES
    assert state.culprits == frozenset()


@pytest.mark.parametrize(
    ("owner", "kind", "drop"),
    [
        # Client 5's b has 4 shares (from 1-4): three honest ones meet the commitment.
        (5, "self", {5, 6}),
        # Client 6 sent no input: its masking key is rebuilt from 4 shares and checked
        # against its advertised public key.
        (6, "key", {6}),
    ],
)
def test_a_forged_share_that_can_be_outvoted_names_the_forger_and_the_sum_is_exact(
    owner: int, kind: str, drop: set[int]
) -> None:
    """Found by fuzzing from a cohort member (tests/faults/test_fuzz_member.py): one member
    that forged one revealed share aborted every round it unmasked in, although the
    coordinator had rebuilt the right secret from the honest shares and named the forger."""
    round_ = _unmask_with_forgery(owner=owner, kind=kind, drop=drop)
    state = round_.server
    assert isinstance(state, ServerCompleted), state
    assert state.result.forgers == frozenset({FORGER})
    survivors = set(range(1, 7)) - (drop if kind == "key" else set())
    assert tuple(state.result.survivors) == tuple(sorted(survivors))
    np.testing.assert_array_equal(state.result.ring_sum, round_.expected_ring_sum(survivors))


def test_without_the_forgery_the_same_round_commits() -> None:
    config = make_config(delta_length=8, threshold=3, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed="forge-1-self")
    state = round_.run(during_unmask={5, 6})
    assert isinstance(state, ServerCompleted)
