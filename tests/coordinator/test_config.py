"""The coordinator's TOML configuration and the round settings derived from it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig, SecureAggregationSettings, load_config
from coordinator.domain import ModelVersion, RoundPhase
from coordinator.errors import CoordinatorError
from coordinator.round_settings import RoundSettings, plan_round


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'task = "digits-vit"\nrounds = 7\n[fedadamw]\nalpha = 0.25\n[deadlines]\nunmasking = 5\n'
    )
    config = load_config(path, {"rounds": 9, "cohort": None})
    assert (config.task, config.rounds, config.cohort) == ("digits-vit", 9, 8)
    assert config.fedadamw.alpha == 0.25
    assert config.deadlines.unmasking == 5.0
    assert config.selected == 10  # 8 × 1.25


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = 0", "rounds must be at least 1"),
        ("cohort = 2\nmin_clients = 3", "min_clients (3) exceeds cohort (2)"),
        ("colour = 1", "unknown setting(s) in the top level: colour"),
        ("[fedadamw]\ngamma = 1", "unknown setting(s) in [fedadamw]: gamma"),
        ('rounds = "ten"', "rounds must be a int"),
        ("[secure_aggregation]\nring_bits = 16", "ring_bits must be 32 or 64"),
        ('schedule = "step"', "schedule must be cosine or constant"),
        ("rounds = [", "cannot read config file"),
        ("[deadlines]\nunmasking = 0", "every deadline must be > 0"),
    ],
)
def test_bad_settings_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(CoordinatorError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CoordinatorError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def _version() -> ModelVersion:
    return ModelVersion(
        version=3,
        created_at=datetime.now(UTC),
        model_sha256="ab" * 32,
        global_update_sha256="cd" * 32,
        second_moment_sha256="ef" * 32,
        global_step=60,
        layout_fingerprint="f" * 64,
    )


def _plan(config: CoordinatorConfig, cohort: int = 10) -> RoundSettings:
    return plan_round(
        config,
        round_id="r1",
        number=4,
        version=_version(),
        cohort_size=cohort,
        model_length=1000,
        num_blocks=8,
        block_mode="tensor",
        blob_sizes={"model": 4000, "second_moment": 64},
    )


def test_round_settings_follow_the_configuration() -> None:
    config = CoordinatorConfig(rounds=10, lr=0.01, local_steps=20)
    settings = _plan(config)
    assert settings.lr == pytest.approx(0.5 * 0.01 * (1 + math.cos(math.pi * 3 / 10)))
    assert settings.global_step == 60
    layout = settings.layout
    assert [s.name for s in layout.segments] == [
        "delta",
        "second_moment",
        "weight",
        "samples",
        "train_loss",
        "clip_count",
    ]
    assert layout.segment("samples").high == 20 * 32
    assert layout.segment("delta").high == pytest.approx(2.0 * 20 * settings.lr)
    assert layout.max_clients == 10
    assert settings.degree is None  # small cohorts use the complete graph
    assert settings.threshold >= 2
    assert settings.total_chunks == 1
    assert settings.chunk_length(0) == layout.length
    assert RoundSettings.from_json(settings.to_json()) == settings
    session = settings.session()
    assert session.round_id == "r1"
    assert session.model_hash == bytes.fromhex("ab" * 32)
    deadlines = settings.deadlines_from(datetime(2026, 1, 1, tzinfo=UTC))
    assert list(deadlines) == [
        RoundPhase.ADVERTISE_KEYS,
        RoundPhase.SHARE_KEYS,
        RoundPhase.MASKED_INPUT,
        RoundPhase.CONSISTENCY_CHECK,
        RoundPhase.UNMASKING,
    ]


def test_an_impossible_threshold_is_refused() -> None:
    config = CoordinatorConfig(
        cohort=3, min_clients=2, secure_aggregation=SecureAggregationSettings(threshold=9, degree=2)
    )
    with pytest.raises(CoordinatorError, match="cannot run a cohort of 3"):
        _plan(config, cohort=3)
    with pytest.raises(CoordinatorError, match="outside"):
        _plan(CoordinatorConfig()).chunk_length(5)
