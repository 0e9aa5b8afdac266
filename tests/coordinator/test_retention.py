"""The retention settings: ``[retention] keep_versions``, at least the latest version, and
``keep_rounds``, at least the newest round."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig, load_config
from coordinator.errors import CoordinatorError, ErrorCode


def test_keep_versions_defaults_to_five_and_reads_from_toml(tmp_path: Path) -> None:
    assert CoordinatorConfig().retention.keep_versions == 5
    path = tmp_path / "c.toml"
    path.write_text("[retention]\nkeep_versions = 2\n")
    assert load_config(path).retention.keep_versions == 2


@pytest.mark.parametrize("text", ["keep_versions = 0", "keep_versions = -3"])
def test_keep_versions_below_one_is_refused_with_the_reason(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[retention]\n{text}\n")
    with pytest.raises(CoordinatorError) as caught:
        load_config(path)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    message = str(caught.value)
    assert str(path) in message
    assert "[retention] keep_versions must be at least 1" in message
    assert "the latest version" in message


def test_unknown_retention_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[retention]\nkeep = 3\nkeep_versions = "all"\n')
    with pytest.raises(CoordinatorError, match="unknown setting"):
        load_config(path)
    path.write_text('[retention]\nkeep_versions = "all"\n')
    with pytest.raises(CoordinatorError, match="keep_versions must be a int"):
        load_config(path)


def test_keep_rounds_defaults_to_a_thousand_and_must_keep_the_newest(tmp_path: Path) -> None:
    assert CoordinatorConfig().retention.keep_rounds == 1000
    path = tmp_path / "c.toml"
    path.write_text("[retention]\nkeep_rounds = 20\n")
    assert load_config(path).retention.keep_rounds == 20
    path.write_text("[retention]\nkeep_rounds = 0\n")
    with pytest.raises(CoordinatorError) as caught:
        load_config(path)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    assert "[retention] keep_rounds must be at least 1, got 0" in str(caught.value)
    assert "the newest round numbers the next one" in str(caught.value)
