"""What the agent does when computing its update fails, by the error's kind (in process)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_client.errors import EdgeError, ErrorCode
from edge_client.session import Outcome, RoundInputs, RoundSession, SessionError
from edge_client.training import TrainingStoppedError
from fedadamw.errors import DivergedError
from secure_agg import SegmentLayout, update_layout
from wire.v1 import edge_pb2 as pb


def _session(
    tmp_path: Path, compute: Callable[[RoundInputs], dict[str, np.ndarray]]
) -> RoundSession:
    return RoundSession(
        stub=object(),  # type: ignore[arg-type]
        identity_key=Ed25519PrivateKey.generate(),
        assignment=pb.RoundAssignment(round_id="r1"),
        compute=compute,
        cache_dir=tmp_path,
        rng=random.Random(5),
    )


def _encode(session: RoundSession) -> np.ndarray:
    layout = update_layout(
        delta_length=4,
        delta_clip=1.0,
        moment_length=0,
        moment_max=1.0,
        weight_max=1.0,
        max_clients=4,
    )
    inputs = cast(RoundInputs, None)  # the failing compute never reads it
    return session._encode(inputs, cast(SegmentLayout, layout))


def _raising(error: BaseException) -> Callable[[RoundInputs], dict[str, np.ndarray]]:
    def compute(inputs: RoundInputs) -> dict[str, np.ndarray]:
        raise error

    return compute


def test_a_limit_refuses_the_round_and_keeps_its_code(tmp_path: Path) -> None:
    session = _session(tmp_path, _raising(EdgeError(ErrorCode.LIMIT, "v̄ has 3 blocks, not 4")))
    with pytest.raises(SessionError) as refused:
        _encode(session)
    assert refused.value.outcome is Outcome.REFUSED
    assert refused.value.reason == "the update was not computed (limit): v̄ has 3 blocks, not 4"


def test_a_shutdown_during_training_refuses_the_round_as_stopped(tmp_path: Path) -> None:
    session = _session(tmp_path, _raising(TrainingStoppedError("stopped after 3 of 10 steps")))
    with pytest.raises(SessionError) as refused:
        _encode(session)
    assert "(stopped)" in refused.value.reason


@pytest.mark.parametrize(
    "error",
    [RuntimeError("CUDA out of memory"), MemoryError(), DivergedError("the loss is nan")],
    ids=["runtime", "memory", "diverged"],
)
def test_a_device_failure_is_logged_at_error_and_refuses_the_round(
    tmp_path: Path, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    session = _session(tmp_path, _raising(error))
    with (
        caplog.at_level(logging.ERROR, logger="edge_client.session"),
        pytest.raises(SessionError) as refused,
    ):
        _encode(session)
    assert refused.value.outcome is Outcome.REFUSED
    assert refused.value.reason.startswith("local training failed")
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)


def test_a_bug_in_the_update_is_not_turned_into_a_refusal(tmp_path: Path) -> None:
    session = _session(tmp_path, _raising(KeyError("delta")))
    with pytest.raises(KeyError):
        _encode(session)
