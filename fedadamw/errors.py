"""The errors of the ``fedadamw`` package.

Every error the package raises on purpose is a ``FedAdamWError`` carrying an ``ErrorCode``::

    FedAdamWError
    ├── InvalidArgumentError (also a ValueError): a value out of range or of the wrong shape
    ├── LayoutMismatchError: a model or vector that does not match the flat layout
    ├── UnknownNameError (also a KeyError): an unknown task, algorithm or block mode
    ├── TaskError: a task that cannot be loaded or built
    └── DivergedError: local training produced a non-finite loss
"""

from __future__ import annotations

import enum

__all__ = [
    "DivergedError",
    "ErrorCode",
    "FedAdamWError",
    "InvalidArgumentError",
    "LayoutMismatchError",
    "TaskError",
    "UnknownNameError",
]


class ErrorCode(enum.StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    LAYOUT_MISMATCH = "layout_mismatch"
    UNKNOWN_NAME = "unknown_name"
    TASK = "task"
    DIVERGED = "diverged"


class FedAdamWError(Exception):
    """Base of the package's errors; ``code`` says which kind."""

    code: ErrorCode = ErrorCode.INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(FedAdamWError, ValueError):
    code = ErrorCode.INVALID_ARGUMENT


class LayoutMismatchError(FedAdamWError):
    code = ErrorCode.LAYOUT_MISMATCH


class UnknownNameError(FedAdamWError, KeyError):
    code = ErrorCode.UNKNOWN_NAME


class TaskError(FedAdamWError):
    code = ErrorCode.TASK


class DivergedError(FedAdamWError):
    code = ErrorCode.DIVERGED
