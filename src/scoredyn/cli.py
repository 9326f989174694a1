"""The ``scoredyn`` command line: one sub-command per capability, each registered by its own module."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# (module, function): each function takes the argparse sub-parsers object and adds its commands,
# setting ``func`` (a callable of the parsed namespace returning an exit code) as a default.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("scoredyn.train.cli", "register"),  # train, sample
    ("scoredyn.studies.cli", "register"),  # study
    ("scoredyn.analytic.cli", "register"),  # analytic-sample
    ("scoredyn.external.cli", "register"),  # invert, likelihood
    ("scoredyn.analyse.cli", "register"),  # analyse
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scoredyn",
        description="Score-based diffusion models as dynamical systems.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, fn in _COMMANDS:
        getattr(importlib.import_module(module_name), fn)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"scoredyn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
