"""The ``fedadamw`` command, run as users run it: a real process."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_simulate_writes_metrics_plot_and_config(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _run(
        "fedadamw", "simulate", "--task", "digits-cnn", "--algorithms", "fedadamw,fedavg",
        "--clients", "4", "--participation", "0.5", "--rounds", "2", "--local-steps", "3",
        "--batch-size", "8", "--lr", "3e-3,fedavg=0.05", "--seed", "1", "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["algorithm"], r["round"]) for r in rows] == [
        (a, str(i)) for a in ("fedadamw", "fedavg") for i in range(3)
    ]
    assert {r["lr"] for r in rows if r["algorithm"] == "fedavg"} == {"0.05"}
    assert (out / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"local_steps": 3' in (out / "config.json").read_text()
    assert f"metrics: {out / 'metrics.csv'}" in result.stdout
    assert "simulate: 4/4" in result.stderr  # progress, as log lines when not on a terminal

    replot = _run(
        "fedadamw", "plot", str(out / "metrics.csv"), "--out", str(tmp_path / "again.png")
    )
    assert replot.returncode == 0, replot.stderr
    assert (tmp_path / "again.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--algorithms", "nope"], "unknown algorithm 'nope'"),
        (["simulate", "--task", "mnist"], "unknown task 'mnist'"),
        (["simulate", "--lr", "fast"], "'fast' is not a number"),
        (["simulate", "--participation", "2"], "participation must be in (0, 1]"),
        (["simulate", "--dirichlet", "-1", "--rounds", "1"], "alpha must be > 0"),
        (["plot", "/no/such/metrics.csv"], "does not exist"),
    ],
)
def test_bad_input_gets_a_clear_error(args: list[str], message: str, tmp_path: Path) -> None:
    result = (
        _run("fedadamw", *args, "--out", str(tmp_path / "x"))
        if args[0] == "simulate"
        else _run("fedadamw", *args)
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_list() -> None:
    for command in ([], ["simulate"], ["demo"], ["plot"]):
        result = _run("fedadamw", *command, "--help")
        assert result.returncode == 0
        assert "usage: fedadamw" in result.stdout
    listing = _run("fedadamw", "list")
    assert "digits-vit" in listing.stdout
    assert "fedavg-adamw" in listing.stdout


@pytest.mark.parametrize("command", ["fedadamw-coordinator", "fedadamw-edge"])
def test_service_commands_ask_for_a_subcommand(command: str) -> None:
    result = _run(command)
    assert result.returncode == 2
    assert f"usage: {command}" in result.stderr
    assert "Traceback" not in result.stderr
