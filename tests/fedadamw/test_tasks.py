"""The task interface, the registry and the built-in digits tasks."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedadamw import BlockMode, BlockPartition, FlatLayout
from fedadamw.errors import TaskError, UnknownNameError
from fedadamw.tasks import ClientDataSpec, Task, TensorClientData, available_tasks, load_task
from fedadamw.tasks.digits import digits_split


def test_builtin_tasks_are_listed_and_load() -> None:
    assert available_tasks()[:2] == ["digits-cnn", "digits-vit"]
    for name in ("digits-cnn", "digits-vit"):
        task = load_task(name)
        assert isinstance(task, Task)
        assert task.name == name


def test_unknown_task_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match="digits-cnn, digits-vit"):
        load_task("imagenet")
    with pytest.raises(TaskError, match="cannot load task"):
        load_task("no_such_module:task")
    with pytest.raises(TaskError, match="not a fedadamw Task"):
        load_task("math:pi")


def test_module_attr_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            """
            from fedadamw.tasks.digits import DigitsTask, digits_cnn

            instance = digits_cnn()

            def factory():
                return digits_cnn()

            class Custom(DigitsTask):
                def __init__(self):
                    super().__init__("", digits_cnn()._factory, "custom")

            def not_a_task():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_task("my_tasks:instance").name == "digits-cnn"
        assert load_task("my_tasks:factory").name == "digits-cnn"
        assert load_task("my_tasks:Custom").name == "my_tasks:Custom"
        with pytest.raises(TaskError, match="returned int"):
            load_task("my_tasks:not_a_task")
    finally:
        sys.modules.pop("my_tasks", None)


@pytest.mark.parametrize("name", ["digits-cnn", "digits-vit"])
def test_the_same_seed_builds_the_same_model(name: str) -> None:
    task = load_task(name)
    state = torch.get_rng_state()
    a, b, c = (task.build_model(seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    layout = FlatLayout.from_model(a)
    assert torch.equal(layout.read(a), layout.read(b))
    assert not torch.equal(layout.read(a), layout.read(c))


def test_digits_split_is_held_out_and_stratified() -> None:
    split = digits_split()
    assert len(split.train_y) + len(split.test_y) == 1797
    assert len(split.test_y) == 360
    assert split.train_x.shape[1:] == (1, 8, 8)
    assert float(split.train_x.max()) <= 1.0
    assert torch.bincount(split.test_y).min() >= 35


def test_client_shares_cover_the_training_set() -> None:
    task = load_task("digits-cnn")
    sizes = [
        task.client_data(
            ClientDataSpec(partition=i, num_partitions=8, dirichlet=0.3, seed=5)
        ).num_samples
        for i in range(8)
    ]
    assert sum(sizes) == len(digits_split().train_y)
    with pytest.raises(TaskError, match="not a data path"):
        task.client_data(ClientDataSpec(data_path=Path("/data")))


def test_partition_spec_parsing() -> None:
    spec = ClientDataSpec.parse_partition("3/8", dirichlet=0.1, seed=4)
    assert (spec.partition, spec.num_partitions, spec.dirichlet, spec.seed) == (3, 8, 0.1, 4)
    with pytest.raises(ValueError, match="i/N"):
        ClientDataSpec.parse_partition("3 of 8")
    with pytest.raises(ValueError, match=r"not one of 0\.\.7"):
        ClientDataSpec.parse_partition("8/8")


def test_batches_cycle_epochs_reproducibly() -> None:
    data = TensorClientData(torch.arange(10.0)[:, None], torch.arange(10))
    stream = data.batches(batch_size=4, seed=1)
    seen = [next(stream)[1] for _ in range(4)]  # two epochs of two full batches
    assert all(len(b) == 4 for b in seen)
    assert len(set(torch.cat(seen[:2]).tolist())) == 8
    again = data.batches(batch_size=4, seed=1)
    assert all(torch.equal(next(again)[1], b) for b in seen)
    small = TensorClientData(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))
    assert len(next(small.batches(batch_size=32, seed=0))[1]) == 3


def test_evaluation_of_an_untrained_model_is_near_chance() -> None:
    task = load_task("digits-cnn")
    result = task.evaluate(task.build_model(seed=0), device=torch.device("cpu"))
    assert result is not None
    assert result.num_samples == 360
    assert result.accuracy is not None
    assert result.accuracy < 0.3
    assert 2.0 < result.loss < 2.6  # about ln 10


def test_vit_heads_partition_its_attention() -> None:
    task = load_task("digits-vit")
    model = task.build_model(seed=0)
    layout = FlatLayout.from_model(model)
    part = BlockPartition.build(layout, BlockMode.HEAD, head_blocks=task.head_blocks(model))
    tensor_part = BlockPartition.build(layout, BlockMode.TENSOR)
    # 2 layers × (q, k, v) × (weight, bias) split 4 ways instead of 1
    assert part.num_blocks == tensor_part.num_blocks + 2 * 3 * 2 * 3
    cnn = load_task("digits-cnn")
    assert cnn.head_blocks(cnn.build_model(seed=0)) == {}
