"""A lying server against honest clients: every lie ends in an abort with the right reason."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from secure_agg import (
    AbortReason,
    ClientAbort,
    ClientAborted,
    ClientCompleted,
    ClientShareKeys,
    ConsistencyRequest,
    EncryptedShare,
    ErrorCode,
    KeysBroadcast,
    SecAggError,
    ShareKeys,
    SharesDelivery,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    signing,
)

from .harness import Round, make_config

VICTIM = 1


def _round(stage: str, *, seed: object = 0, round_id: str = "round-1", **drops: set[int]) -> Round:
    """A 6-client round (complete graph, t = 3) advanced until the server sends ``stage``."""
    config = make_config(delta_length=8, threshold=3, degree=None, round_id=round_id)
    round_ = Round(config, range(1, 7), seed=seed)
    round_.advertise(drop=drops.get("before_keys", set()))
    if stage == "keys":
        return round_
    round_.deliver(drop=drops.get("after_keys", set()))
    round_.close()
    if stage == "shares":
        return round_
    round_.deliver()
    round_.mask(drop=drops.get("after_shares", set()))
    round_.close()
    if stage == "consistency":
        return round_
    round_.deliver(drop=drops.get("after_input", set()))
    round_.close()
    assert stage == "unmask"
    return round_


def _expect_abort(round_: Round, message: Any, reason: AbortReason) -> None:
    """The victim, shown ``message``, aborts with ``reason`` and reveals nothing."""
    step = round_.clients[VICTIM].handle(message)
    assert isinstance(step.state, ClientAborted)
    assert step.state.reason is reason
    assert step.message == ClientAbort(
        round_id=round_.config.round_id, client_id=VICTIM, reason=reason
    )
    # Once aborted, nothing more is answered.
    with pytest.raises(SecAggError) as caught:
        step.state.handle(message)
    assert caught.value.code is ErrorCode.UNEXPECTED_MESSAGE


def _victims(round_: Round) -> Any:
    return round_.outbox[VICTIM]


# Phase 0 -> 1: the key broadcast --------------------------------------------------------


def _replace_entry(broadcast: KeysBroadcast, client_id: int, **changes: Any) -> KeysBroadcast:
    keys = tuple(
        dataclasses.replace(entry, **changes) if entry.client_id == client_id else entry
        for entry in broadcast.keys
    )
    return dataclasses.replace(broadcast, keys=keys)


def test_changed_own_public_key() -> None:
    round_ = _round("keys")
    other = round_.outbox[2].keys[1].masking_key  # type: ignore[union-attr]
    lie = _replace_entry(_victims(round_), VICTIM, masking_key=bytes(reversed(other)))
    _expect_abort(round_, lie, AbortReason.OWN_KEYS_ALTERED)


def test_own_keys_missing() -> None:
    round_ = _round("keys")
    broadcast = _victims(round_)
    lie = dataclasses.replace(
        broadcast, keys=tuple(e for e in broadcast.keys if e.client_id != VICTIM)
    )
    _expect_abort(round_, lie, AbortReason.OWN_KEYS_MISSING)


def test_changed_public_key_of_another_client() -> None:
    round_ = _round("keys")
    broadcast = _victims(round_)
    swapped = bytes(32 - 1) + b"\x09"  # a valid point, but not what client 2 signed
    _expect_abort(
        round_, _replace_entry(broadcast, 2, encryption_key=swapped), AbortReason.BAD_SIGNATURE
    )


def test_bad_advert_signature() -> None:
    round_ = _round("keys")
    broadcast = _victims(round_)
    entry = next(e for e in broadcast.keys if e.client_id == 3)
    forged = bytes([entry.signature[0] ^ 1]) + entry.signature[1:]
    _expect_abort(round_, _replace_entry(broadcast, 3, signature=forged), AbortReason.BAD_SIGNATURE)


def test_key_copied_to_another_entry() -> None:
    round_ = _round("keys")
    broadcast = _victims(round_)
    own = next(e for e in broadcast.keys if e.client_id == VICTIM)
    lie = _replace_entry(broadcast, 4, masking_key=own.masking_key)
    _expect_abort(round_, lie, AbortReason.KEY_REUSED)


@pytest.mark.parametrize("bad_key", [bytes(32), bytes(31)])
def test_neighbour_key_that_cannot_be_agreed_with_counts_as_dropped(bad_key: bytes) -> None:
    # A client signs a small-order (or truncated) masking key and a lying server forwards it:
    # the victim shares with everyone else and goes on, as if that neighbour had dropped.
    round_ = _round("keys")
    accomplice = round_.identities[4]
    entry = next(e for e in _victims(round_).keys if e.client_id == 4)
    payload = signing.advertise_payload(
        round_id=round_.config.round_id,
        client_id=4,
        encryption_key=entry.encryption_key,
        masking_key=bad_key,
        self_mask_commitment=entry.self_mask_commitment,
    )
    lie = _replace_entry(
        _victims(round_), 4, masking_key=bad_key, signature=signing.sign(accomplice, payload)
    )
    step = round_.clients[VICTIM].handle(lie)
    assert isinstance(step.state, ClientShareKeys)
    assert isinstance(step.message, ShareKeys)
    assert sorted(share.recipient for share in step.message.shares) == [2, 3, 5, 6]


def test_too_few_neighbours_advertised() -> None:
    round_ = _round("keys")
    broadcast = _victims(round_)
    lie = dataclasses.replace(broadcast, keys=broadcast.keys[:3])  # victim + 2 < t + 1
    _expect_abort(round_, lie, AbortReason.TOO_FEW_NEIGHBOURS)


def test_broadcast_for_another_round() -> None:
    round_ = _round("keys")
    _expect_abort(
        round_,
        dataclasses.replace(_victims(round_), round_id="round-0"),
        AbortReason.SESSION_MISMATCH,
    )


def test_more_clients_than_the_layout_allows() -> None:
    config = make_config(delta_length=4, threshold=2, degree=None, max_clients=4)
    round_ = Round(config, range(1, 5), seed="max")
    round_.advertise()
    broadcast = _victims(round_)
    ghost = dataclasses.replace(broadcast.keys[-1], client_id=99)
    _expect_abort(
        round_,
        dataclasses.replace(broadcast, keys=(*broadcast.keys, ghost)),
        AbortReason.TOO_MANY_CLIENTS,
    )


# Phase 1 -> 2: the share delivery -------------------------------------------------------


def _own_share_to(round_: Round, recipient: int) -> EncryptedShare:
    sent = next(m for m in round_.sent if isinstance(m, ShareKeys) and m.client_id == VICTIM)
    return next(s for s in sent.shares if s.recipient == recipient)


def _with_shares(delivery: SharesDelivery, shares: tuple[EncryptedShare, ...]) -> SharesDelivery:
    return dataclasses.replace(delivery, shares=shares)


def test_reflected_share_relabelled_as_from_the_neighbour() -> None:
    round_ = _round("shares")
    delivery = _victims(round_)
    mine = _own_share_to(round_, 2)
    reflected = dataclasses.replace(mine, sender=2, recipient=VICTIM)
    shares = tuple(reflected if s.sender == 2 else s for s in delivery.shares)
    _expect_abort(round_, _with_shares(delivery, shares), AbortReason.REFLECTED_SHARE)


def test_reflected_share_sent_back_unchanged() -> None:
    round_ = _round("shares")
    delivery = _victims(round_)
    shares = (*delivery.shares[1:], _own_share_to(round_, 2))
    _expect_abort(round_, _with_shares(delivery, shares), AbortReason.REFLECTED_SHARE)


def test_replayed_share_from_an_earlier_session() -> None:
    old = _round("shares", round_id="round-0")
    old_share = next(s for s in old.outbox[VICTIM].shares if s.sender == 2)  # type: ignore[union-attr]
    round_ = _round("shares", round_id="round-1")
    delivery = _victims(round_)
    shares = tuple(old_share if s.sender == 2 else s for s in delivery.shares)
    _expect_abort(round_, _with_shares(delivery, shares), AbortReason.REPLAYED_SHARE)
    # Relabelled with the current session id, the old share no longer authenticates.
    round_ = _round("shares", round_id="round-1")
    relabelled = dataclasses.replace(old_share, session_id=round_.outbox[VICTIM].session_id)  # type: ignore[union-attr]
    delivery = _victims(round_)
    shares = tuple(relabelled if s.sender == 2 else s for s in delivery.shares)
    _expect_abort(round_, _with_shares(delivery, shares), AbortReason.AEAD_FAILURE)


def test_share_delivered_twice() -> None:
    round_ = _round("shares")
    delivery = _victims(round_)
    _expect_abort(
        round_,
        _with_shares(delivery, (*delivery.shares, delivery.shares[0])),
        AbortReason.REPLAYED_SHARE,
    )


def test_share_for_someone_else() -> None:
    round_ = _round("shares")
    theirs = next(s for s in round_.outbox[2].shares if s.sender == 3)  # type: ignore[union-attr]
    delivery = _victims(round_)
    _expect_abort(
        round_, _with_shares(delivery, (*delivery.shares, theirs)), AbortReason.UNEXPECTED_SHARE
    )


def test_tampered_ciphertext() -> None:
    round_ = _round("shares")
    delivery = _victims(round_)
    first = delivery.shares[0]
    broken = dataclasses.replace(
        first, ciphertext=first.ciphertext[:-1] + bytes([first.ciphertext[-1] ^ 1])
    )
    _expect_abort(
        round_, _with_shares(delivery, (broken, *delivery.shares[1:])), AbortReason.AEAD_FAILURE
    )


def test_dead_list_with_a_client_that_sent_a_share() -> None:
    round_ = _round("shares")
    delivery = _victims(round_)
    _expect_abort(round_, dataclasses.replace(delivery, dead=(2,)), AbortReason.ALIVE_DEAD_OVERLAP)


def test_dead_list_containing_the_client_itself_at_share_delivery() -> None:
    round_ = _round("shares")
    _expect_abort(
        round_, dataclasses.replace(_victims(round_), dead=(VICTIM,)), AbortReason.SELF_LISTED_DEAD
    )


def test_too_few_shares_delivered() -> None:
    round_ = _round("shares")
    delivery = _victims(round_)
    _expect_abort(
        round_, _with_shares(delivery, delivery.shares[:2]), AbortReason.TOO_FEW_NEIGHBOURS
    )


# Phase 2 -> 3: the consistency request --------------------------------------------------


def test_alive_and_dead_lists_overlap() -> None:
    round_ = _round("consistency")
    request = _victims(round_)
    lie = dataclasses.replace(request, dead=(*request.dead, 4))
    _expect_abort(round_, lie, AbortReason.ALIVE_DEAD_OVERLAP)


def test_dead_list_containing_the_client_itself() -> None:
    round_ = _round("consistency")
    request = _victims(round_)
    lie = ConsistencyRequest(
        session_id=request.session_id,
        alive=tuple(c for c in request.alive if c != VICTIM),
        dead=(*request.dead, VICTIM),
    )
    _expect_abort(round_, lie, AbortReason.SELF_LISTED_DEAD)


def test_alive_list_without_the_client() -> None:
    round_ = _round("consistency")
    request = _victims(round_)
    lie = dataclasses.replace(request, alive=tuple(c for c in request.alive if c != VICTIM))
    _expect_abort(round_, lie, AbortReason.SELF_NOT_LISTED_ALIVE)


def test_client_dead_before_sharing_later_listed_alive() -> None:
    round_ = _round("consistency", after_keys={2})
    assert 2 in round_.clients[VICTIM]._known_dead  # type: ignore[attr-defined]
    request = _victims(round_)
    lie = dataclasses.replace(request, alive=tuple(sorted((*request.alive, 2))))
    _expect_abort(round_, lie, AbortReason.DEAD_CLIENT_REVIVED)


def test_unknown_client_id_in_a_list() -> None:
    round_ = _round("consistency")
    request = _victims(round_)
    _expect_abort(
        round_,
        dataclasses.replace(request, dead=(*request.dead, 999)),
        AbortReason.UNKNOWN_CLIENT_ID,
    )


def test_too_few_survivors_listed() -> None:
    round_ = _round("consistency")
    request = _victims(round_)
    lie = ConsistencyRequest(request.session_id, alive=(VICTIM, 2), dead=(3, 4, 5, 6))
    _expect_abort(round_, lie, AbortReason.TOO_FEW_NEIGHBOURS)


def test_consistency_request_for_another_session() -> None:
    round_ = _round("consistency")
    lie = dataclasses.replace(_victims(round_), session_id=bytes(32))
    _expect_abort(round_, lie, AbortReason.SESSION_MISMATCH)


# Phase 3 -> 4: the unmask request -------------------------------------------------------


def test_client_listed_dead_that_later_signs_as_alive() -> None:
    round_ = _round("unmask", after_shares={5})
    request = _victims(round_)
    forged = SurvivorSignature(5, request.signatures[0].signature)
    _expect_abort(
        round_,
        dataclasses.replace(request, signatures=(*request.signatures, forged)),
        AbortReason.DEAD_CLIENT_REVIVED,
    )


def test_bad_survivor_signature() -> None:
    round_ = _round("unmask")
    request = _victims(round_)
    first = request.signatures[0]
    forged = SurvivorSignature(
        first.client_id, bytes([first.signature[0] ^ 1]) + first.signature[1:]
    )
    _expect_abort(
        round_,
        dataclasses.replace(request, signatures=(forged, *request.signatures[1:])),
        AbortReason.BAD_SIGNATURE,
    )


def test_too_few_survivor_signatures() -> None:
    round_ = _round("unmask")
    request = _victims(round_)
    lie = dataclasses.replace(request, signatures=request.signatures[:2])
    _expect_abort(round_, lie, AbortReason.TOO_FEW_SIGNATURES)


def test_second_unmask_request() -> None:
    round_ = _round("unmask")
    request = _victims(round_)
    step = round_.clients[VICTIM].handle(request)
    assert isinstance(step.message, UnmaskResponse)
    assert isinstance(step.state, ClientCompleted)
    round_.clients[VICTIM] = step.state
    _expect_abort(round_, request, AbortReason.SECOND_UNMASK_REQUEST)


def test_aborted_clients_never_reveal_shares() -> None:
    # Across every lie above the only reply is a ClientAbort; here, check that an aborted
    # client asked to unmask raises instead of answering.
    round_ = _round("unmask")
    request: UnmaskRequest = _victims(round_)
    lie = dataclasses.replace(request, signatures=())
    step = round_.clients[VICTIM].handle(lie)
    assert isinstance(step.state, ClientAborted)
    with pytest.raises(SecAggError):
        step.state.handle(request)
