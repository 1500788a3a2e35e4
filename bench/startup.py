"""Benchmark: how long tpu_mlir's Python tools take to start, plain and forked from duotpu's fork
server (docs/development.md, "The fork server").

Each tool is run twice over: with `--help`, which exits once its argument parser is built (the
imports at its top), and on a tiny model (a 3×32×32 convolution: transform, calibrate on two
samples, deploy INT8 for cv180x), where the time is almost all imports, the ones inside its
functions too (the ONNX front end). (a) plain: a new Python process, as the seed's command lines
start it (`DUOTPU_FORK_SERVER=0`); (b) forked: a fork of the server that imported those modules
once (started and waited for before the runs; its own start is the last line). Median of
--repeat runs each. Prints a table and writes it to bench/results/startup.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)
from duotpu.compiler import runner
from duotpu.compiler.env import tool_env
from duotpu.compiler.forkclient import stop_servers

HERE = Path(__file__).parent
TOOLS = ["model_transform", "run_calibration", "model_deploy"]
#: the file each tool writes from the tiny model
MADE = {
    "model_transform": "tiny.mlir",
    "run_calibration": "tiny_cali_table",
    "model_deploy": "tiny.cvimodel",
}


def _tiny_onnx(path: Path) -> None:
    """A 3×32×32 input through one 3×3 convolution and a ReLU."""
    weights = np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype("f4")
    w = numpy_helper.from_array(weights, "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 32, 32])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def _tiny_args(tool: str, src: Path, out: Path) -> list[str]:
    """The tool's command line on the tiny model (the files it reads are in ``src``, the MLIR's
    weights relative to it: the tools after the transform run there) writing into ``out``."""
    if tool == "model_transform":
        return ["--model_name", "tiny", "--model_def", str(src / "tiny.onnx"),
                "--input_shapes", "[[1,3,32,32]]", "--mlir", MADE[tool]]  # fmt: skip
    if tool == "run_calibration":
        return [str(src / MADE["model_transform"]), "--dataset", str(src / "samples"),
                "--input_num", "2", "-o", str(out / MADE[tool])]  # fmt: skip
    mlir, table = (str(src / MADE[t]) for t in TOOLS[:2])
    return ["--mlir", mlir, "--quantize", "INT8", "--chip", "cv180x",
            "--calibration_table", table, "--model", str(out / MADE[tool])]  # fmt: skip


def _median_seconds(tool: str, repeat: int, work: Path, tiny: Path | None) -> float:
    """Median time of ``repeat`` runs of ``tool``: on the tiny model in ``tiny``, or --help."""
    times = []
    for i in range(repeat):
        folder = work / f"{tool}-{i}"
        folder.mkdir(parents=True)
        args = _tiny_args(tool, tiny, folder) if tiny else ["--help"]
        cwd = tiny if tiny and tool != "model_transform" else folder
        times.append(runner.run_tool(tool, tool, args, cwd, folder / "log").seconds)
        if tiny and not (folder / MADE[tool]).is_file():
            raise SystemExit(f"{tool} wrote nothing in {folder}: read {folder / 'log'}")
        shutil.rmtree(folder)
    return statistics.median(times)


def _prepare(tiny: Path) -> None:
    """The tiny model, its samples, its MLIR and its calibration table (what each tool reads)."""
    (tiny / "samples").mkdir(parents=True)
    _tiny_onnx(tiny / "tiny.onnx")
    rng = np.random.default_rng(1)
    for i in range(2):
        np.savez(tiny / "samples" / f"{i}.npz", x=rng.random((1, 3, 32, 32), dtype="f4"))
    for tool in TOOLS[:2]:
        runner.run_tool(tool, tool, _tiny_args(tool, tiny, tiny), tiny, tiny / f"{tool}.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "startup.md"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work, tiny = Path(tmp) / "runs", Path(tmp) / "tiny"
        os.environ["DUOTPU_FORK_SERVER"] = "0"
        _prepare(tiny)
        plain = {t: _median_seconds(t, args.repeat, work, None) for t in TOOLS}
        plain_tiny = {t: _median_seconds(t, args.repeat, work, tiny) for t in TOOLS}
        os.environ["DUOTPU_FORK_SERVER"] = "1"
        t0 = time.monotonic()
        if not runner.start_fork_server(tool_env(), wait=True):
            raise SystemExit("the fork server did not start: run a build with --debug to see why")
        server_s = time.monotonic() - t0
        forked = {t: _median_seconds(t, args.repeat, work, None) for t in TOOLS}
        forked_tiny = {t: _median_seconds(t, args.repeat, work, tiny) for t in TOOLS}
        stop_servers()
    lines = [
        f"# tpu_mlir's tools started plain and from duotpu's fork server, median of {args.repeat}",
        "",
        "| tool | `--help` plain s | `--help` forked s | tiny model plain s "
        "| tiny model forked s | saved on the tiny model s |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {t} | {plain[t]:.2f} | {forked[t]:.2f} | {plain_tiny[t]:.2f} | "
            f"{forked_tiny[t]:.2f} | {plain_tiny[t] - forked_tiny[t]:.2f} |"
            for t in TOOLS
        ),
        "",
        f"Together on the tiny model: {sum(plain_tiny.values()):.1f} s plain, "
        f"{sum(forked_tiny.values()):.1f} s forked.",
        "",
        f"The fork server's own start (its imports, once per build; an export overlaps it): "
        f"{server_s:.2f} s.",
    ]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
