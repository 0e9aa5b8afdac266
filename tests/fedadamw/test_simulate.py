"""The in-process simulator, its CSV and its summaries."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from fedadamw.errors import InvalidArgumentError, UnknownNameError
from fedadamw.simulate import RoundRecord, SimulationConfig, read_csv, simulate, write_csv
from fedadamw.summary import format_table, summarize

SMALL = SimulationConfig(
    task="digits-cnn",
    algorithms=("fedadamw", "fedavg-adamw", "fedavg"),
    clients=6,
    participation=0.5,
    dirichlet=0.5,
    rounds=3,
    local_steps=4,
    batch_size=16,
)


def _without_time(records: list[RoundRecord]) -> list[RoundRecord]:
    return [replace(r, seconds=0.0) for r in records]


def test_records_cover_every_algorithm_and_round() -> None:
    seen: list[RoundRecord] = []
    records = simulate(SMALL, on_round=seen.append)
    assert seen == records
    assert [(r.algorithm, r.round) for r in records] == [
        (a, r) for a in SMALL.algorithms for r in range(SMALL.rounds + 1)
    ]
    initial = {r.test_accuracy for r in records if r.round == 0}
    assert len(initial) == 1  # one initial model for all
    assert all(r.clients == 3 for r in records if r.round > 0)
    assert all(math.isnan(r.train_loss) for r in records if r.round == 0)
    assert all(r.train_loss > 0 for r in records if r.round > 0)


def test_the_same_seed_gives_the_same_run_and_another_seed_does_not() -> None:
    config = replace(SMALL, algorithms=("fedadamw",), rounds=2)
    a, b = simulate(config), simulate(config)
    c = simulate(replace(config, seed=1))
    assert _without_time(a) == _without_time(b)
    assert _without_time(a) != _without_time(c)


def test_fedadamw_learns_the_digits() -> None:
    config = replace(
        SMALL, algorithms=("fedadamw",), clients=10, participation=0.5, rounds=6, local_steps=20
    )
    records = simulate(config)
    assert records[-1].test_accuracy > records[0].test_accuracy + 0.4


def test_a_diverging_run_stops_and_the_others_go_on() -> None:
    config = replace(SMALL, algorithms=("fedavg", "fedavg-adamw"), lrs={"fedavg": 1e6})
    records = simulate(config)
    fedavg = [r for r in records if r.algorithm == "fedavg"]
    assert len(fedavg) == 2
    assert fedavg[-1].diverged
    assert len([r for r in records if r.algorithm == "fedavg-adamw"]) == SMALL.rounds + 1
    summary = {s.algorithm: s for s in summarize(records)}
    assert summary["fedavg"].diverged
    assert math.isnan(summary["fedavg"].final_accuracy)
    assert "diverged" in format_table(list(summary.values()))


def test_csv_round_trip(tmp_path: Path) -> None:
    records = simulate(replace(SMALL, algorithms=("fedavg",), rounds=1))
    path = tmp_path / "out" / "metrics.csv"
    write_csv(records, path)
    header = path.read_text().splitlines()[0].split(",")
    assert {"algorithm", "round", "test_accuracy", "test_loss", "train_loss"} <= set(header)
    again = read_csv(path)
    assert len(again) == len(records)
    for x, y in zip(again, records, strict=True):
        assert (x.algorithm, x.round, x.test_accuracy) == (y.algorithm, y.round, y.test_accuracy)
    (tmp_path / "bad.csv").write_text("algorithm,round\nx,1\n")
    with pytest.raises(InvalidArgumentError, match="missing"):
        read_csv(tmp_path / "bad.csv")


def _record(round_index: int, accuracy: float) -> RoundRecord:
    return RoundRecord("a", 0.1, round_index, accuracy, 1.0, 1.0, 5, 0.0)


def test_summary_rounds_to_target_and_final_window() -> None:
    accuracies = [0.1, 0.5, 0.85, 0.8, 0.95, 0.9, 0.9, 0.9, 0.9]
    (summary,) = summarize([_record(i, a) for i, a in enumerate(accuracies)])
    assert summary.rounds_to == {0.8: 2, 0.9: 4}
    assert summary.final_accuracy == pytest.approx((0.95 + 0.9 * 4) / 5)
    assert summary.best_accuracy == 0.95


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"algorithms": ("nope",)}, UnknownNameError),
        ({"algorithms": ()}, InvalidArgumentError),
        ({"participation": 0.0}, InvalidArgumentError),
        ({"rounds": 0}, InvalidArgumentError),
        ({"lrs": {"fedavg": -1.0}}, InvalidArgumentError),
    ],
)
def test_bad_configs_are_refused(change: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        replace(SMALL, **change)  # type: ignore[arg-type]
