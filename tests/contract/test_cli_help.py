"""Every option and argument of the three commands explains itself in ``--help``."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator

import pytest

from coordinator.cli import _parser as coordinator_parser
from edge_client.cli import _parser as edge_parser
from fedadamw.cli import _parser as fedadamw_parser


def _commands(
    parser: argparse.ArgumentParser, path: str
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("fedadamw", fedadamw_parser),
        ("fedadamw-coordinator", coordinator_parser),
        ("fedadamw-edge", edge_parser),
    ],
)
def test_every_option_has_help(name: str, build: Callable[[], argparse.ArgumentParser]) -> None:
    missing = []
    commands = list(_commands(build(), name))
    assert len(commands) > 1
    for path, parser in commands:
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
