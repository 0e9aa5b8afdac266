"""The per-client request budget (``coordinator.auth``), on a fake clock: no waiting."""

from __future__ import annotations

import pytest

from coordinator.auth import BURST, Authenticator
from coordinator.errors import CoordinatorError, ErrorCode


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _authenticator(clock: FakeClock, rate: float = 2.0) -> Authenticator:
    # spend() touches no store; the store is only for authenticating a caller
    return Authenticator(store=None, insecure=True, rate_per_second=rate, clock=clock)  # type: ignore[arg-type]


def _spend_until_refused(auth: Authenticator, client_id: int) -> int:
    spent = 0
    while True:
        try:
            auth.spend(client_id)
        except CoordinatorError as exc:
            refused = exc
            break
        spent += 1
        assert spent < 1000, "the budget never ran out"
    assert refused.code is ErrorCode.RATE_LIMITED
    return spent


def test_a_burst_gets_the_bucket_and_no_more() -> None:
    clock = FakeClock()
    auth = _authenticator(clock, rate=2.0)
    assert _spend_until_refused(auth, 7) == int(2.0 * BURST)


def test_the_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    clock = FakeClock()
    auth = _authenticator(clock, rate=2.0)
    _spend_until_refused(auth, 7)
    clock.now += 1.0  # one second: two more calls
    assert _spend_until_refused(auth, 7) == 2
    clock.now += 3600.0  # an hour idle refills only up to the burst
    assert _spend_until_refused(auth, 7) == int(2.0 * BURST)


def test_the_budget_is_per_client() -> None:
    clock = FakeClock()
    auth = _authenticator(clock, rate=2.0)
    _spend_until_refused(auth, 7)
    auth.spend(8)  # another client is not limited by the first one's burst
    with pytest.raises(CoordinatorError) as refused:
        auth.spend(7)
    assert refused.value.code is ErrorCode.RATE_LIMITED
    assert "client 7" in refused.value.message


def test_a_costly_call_takes_its_cost() -> None:
    clock = FakeClock()
    auth = _authenticator(clock, rate=1.0)
    auth.spend(7, cost=BURST)  # the whole bucket at once
    with pytest.raises(CoordinatorError):
        auth.spend(7, cost=0.5)
    clock.now += 0.5
    auth.spend(7, cost=0.5)
