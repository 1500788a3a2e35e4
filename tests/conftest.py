"""Shared fixtures: small models, a built tiny model (the real compiler), CLI runner."""

from __future__ import annotations

import fcntl
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # makes `tinymodels:tiny_cnn` importable as a model factory

import tinymodels  # noqa: E402


def shared(tmp_path_factory, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(folder)`` once for the whole run: under pytest-xdist the workers share one folder,
    the first to get here makes it while the others wait, then read its pickled result. For
    builds that tests only read (a test that changes one copies it first)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    folder = base / f"shared-{name}"
    with open(base / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        saved = base / f"shared-{name}.pickle"
        if saved.is_file():
            return pickle.loads(saved.read_bytes())
        shutil.rmtree(folder, ignore_errors=True)  # left by a worker that died half-way
        folder.mkdir()
        result = make(folder)
        saved.write_bytes(pickle.dumps(result))
        return result


@pytest.fixture(scope="session")
def tiny_onnx_path(tmp_path_factory) -> Path:
    return shared(tmp_path_factory, "tiny-onnx", lambda d: tinymodels.tiny_onnx(d / "tiny.onnx"))


def tiny_recipe(onnx_path: Path, **over):
    """A recipe for the tiny ONNX model: 32x32 input, few calibration images."""
    from duotpu.config.recipe import recipe_from_dict, set_dotted

    data = {
        "name": "tiny",
        "model": {"source": str(onnx_path)},
        "inputs": [{"name": "input", "shape": [1, 3, 32, 32]}],
        "preprocess": {
            "resize": [40, 40],
            "resize_mode": "short_side",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        },
        "calibration": {"count": 8},
    }
    for k, v in over.items():
        set_dotted(data, k, v)
    return recipe_from_dict(data, "test")


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, tiny_onnx_path):
    """The tiny ONNX model built once for INT8 and BF16 (shared by read-only tests)."""
    from duotpu.builder import pipeline

    def make(out: Path):
        events: list = []
        result = pipeline.build(tiny_recipe(tiny_onnx_path), out, events=events.append)
        result.events = events
        return result

    return shared(tmp_path_factory, "tinybuild", make)


def det_recipe(source: str, size: int, name: str, **over):
    """A detector recipe: letterbox with gray 114, x = pixel / 255, INT8, few calibration
    images; ``over`` merges into tables or replaces top-level keys."""
    data = {
        "name": name,
        "task": "detect",
        "quantize": ["int8"],
        "model": {"source": source},
        "inputs": [{"name": "images", "shape": [1, 3, size, size]}],
        "preprocess": {
            "resize_mode": "letterbox",
            "pad_value": 114,
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
        },
        "calibration": {"count": 6},
        "test_image": "builtin:astronaut",
        "detect": {"conf": 0.5},
        "tolerance": {"int8": [0.6, 0.2], "verify_int8": 0.8},
    }
    for k, v in over.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    from duotpu.config.recipe import recipe_from_dict

    return recipe_from_dict(data, "test")


@pytest.fixture(scope="session")
def tiny_detector_build(tmp_path_factory):
    """A small detector with the original YOLOv5 head, built once for INT8."""
    from duotpu.builder import pipeline

    return shared(
        tmp_path_factory,
        "v5build",
        lambda out: pipeline.build(det_recipe("tinymodels:yolov5_classic", 128, "tv5"), out),
    )


@pytest.fixture(scope="session")
def variant_builds(tmp_path_factory, tiny_onnx_path):
    """The tiny model as a fused-preprocess INT8 cvimodel and a bs1+bs4 BF16 cvimodel."""

    return shared(tmp_path_factory, "variants", lambda out: _variants(tiny_onnx_path, out))


def _variants(tiny_onnx_path: Path, out: Path):
    from duotpu.builder import pipeline

    fused = pipeline.build(
        tiny_recipe(
            tiny_onnx_path,
            name="tfused",
            quantize=["int8"],
            **{"deploy.fuse_preprocess": True, "deploy.pixel_format": "RGB_PACKED"},
        ),
        out / "fused",
    )
    multi = pipeline.build(
        tiny_recipe(
            tiny_onnx_path, name="tmulti", quantize=["bf16"], **{"deploy.batch_sizes": [1, 4]}
        ),
        out / "multi",
    )
    return fused, multi


@pytest.fixture(scope="session")
def tiny_v8_build(tmp_path_factory):
    """An Ultralytics YOLOv8 architecture (random weights, 160x160) built once for INT8."""
    from duotpu.builder import pipeline

    # random weights in a deep network quantize far worse than trained ones: loose tolerances
    recipe = det_recipe(
        "tinymodels:lively_yolov8",
        160,
        "tv8",
        tolerance={"int8": [0.3, -1.0], "verify_int8": 0.3},
    )
    return shared(tmp_path_factory, "v8build", lambda out: pipeline.build(recipe, out))


@pytest.fixture(scope="session")
def tiny_pico_build(tmp_path_factory):
    """A PP-PicoDet-style detector (shared GFL head, 96×80: the last stride does not divide
    the width) built once for INT8."""
    from duotpu.builder import pipeline

    return pipeline.build(
        det_recipe(
            "tinymodels:picodet_like",
            96,
            "tpico",
            inputs=[{"name": "image", "shape": [1, 3, 96, 80]}],
            detect={"conf": 0.4},
        ),
        tmp_path_factory.mktemp("picobuild"),
    )


@pytest.fixture(scope="session")
def tiny_yolox_build(tmp_path_factory):
    """A YOLOX-style detector (decoupled head: box, objectness and class maps) built once for
    INT8."""
    from duotpu.builder import pipeline

    return pipeline.build(
        det_recipe("tinymodels:yolox_like", 96, "tyolox", detect={"conf": 0.3}),
        tmp_path_factory.mktemp("yoloxbuild"),
    )


@pytest.fixture(scope="session")
def tiny_scrfd_build(tmp_path_factory):
    """An SCRFD-style face detector (scores, boxes and five landmarks per anchor) built once
    for INT8."""
    from duotpu.builder import pipeline

    return pipeline.build(
        det_recipe(
            "tinymodels:scrfd_like",
            96,
            "Face_SCRFD",  # capitals: the files beside the cvimodel keep them (the model's
            # own name is the compiler's lower-case one)
            inputs=[{"name": "input", "shape": [1, 3, 96, 96]}],
            detect={"conf": 0.3},
        ),
        tmp_path_factory.mktemp("scrfdbuild"),
    )


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, fresh: bool = False
) -> subprocess.CompletedProcess:
    """Run the real `duotpu` command: its `main` in this process, with the working folder,
    environment, standard output and error of a run of its own (a process start and duotpu's
    imports cost seconds a call); ``fresh``: in a child process, for what only a process of its
    own shows (output that C libraries write to the file descriptors, exit by a signal)."""
    if fresh:
        e = dict(os.environ)
        e["PYTHONPATH"] = os.pathsep.join([str(TESTS), e.get("PYTHONPATH", "")])
        if env:
            e.update(env)
        proc = subprocess.run(
            [sys.executable, "-m", "duotpu.cli", *args],
            cwd=cwd,
            env=e,
            capture_output=True,
            text=True,
            timeout=900,
        )
    else:
        proc = _in_process(list(args), cwd, env or {})
    if "--json" not in args:
        fits_100_columns(proc.stdout)
    return proc


def _in_process(args: list[str], cwd: Path | None, env: dict) -> subprocess.CompletedProcess:
    import contextlib
    import io

    from duotpu.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    here, saved = os.getcwd(), dict(os.environ)
    try:
        if cwd is not None:
            os.chdir(cwd)
        os.environ.update(env)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["duotpu", *args], code, out.getvalue(), err.getvalue())


def fits_100_columns(text: str) -> None:
    """Every table line of a command's output fits 100 columns, and no table cuts a cell or
    header short (rich's "…")."""
    for line in text.splitlines():
        if any(c in line for c in "│┃┏┡└┗━─"):
            assert len(line) <= 100, f"{len(line)} columns: {line}"
            assert not re.search(r"…\s*[│┃]", line), f"a cut cell: {line}"


def pytest_collection_modifyitems(items):
    """tests/unit/ is the unit tier: no compiler, no processes, seconds (`make test-unit`)."""
    for item in items:
        if "tests/unit/" in str(item.fspath):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (Debian's, installed by `make test`), driven over its DevTools pipe."""
    sys.path.insert(0, str(TESTS.parent / "scripts"))
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    with Browser() as b:
        yield b
