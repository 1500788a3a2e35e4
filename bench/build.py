"""Benchmark: the seed's hand workflow vs `duotpu build`, cold and warm, on the demo model.

(a) hand: the compiler commands run directly, one after another, as a user would type them
    (model_transform → run_calibration → model_deploy INT8 → model_deploy BF16), on an ONNX file
    and a calibration folder prepared beforehand (not timed);
(b) duotpu cold: `duotpu build` of the demo recipe in an empty folder (export included);
(c) duotpu warm: the same build again after changing only the INT8 tolerance.

Prints a table and writes it to bench/results/build.md. Run: `make bench` or
`.venv/bin/python bench/build.py [--calib-count 100] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from duotpu import compiler
from duotpu.builder.export import export_onnx
from duotpu.config.recipe import load_recipe
from duotpu.core import images
from duotpu.core.preprocess import resize_dims, tpu_mean_scale

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402


def hand_env() -> dict[str, str]:
    """The tools' environment as a user typing the commands has it: OpenMP's own wait policy
    (duotpu sets a passive one for the tools it runs side by side)."""
    env = compiler.tool_env()
    if "OMP_WAIT_POLICY" not in os.environ:
        env.pop("OMP_WAIT_POLICY", None)
    return env


def timed(argv, cwd, log):
    t0 = time.monotonic()
    with open(log, "w") as f:
        rc = subprocess.run(
            argv, cwd=cwd, env=hand_env(), stdout=f, stderr=subprocess.STDOUT
        ).returncode
    if rc:
        sys.exit(f"step failed: {' '.join(map(str, argv))} (see {log})")
    return time.monotonic() - t0


def hand_workflow(recipe, work: Path, calib_count: int) -> dict[str, float]:
    """The three compiler commands as the tutorials print them (our flags, same options)."""
    name = recipe.name
    onnx = export_onnx(recipe.model, recipe.inputs[0].shape, "input", work / f"{name}.onnx")
    imgs = work / "images"
    images.write_calibration_set(imgs, calib_count, recipe.calibration.seed)
    cat = images.resolve_image("builtin:chelsea", work)
    mean, scale = tpu_mean_scale(recipe.preprocess, 3)
    h, w = resize_dims(recipe.preprocess, recipe.inputs[0].shape)
    ws = work / "workspace"
    ws.mkdir()
    t = {}
    t["model_transform"] = timed(
        compiler.tool_argv(
            "model_transform",
            [
                "--model_name",
                name,
                "--model_def",
                str(onnx.onnx_path),
                "--input_shapes",
                "[[1,3,224,224]]",
                "--resize_dims",
                f"{h},{w}",
                "--keep_aspect_ratio",
                "--keep_ratio_mode",
                "short_side_scale",
                "--mean",
                mean,
                "--scale",
                scale,
                "--pixel_format",
                "rgb",
                "--test_input",
                str(cat),
                "--test_result",
                f"{name}_top_outputs.npz",
                "--tolerance",
                "0.99,0.99",
                "--mlir",
                f"{name}.mlir",
            ],
        ),
        ws,
        work / "transform.log",
    )
    t["run_calibration"] = timed(
        compiler.tool_argv(
            "run_calibration",
            [
                f"{name}.mlir",
                "--dataset",
                str(imgs),
                "--input_num",
                str(calib_count),
                "-o",
                f"{name}_cali_table",
            ],
        ),
        ws,
        work / "calibration.log",
    )
    for mode, tol in (("INT8", "0.85,0.45"), ("BF16", "0.95,0.85")):
        extra = ["--calibration_table", f"{name}_cali_table"] if mode == "INT8" else []
        t[f"model_deploy {mode}"] = timed(
            compiler.tool_argv(
                "model_deploy",
                [
                    "--mlir",
                    f"{name}.mlir",
                    "--quantize",
                    mode,
                    "--chip",
                    "cv180x",
                    *extra,
                    "--test_input",
                    f"{name}_in_f32.npz",
                    "--test_reference",
                    f"{name}_top_outputs.npz",
                    "--tolerance",
                    tol,
                    "--correctness",
                    "0.99,0.90",
                    "--model",
                    f"{name}_{mode.lower()}.cvimodel",
                ],
            ),
            ws,
            work / f"deploy_{mode}.log",
        )
    return t


def duotpu_build(recipe_path: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    argv = [
        sys.executable,
        "-m",
        "duotpu.cli",
        "build",
        "--recipe",
        str(recipe_path),
        "--out",
        str(out),
        "--json",
        *extra,
    ]
    t0 = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if proc.returncode:
        sys.exit(f"duotpu build failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return dt, {s["name"]: (s["seconds"], s["cached"]) for s in manifest["stages"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-count", type=int, default=100)
    ap.add_argument("--out", default=str(HERE / "results" / "build.md"))
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds of hand, cold, warm; the median is shown"
    )
    args = ap.parse_args()
    recipe_path = Path(str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml"))
    recipe = load_recipe(recipe_path)
    rounds = []
    for k in range(args.repeat):  # interleaved, so a slow spell of the machine hits all three
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            (tmp / "hand").mkdir()
            hand = hand_workflow(recipe, tmp / "hand", args.calib_count)
            count = ["--calib-count", str(args.calib_count)]
            cold, cold_stages = duotpu_build(recipe_path, tmp / "duotpu", count)
            warm, warm_stages = duotpu_build(
                recipe_path, tmp / "duotpu", count + ["--tolerance-int8", "0.84,0.44"]
            )
        rounds.append((sum(hand.values()), cold, warm, hand, cold_stages, warm_stages))
        print(f"round {k + 1}: hand {rounds[-1][0]:.1f} s, cold {cold:.1f} s, warm {warm:.1f} s")
    # the round whose cold/hand ratio is the median: its steps and stages are shown
    rounds.sort(key=lambda r: r[1] / r[0])
    hand_total, cold, warm, hand, cold_stages, warm_stages = rounds[len(rounds) // 2]
    ratios = [r[1] / r[0] for r in rounds]
    lines = [
        f"# duotpu build benchmark — demo model (EfficientNet-Lite0, cv180x, INT8 + BF16, "
        f"{args.calib_count} calibration images)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, tpu_mlir {compiler.versions()['tpu_mlir']}; "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| run | seconds | vs hand | target |",
        "| --- | ---: | ---: | --- |",
        f"| (a) hand workflow: {' → '.join(hand)} | {hand_total:.1f} | 1.00 | |",
        f"| (b) duotpu build, cold (export included) | {cold:.1f} | {cold / hand_total:.2f} | "
        f"≤ 0.90 × hand |",
        f"| (c) duotpu build, warm (INT8 tolerance changed) | {warm:.1f} | "
        f"{warm / hand_total:.2f} ({warm / cold:.2f} × cold) | ≤ 0.20 × cold |",
        "",
        f"The median of {len(rounds)} interleaved rounds (hand, cold, warm), by cold ÷ hand; "
        f"that ratio ranged {min(ratios):.2f}–{max(ratios):.2f}.",
        "",
        "Hand steps: " + ", ".join(f"{k} {v:.1f} s" for k, v in hand.items()) + ".",
        "",
        "duotpu cold stages: "
        + ", ".join(f"{k} {v[0]:.1f} s" for k, v in cold_stages.items())
        + ".",
        "",
        "duotpu warm: re-ran "
        + (", ".join(k for k, v in warm_stages.items() if not v[1]) or "nothing")
        + "; the rest was cached.",
    ]
    emit(lines, args.out)
    verdict_cold = cold <= 0.9 * hand_total
    verdict_warm = warm <= 0.2 * cold
    print(
        f"cold target {'met' if verdict_cold else 'MISSED'}, "
        f"warm target {'met' if verdict_warm else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
