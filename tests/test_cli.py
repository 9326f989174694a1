"""The ``scoredyn`` dispatcher: every capability registers its command and documents its options."""

from __future__ import annotations

import pytest

from scoredyn.cli import build_parser, main

COMMANDS = ("train", "sample", "study", "analytic-sample", "invert", "likelihood", "analyse")


def test_every_command_is_registered_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--help"])
    assert e.value.code == 0
    listing = capsys.readouterr().out
    for name in COMMANDS:
        assert name in listing, f"scoredyn --help does not list {name!r}"
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0 and "--" in capsys.readouterr().out, f"scoredyn {name} --help shows no options"


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["no-such-command"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
