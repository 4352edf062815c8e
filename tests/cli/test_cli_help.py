"""``--help`` of every command: each option explained, its default shown once, no RST."""

from __future__ import annotations

import argparse
import re

import pytest

from aensae import cli


def _commands() -> dict[str, argparse.ArgumentParser]:
    """Every parser of the command line by its command words ("" is ``aensae`` itself)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(prefix: str, parser: argparse.ArgumentParser) -> None:
        found[prefix] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(f"{prefix} {name}".strip(), sub)

    walk("", cli.build_parser())
    return found


COMMANDS = _commands()
RST = re.compile(r"``|:(func|class|mod|data|meth|attr|math):`|`~")


def test_every_command_is_covered() -> None:
    assert {"train", "geometry", "reproduce", "figures", "bench solvers", "bench train",
            "bench geometry"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_explains_each_option_once_without_markup(command: str) -> None:
    parser = COMMANDS[command]
    text = parser.format_help()
    assert not RST.search(text), RST.search(text).group(0)
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                               argparse._SubParsersAction)):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and len(action.help) > 8, f"{command} {name}: no help"
        shown = formatter._get_help_string(action) % {**vars(action), "prog": parser.prog}
        assert shown.count("default:") <= 1, f"{command} {name}: default stated twice: {shown}"
        has_default = action.default not in (None, [], False, argparse.SUPPRESS)
        if has_default and action.option_strings and not action.required:
            assert "(default: " in shown, f"{command} {name}: default not shown"
