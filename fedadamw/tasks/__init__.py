"""Tasks: the user's model and data, found by name."""

from __future__ import annotations

from fedadamw.tasks.base import (
    Batch,
    ClientData,
    ClientDataSpec,
    Evaluation,
    Task,
    TensorClientData,
)
from fedadamw.tasks.registry import ENTRY_POINT_GROUP, available_tasks, load_task

__all__ = [
    "ENTRY_POINT_GROUP",
    "Batch",
    "ClientData",
    "ClientDataSpec",
    "Evaluation",
    "Task",
    "TensorClientData",
    "available_tasks",
    "load_task",
]
