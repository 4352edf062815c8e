"""What every ``aensae`` command shares on the command line: help layout and wording.

:class:`HelpFormatter` appends ``(default: X)`` once to each option that has a default
(none for required options, flags and options whose absence the help text explains);
:func:`plain` turns the reStructuredText of a module docstring into plain text for
``--help``; :func:`add_command` registers a sub-command with both.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

__all__ = ["HelpFormatter", "add_command", "plain"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` without ``(default: None)`` and flag defaults.

    The help text of an option never states its default itself; this formatter does,
    once. An option without a default (``None``) says in its help what its absence means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or action.required or action.default in (None, [])
                or action.default is argparse.SUPPRESS
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def plain(text: str | None) -> str | None:
    """Drop reStructuredText markup (roles, double backticks, ``::``) for ``--help``."""
    if text is None:
        return None
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return text.replace("::", ":")


def add_command(group: Any, name: str, *, help: str, doc: str | None = None
                ) -> argparse.ArgumentParser:
    """Add sub-command ``name`` to ``group`` with :class:`HelpFormatter` and a plain ``doc``."""
    return group.add_parser(name, help=help, description=plain(doc),
                            formatter_class=HelpFormatter)
