"""A client that reveals a forged share: the round aborts, never with a wrong sum.

Shamir alone cannot see a forged share when exactly t shares of a secret are revealed; the
commitments can (the self-mask secret against the hash its owner signed, the masking key
against the advertised public key). With more than t shares the forger is named.
"""

from __future__ import annotations

import dataclasses

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


@pytest.mark.parametrize(
    ("owner", "kind", "drop", "named"),
    [
        # Responders 1-4: client 1's b has exactly t = 3 shares (from 2, 3, 4): caught by
        # the commitment, the forger cannot be told apart.
        (1, "self", {5, 6}, frozenset()),
        # Client 5's b has 4 shares: the forger is named.
        (5, "self", {5, 6}, frozenset({FORGER})),
        # Client 6 sent no input: its masking key is rebuilt from 4 shares and checked
        # against its advertised public key; the forger is named.
        (6, "key", {6}, frozenset({FORGER})),
    ],
)
def test_a_forged_share_aborts_the_round_and_names_the_forger_when_it_can(
    owner: int, kind: str, drop: set[int], named: frozenset[int]
) -> None:
    round_ = _unmask_with_forgery(owner=owner, kind=kind, drop=drop)
    state = round_.server
    assert not isinstance(state, ServerCompleted)
    assert isinstance(state, ServerAborted)
    assert state.reason is AbortReason.INCONSISTENT_SHARES
    assert state.culprits == named


def test_without_the_forgery_the_same_round_commits() -> None:
    config = make_config(delta_length=8, threshold=3, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed="forge-1-self")
    state = round_.run(during_unmask={5, 6})
    assert isinstance(state, ServerCompleted)
