"""Finding a task by name: built-in, ``module:attr``, or the ``fedadamw.tasks`` entry points.

``module:attr`` may name a ``Task`` instance, a ``Task`` subclass (instantiated with no
arguments) or a function of no arguments that returns a ``Task``. A package can publish
tasks under the entry-point group ``fedadamw.tasks`` with the same kinds of objects.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from fedadamw.errors import TaskError, UnknownNameError
from fedadamw.tasks.base import Task
from fedadamw.tasks.digits import digits_cnn, digits_vit

__all__ = ["ENTRY_POINT_GROUP", "available_tasks", "load_task"]

ENTRY_POINT_GROUP = "fedadamw.tasks"
_BUILTIN: dict[str, Callable[[], Task]] = {"digits-cnn": digits_cnn, "digits-vit": digits_vit}


def available_tasks() -> list[str]:
    """Built-in task names, then those published by entry points."""
    published = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return [*_BUILTIN, *(name for name in published if name not in _BUILTIN)]


def load_task(name: str) -> Task:
    """The task called ``name``.

    Raises:
        UnknownNameError: no built-in or published task has that name.
        TaskError: ``module:attr`` cannot be imported or is not a task.
    """
    if name in _BUILTIN:
        return _BUILTIN[name]()
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise TaskError(f"cannot load task {name!r}: {exc}") from exc
        return _as_task(obj, name)
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not look like a missing one
            raise TaskError(f"cannot load task {name!r} from {ep.value}: {exc}") from exc
        return _as_task(obj, name)
    raise UnknownNameError(
        f"unknown task {name!r}; available: {', '.join(available_tasks())}, "
        "or name your own as module:attr"
    )


def _as_task(obj: object, name: str) -> Task:
    if isinstance(obj, Task):
        task = obj
    elif isinstance(obj, type) and issubclass(obj, Task):
        task = obj()
    elif callable(obj):
        task = obj()
        if not isinstance(task, Task):
            raise TaskError(f"{name!r} returned {type(task).__name__}, not a fedadamw Task")
    else:
        raise TaskError(f"{name!r} is a {type(obj).__name__}, not a fedadamw Task")
    if not task.name:
        task.name = name
    return task
