"""Device selection for the agent's training."""

from __future__ import annotations

import pytest
import torch

from edge_client.errors import EdgeError
from edge_client.training import select_device


def test_auto_picks_cuda_only_when_torch_sees_it() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused() -> None:
    with pytest.raises(EdgeError, match="sees no CUDA GPU"):
        select_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_with_a_gpu() -> None:
    assert select_device("cuda").type == "cuda"
    with pytest.raises(EdgeError, match="GPU"):
        select_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "mps:x"])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(EdgeError, match="device"):
        select_device(name)
