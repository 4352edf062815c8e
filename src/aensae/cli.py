"""The ``aensae`` command line.

Each command lives in its own module, which exposes ``register(top, bench)``: ``top`` is
the top-level sub-parser group (``aensae train``, ``aensae reproduce`` ...) and ``bench``
the group under ``aensae bench`` (``aensae bench solvers`` ...). A registered parser sets
``func`` to a callable taking the parsed namespace and returning an exit code. Command
modules import their heavy dependencies inside ``func`` so that ``aensae --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from aensae import __version__

#: Modules that register sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "aensae.benchmarks.solver_bench",
    "aensae.benchmarks.train_cmd",
    "aensae.benchmarks.geometry_cmd",
    "aensae.benchmarks.reproduce_cmd",
    "aensae.benchmarks.llm_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser from :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(
        prog="aensae",
        description="Adaptive elastic-net SAEs tested against exact, certified sparse coding.",
    )
    parser.add_argument("--version", action="version", version=f"aensae {__version__}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    top.required = True
    bench_parser = top.add_parser("bench", help="performance benchmarks (ratios vs anchors)")
    bench = bench_parser.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(top, bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aensae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished results are kept, rerun the command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
