"""The ``scoredyn`` command line: one sub-command per capability, each registered by its own module.

Every error is reported as one line on stderr (``scoredyn <command>: error: ...``) with exit code 2:
bad arguments, bad input files, file-system failures (a read-only folder, a full disk, a file where a
folder is expected) and anything else a command raises. ``--debug`` (before or after the command)
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import NoReturn, Sequence

# (module, function): each function takes the argparse sub-parsers object and adds its commands,
# setting ``func`` (a callable of the parsed namespace returning an exit code) as a default.
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("scoredyn.train.cli", "register"),  # train, sample
    ("scoredyn.studies.cli", "register"),  # study
    ("scoredyn.analytic.cli", "register"),  # analytic-sample
    ("scoredyn.external.cli", "register"),  # invert, likelihood
    ("scoredyn.analyse.cli", "register"),  # analyse
)

EXIT_ERROR = 2
"""Exit code of every reported error (argparse's own usage errors use it too)."""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``prog: error: message; see prog --help``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="scoredyn",
        description="Score-based diffusion models as dynamical systems.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, fn in _COMMANDS:
        getattr(importlib.import_module(module_name), fn)(sub)
    for command in sub.choices.values():  # also accepted after the command
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser


def describe(e: BaseException) -> str:
    """One line saying what went wrong: the message of an expected error, the kind of an unexpected one."""
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename is not None else ""
        also = f" -> {e.filename2}" if getattr(e, "filename2", None) is not None else ""
        text = f"{e.strerror}{where}{also}"
    elif isinstance(e, (ValueError, OSError, RuntimeError)) or type(e).__name__ == "SafetensorError":
        text = str(e) or type(e).__name__
        if type(e).__name__ == "SafetensorError":
            text = f"cannot read a safetensors file: {text}"
    else:
        text = f"unexpected {type(e).__name__}: {e} (rerun with --debug for the traceback)"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"scoredyn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI reports every failure in one line (--debug: traceback)
        if args.debug:
            traceback.print_exc()
        print(f"scoredyn {args.command}: error: {describe(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
