"""Every command-line option says what it does; a usage error is one line."""

from __future__ import annotations

import argparse

import pytest


def _parsers(p: argparse.ArgumentParser, name: str = "duotpu"):
    yield name, p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, q in a.choices.items():
                yield from _parsers(q, f"{name} {sub}")


def test_every_option_of_every_command_has_help():
    from duotpu.cli.main import build_parser

    missing = [
        f"{name} {a.option_strings[-1]}"
        for name, p in _parsers(build_parser())
        for a in p._actions
        if a.option_strings and a.help != argparse.SUPPRESS and not a.help
    ]
    assert not missing, missing


def test_a_usage_error_is_one_line_and_refused_formats_are_not_offered(capsys):
    from duotpu.cli.main import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["build", "m.onnx", "--chip", "cv190x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--chip" in err and "duotpu build --help" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "m.onnx", "--fuse-preprocess", "RGBA_PLANAR"])
    assert "RGBA_PLANAR" not in capsys.readouterr().err.split("choose from", 1)[1]
