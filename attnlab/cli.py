"""The ``attnlab`` command.

Each subcommand lives in its own module, which defines

    def register(subparsers) -> argparse.ArgumentParser:
        p = subparsers.add_parser("name", help="one line for `attnlab --help`", ...)
        p.add_argument(...)
        p.set_defaults(func=run)       # run(args) -> int exit status
        return p

and is listed in :data:`COMMAND_MODULES`. Command modules should import heavy libraries
(torch, matplotlib) inside ``run`` so that ``attnlab --help`` stays instant.

User mistakes end with one line on stderr and a non-zero status, never a traceback:
argument errors (status 2, from argparse) and the ``ValueError`` / ``OSError`` that a
command raises for bad input (status 1). ``attnlab --debug ...`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from . import __version__

__all__ = ["COMMAND_MODULES", "build_parser", "command_group", "main"]

def command_group(subparsers, name: str, help: str, description: str | None = None):
    """The subcommands of ``attnlab NAME`` (``train``, ``demo``, ``experiment``), created on
    first use, so that several modules can add their tasks under one command."""
    existing = subparsers.choices.get(name)
    if existing is not None:
        tasks = getattr(existing, "_attnlab_tasks", None)
        if tasks is None:
            raise RuntimeError(f"command {name!r} is already registered without tasks")
        return tasks
    p = subparsers.add_parser(name, help=help, description=description or help)
    tasks = p.add_subparsers(title="tasks", dest=f"{name}_task", metavar="TASK", required=True)
    p._attnlab_tasks = tasks
    return tasks


#: Modules that provide a subcommand through ``register(subparsers)``, in --help order.
COMMAND_MODULES: tuple[str, ...] = (
    "attnlab.explain",
    "attnlab.translate",
    "attnlab.experiments.bahdanau_length",
    "attnlab.experiments.positions",
    "attnlab.vision",
    "attnlab.embed",
    "attnlab.viz_cli",
    "attnlab.curves",
    "attnlab.recommend",
    "attnlab.speech",
    "attnlab.summarize",
    "attnlab.bench.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) pointing to --help."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="attnlab",
        description="attnlab: attention mechanisms as the classic texts describe them.",
        epilog="Run 'attnlab COMMAND --help' for a command's options. New here? Try:\n"
        '  attnlab explain "The animal did not cross the street because it was too tired ."',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"attnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnlab`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        if isinstance(exc, BrokenPipeError):  # e.g. `attnlab explain ... | head`
            # Point stdout at devnull so the interpreter's final flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        message = str(exc) or type(exc).__name__
        print(f"attnlab {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"attnlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
