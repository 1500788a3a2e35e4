"""The Python API behaves as the command line does by default."""

from __future__ import annotations

import inspect


def test_the_library_checks_the_fast_path_as_the_cli_does():
    from duotpu.cli.main import build_parser
    from duotpu.eval import evaluate

    # before: the library ran no check (check=0) where `duotpu eval` ran 2
    assert inspect.signature(evaluate.evaluate_build).parameters["check"].default == 2
    args = build_parser().parse_args(["eval", "build/x", "--images", "imgs"])
    assert args.check is None  # the CLI then takes the library's default


def test_the_worker_checks_its_loaded_module_more_than_once():
    from duotpu.compiler import worker

    # inputs 2, 18, 34, ... run on a fresh module too: state that shows late is caught
    assert 0 < worker.CHECK_EVERY <= 32
