"""Store contract: enrollment tokens, enrolling, clients and revocation (every backend)."""

from __future__ import annotations

from datetime import timedelta, timezone

import pytest

from coordinator.domain import Client, EnrollmentToken
from coordinator.errors import ErrorCode
from coordinator.store.sql import SqlStore

from .factories import T0, at, digest, enroll, issue_certificate, raises_code, token

KEY_A = b"A" * 32
KEY_B = b"B" * 32


class CertificateAuthority:
    """Records the ids it issued for; fails when told to."""

    def __init__(self, *, fail: bool = False) -> None:
        self.issued: list[int] = []
        self.fail = fail

    def __call__(self, client_id: int) -> tuple[bytes, int]:
        self.issued.append(client_id)
        if self.fail:
            raise RuntimeError("the CA key is unavailable")
        return f"PEM for {client_id}".encode(), 2**100 + client_id  # X.509 serials are long


def _enroll(
    store: SqlStore, name: str, key: bytes, ca: CertificateAuthority, *, now: float = 5
) -> Client:
    return store.enroll(
        token_hash=digest(name), identity_key=key, label=f"device {name}", now=at(now),
        issue_certificate=ca,
    )  # fmt: skip


def test_enroll_creates_a_client_with_its_certificate(store: SqlStore) -> None:
    store.create_token(token("t1"))
    ca = CertificateAuthority()
    client = store.enroll(
        token_hash=digest("t1"), identity_key=KEY_A, label="pixel", now=at(5),
        issue_certificate=ca,
    )  # fmt: skip
    assert ca.issued == [client.client_id]
    assert client.client_id >= 1
    assert client.identity_key == KEY_A
    assert client.label == "pixel"
    assert client.certificate_pem == f"PEM for {client.client_id}".encode()
    assert client.certificate_serial == 2**100 + client.client_id
    assert client.enrolled_at == at(5)
    assert client.enrolled_at.tzinfo is not None
    assert not client.revoked
    assert store.get_client(client.client_id) == client
    assert store.list_clients() == [client]


def test_a_lost_answer_is_retried_with_the_same_key(store: SqlStore) -> None:
    store.create_token(token("t1", expires_in=60))
    first_ca, retry_ca = CertificateAuthority(), CertificateAuthority()
    first = _enroll(store, "t1", KEY_A, first_ca)
    again = _enroll(store, "t1", KEY_A, retry_ca, now=600)  # even after the token expired
    assert again == first
    assert retry_ca.issued == []  # no second certificate
    assert len(store.list_clients()) == 1


def test_unknown_token_is_invalid(store: SqlStore) -> None:
    raises_code(
        ErrorCode.TOKEN_INVALID, lambda: _enroll(store, "nope", KEY_A, CertificateAuthority())
    )
    assert store.list_clients() == []


@pytest.mark.parametrize("now", [3600, 3601])
def test_token_expires_at_its_expiry(store: SqlStore, now: float) -> None:
    store.create_token(token("t1", expires_in=3600))
    ca = CertificateAuthority()
    raises_code(ErrorCode.TOKEN_EXPIRED, lambda: _enroll(store, "t1", KEY_A, ca, now=now))
    assert ca.issued == []
    assert store.list_clients() == []


def test_token_spent_by_another_key_is_used(store: SqlStore) -> None:
    store.create_token(token("t1"))
    _enroll(store, "t1", KEY_A, CertificateAuthority())
    raises_code(ErrorCode.TOKEN_USED, lambda: _enroll(store, "t1", KEY_B, CertificateAuthority()))
    assert [c.identity_key for c in store.list_clients()] == [KEY_A]


def test_an_enrolled_key_cannot_enroll_again_with_another_token(store: SqlStore) -> None:
    store.create_token(token("t1"))
    store.create_token(token("t2"))
    first = _enroll(store, "t1", KEY_A, CertificateAuthority())
    raises_code(ErrorCode.CONFLICT, lambda: _enroll(store, "t2", KEY_A, CertificateAuthority()))
    assert store.list_clients() == [first]
    # The refused attempt did not spend t2: another device can still use it.
    assert _enroll(store, "t2", KEY_B, CertificateAuthority()).identity_key == KEY_B


def test_a_failed_certificate_changes_nothing(store: SqlStore) -> None:
    store.create_token(token("t1"))
    failing = CertificateAuthority(fail=True)
    with pytest.raises(RuntimeError, match="CA key"):
        _enroll(store, "t1", KEY_A, failing)
    assert len(failing.issued) == 1
    assert store.list_clients() == []
    client = _enroll(store, "t1", KEY_A, CertificateAuthority())  # the token is unspent
    assert client.identity_key == KEY_A


def test_create_token_refuses_a_repeated_hash(store: SqlStore) -> None:
    store.create_token(token("t1"))
    raises_code(ErrorCode.CONFLICT, lambda: store.create_token(token("t1", expires_in=10)))


def test_create_token_refuses_malformed_or_naive_tokens(store: SqlStore) -> None:
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.create_token(EnrollmentToken("not-hex", T0, at(60))),
    )
    naive = EnrollmentToken(digest("t"), T0.replace(tzinfo=None), at(60).replace(tzinfo=None))
    raises_code(ErrorCode.INVALID_ARGUMENT, lambda: store.create_token(naive))
    store.create_token(token("t"))  # nothing half-stored: the hash is still free


def test_enroll_refuses_a_naive_time(store: SqlStore) -> None:
    store.create_token(token("t1"))
    raises_code(
        ErrorCode.INVALID_ARGUMENT,
        lambda: store.enroll(
            token_hash=digest("t1"), identity_key=KEY_A, label="x",
            now=at(5).replace(tzinfo=None), issue_certificate=issue_certificate,
        ),
    )  # fmt: skip


def test_clients_are_listed_by_id_and_times_come_back_in_utc(store: SqlStore) -> None:
    store.create_token(token("t1"))
    store.create_token(token("t2"))
    east = timezone(timedelta(hours=5))
    a = store.enroll(
        token_hash=digest("t1"), identity_key=KEY_A, label="a", now=at(5).astimezone(east),
        issue_certificate=issue_certificate,
    )  # fmt: skip
    b = _enroll(store, "t2", KEY_B, CertificateAuthority())
    assert a.enrolled_at == at(5)
    assert a.enrolled_at.utcoffset() == timedelta(0)
    assert [c.client_id for c in store.list_clients()] == sorted([a.client_id, b.client_id])
    assert a.client_id != b.client_id


def test_get_client_of_an_unknown_id_is_not_found(store: SqlStore) -> None:
    raises_code(ErrorCode.NOT_FOUND, lambda: store.get_client(4242))


def test_revocation_takes_the_first_time(store: SqlStore) -> None:
    client = enroll(store, "c")
    revoked = store.revoke_client(client.client_id, now=at(50))
    assert revoked.revoked
    assert revoked.revoked_at == at(50)
    again = store.revoke_client(client.client_id, now=at(90))
    assert again.revoked_at == at(50)
    assert store.get_client(client.client_id) == revoked
    raises_code(ErrorCode.NOT_FOUND, lambda: store.revoke_client(4242, now=at(50)))


def test_revoked_ids_and_the_enrolled_count_follow_revocations(store: SqlStore) -> None:
    assert (store.revoked_client_ids(), store.count_enrolled()) == (frozenset(), 0)
    clients = [enroll(store, f"r{i}") for i in range(3)]
    assert (store.revoked_client_ids(), store.count_enrolled()) == (frozenset(), 3)
    store.revoke_client(clients[1].client_id, now=at(50))
    assert store.revoked_client_ids() == {clients[1].client_id}
    assert store.count_enrolled() == 2
    store.revoke_client(clients[1].client_id, now=at(60))  # a second time changes nothing
    store.revoke_client(clients[2].client_id, now=at(60))
    assert store.revoked_client_ids() == {clients[1].client_id, clients[2].client_id}
    assert store.count_enrolled() == 1
