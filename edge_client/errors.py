"""The agent's errors, each with a code::

    EdgeError(code)
      STATE             the state directory is missing a file or holds a damaged one
      ALREADY_ENROLLED  enrolling into a directory that holds an enrollment
      INVALID_ARGUMENT  a bad flag or value
      ENROLLMENT        the coordinator refused the enrollment
      LIMIT             a round's configuration breaks this agent's limits (the round is
                        refused; the agent keeps running)
      STOPPED           local training stopped because the agent is shutting down

The message says what was wrong and what to do.
"""

from __future__ import annotations

import enum

__all__ = ["EdgeError", "ErrorCode"]


class ErrorCode(enum.StrEnum):
    STATE = "state"
    ALREADY_ENROLLED = "already_enrolled"
    INVALID_ARGUMENT = "invalid_argument"
    ENROLLMENT = "enrollment"
    LIMIT = "limit"
    STOPPED = "stopped"


class EdgeError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
