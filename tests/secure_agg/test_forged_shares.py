"""A client that reveals a forged share: never a wrong sum, and no abort where it is outvoted.

Shamir alone cannot see a forged share when exactly t shares of a secret are revealed; the
commitments can (the self-mask secret against the hash its owner signed, the masking key
against the advertised public key), and the round aborts. Where a polynomial through t
shares meets the commitment and holds at least (n + t) / 2 of the n shares, the round
completes with the exact sum and names the responders off it; a smaller match is not
trusted (colluders could make one), and the round aborts.
"""

from __future__ import annotations

import dataclasses
import random

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
from secure_agg.unmasking import Recovery, recover_secret

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
    ("owner", "drop"),
    [
        # Responders 1-4: client 1's b has exactly t = 3 shares (from 2, 3, 4): caught by
        # the commitment, the forger cannot be told apart.
        (1, {5, 6}),
        # Client 5's b has 4 shares (from 1-4): the 3 honest ones meet the commitment, but
        # 3 of 4 is below (4 + 3) / 2; two colluders could make such a match, so it is not
        # trusted to name anyone.
        (5, {5, 6}),
    ],
)
def test_a_forged_share_that_cannot_be_located_aborts_the_round_and_names_no_one(
    owner: int, drop: set[int]
) -> None:
    round_ = _unmask_with_forgery(owner=owner, kind="self", drop=drop)
    state = round_.server
    assert not isinstance(state, ServerCompleted)
    assert isinstance(state, ServerAborted)
    assert state.reason is AbortReason.INCONSISTENT_SHARES
    assert state.culprits == frozenset()


@pytest.mark.parametrize(
    ("owner", "kind", "drop"),
    [
        # Client 5's b has 5 shares (from 1-4 and 6): 4 honest ones meet the commitment.
        (5, "self", set()),
        # Client 6 sent no input: its masking key is rebuilt from 5 shares and checked
        # against its advertised public key.
        (6, "key", {6}),
    ],
)
def test_a_forged_share_that_is_outvoted_is_named_and_the_sum_is_exact(
    owner: int, kind: str, drop: set[int]
) -> None:
    """Found by fuzzing from a cohort member (tests/faults/test_fuzz_member.py): one member
    that forged one revealed share aborted every round it unmasked in, although the
    coordinator had rebuilt the right secret from the honest shares."""
    round_ = _unmask_with_forgery(owner=owner, kind=kind, drop=drop)
    state = round_.server
    assert isinstance(state, ServerCompleted), state
    assert state.result.outvoted == frozenset({FORGER})
    survivors = set(range(1, 7)) - (drop if kind == "key" else set())
    assert tuple(state.result.survivors) == tuple(sorted(survivors))
    np.testing.assert_array_equal(state.result.ring_sum, round_.expected_ring_sum(survivors))


def test_colluders_cannot_get_honest_responders_named() -> None:
    """Two colluders shift their shares so that t shares with theirs still rebuild the
    right secret on a polynomial of their own (found in review): that match holds too few
    shares to be trusted, and the honest polynomial, holding most, names the colluders."""
    threshold, responders = 5, list(range(1, 11))
    secret = 123456789
    coefficients = [secret, *(random.Random(7).randrange(shamir.PRIME) for _ in range(4))]

    def at(x: int) -> int:
        return sum(c * pow(x, k, shamir.PRIME) for k, c in enumerate(coefficients)) % shamir.PRIME

    shares = {x: at(x) for x in responders}
    # Lagrange weights at 0 of the group (1, 2, 4, 5, 6): c1*d1 + c2*d2 = 0 keeps its secret
    group = (1, 2, 4, 5, 6)

    def weight(x: int) -> int:
        num, den = 1, 1
        for y in group:
            if y != x:
                num = num * (-y) % shamir.PRIME
                den = den * (x - y) % shamir.PRIME
        return num * pow(den, -1, shamir.PRIME) % shamir.PRIME

    d1 = 1
    d2 = (-weight(1) * d1) * pow(weight(2), -1, shamir.PRIME) % shamir.PRIME
    shares[1] = (shares[1] + d1) % shamir.PRIME
    shares[2] = (shares[2] + d2) % shamir.PRIME
    recovery = Recovery()
    got = recover_secret(
        shares, threshold=threshold, matches=lambda s: s == secret, what="test secret",
        recovery=recovery,
    )  # fmt: skip
    assert got == secret
    assert recovery.outvoted == {1, 2}


def test_without_the_forgery_the_same_round_commits() -> None:
    config = make_config(delta_length=8, threshold=3, degree=None, max_clients=6)
    round_ = Round(config, range(1, 7), seed="forge-1-self")
    state = round_.run(during_unmask={5, 6})
    assert isinstance(state, ServerCompleted)
