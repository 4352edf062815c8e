"""The ``aensae`` command line: parsing only.

Each command lives in its own module of this package (``aensae bench ...`` in
:mod:`aensae.cli.bench`), which exposes ``register(top, bench)``: ``top`` is
the top-level sub-parser group (``aensae train``, ``aensae reproduce`` ...) and ``bench``
the group under ``aensae bench`` (``aensae bench solvers`` ...). A registered parser sets
``func`` to a callable taking the parsed namespace and returning an exit code. Command
modules import their heavy dependencies inside ``func`` so that ``aensae --help`` is fast;
the work itself is a function of a typed config object outside this package
(:class:`~aensae.experiments.spiked.train_run.TrainJob`,
:class:`~aensae.experiments.spiked.geometry.GeometryJob`,
:class:`~aensae.llm.training.TrainRun`, :class:`~aensae.llm.eval_run.EvalRun`,
:class:`~aensae.llm.cache.HarvestConfig`, a grid config), and nothing below this package
sees an ``argparse.Namespace``.

Errors: a handler raises :class:`aensae._validation.InputError` for bad input (a value,
a missing or damaged file, an unavailable device, an unwritable output folder), with a
message naming the option or key as the user wrote it; :func:`main` prints it as one
line, ``aensae <command>: error: <message>``, and returns 2, the status argparse uses
for its own usage errors. Any other exception is a bug and keeps its traceback. Ctrl-C
prints one line and returns 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aensae import __version__
from aensae._validation import InputError
from aensae.cli._options import HelpFormatter

#: Modules that register sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "aensae.cli.bench",
    "aensae.cli.train",
    "aensae.cli.geometry",
    "aensae.cli.reproduce",
    "aensae.cli.llm",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser from :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog="aensae",
        description="Adaptive elastic-net SAEs tested against exact, certified sparse coding.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aensae {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    bench_parser = top.add_parser("bench", help="performance benchmarks (ratios vs anchors)",
                                  formatter_class=HelpFormatter)
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(top, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aensae`` console script; returns the exit status.

    0 on success, 2 for bad input (one line on stderr; argparse's usage errors exit 2
    through ``SystemExit`` before a handler runs), 130 after Ctrl-C.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command = " ".join(c for c in (args.command, getattr(args, "bench", None),
                                    getattr(args, "llm_command", None)) if c)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        message = " ".join(str(err).split())  # one line, whatever the message holds
        print(f"aensae {command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are kept, rerun the command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
