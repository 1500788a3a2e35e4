"""Benchmark: duotpu's mixed-precision search vs tpu_mlir's own fast_search on the demo model.

(a) `duotpu build --target TARGET`: the fewest BF16 layers for INT8 to reach the task target,
    measured on the validation crops (decisive top-1 agreement with fp32, or mean cosine);
(b) tpu_mlir's `run_calibration --search fast_search` (cosine-driven; run inside (a)), its table
    built with `duotpu build --mix-qtable` and measured with the same metric on the same images.
Prints a table and writes bench/results/mix.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path


from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)

HERE = Path(__file__).parent


def build(recipe: str, out: Path, extra: list[str]) -> tuple[dict, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "duotpu.cli", "build", "--recipe", recipe,
                           "--out", str(out), "--json", *extra], capture_output=True, text=True)
    secs = time.monotonic() - t0
    if not (out / "manifest.json").exists():
        sys.exit(f"build failed:\n{proc.stderr[-3000:]}")
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    mix = next(s for s in stages if s["name"] == "mix")["result"]
    mix_secs = next(s for s in stages if s["name"] == "mix")["seconds"]
    return mix, mix_secs if mix_secs else secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="agree>=0.99")
    ap.add_argument("--out", default=str(HERE / "results" / "mix.md"))
    ap.add_argument("--recipe", help="another model's recipe (default: the demo's), e.g. "
                                     "build/bench-mix/mnv3_photos.toml from bench/mnv3_photos.py")
    args = ap.parse_args()
    recipe = args.recipe or str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml")
    model = Path(recipe).stem
    base = Path("build/mix-bench") / model
    ours, our_secs = build(recipe, base / "duotpu", ["--target", args.target])
    # tpu_mlir's fast_search ran inside the search (its table is kept in the mix stage folder)
    fs_dir = base / "duotpu" / "work" / "mix" / "fast_search"
    qtable = base / "fast_search.qtable"
    shutil.copyfile(fs_dir / "fast_search.qtable", qtable)
    theirs, _ = build(recipe, base / "fast_search",
                      ["--target", args.target, "--mix-qtable", str(qtable)])
    rows = ours["rows"]
    pick = rows[ours["chosen"]]
    fs = theirs["rows"][theirs["chosen"]]
    bf16 = next((r for r in rows if r["all_bf16"]), None)
    lines = [f"# Mixed precision on {model} (cv180x), target {args.target}, "
             f"{time.strftime('%Y-%m-%d')}", "",
             "| model | BF16 layers | metric | meets | ION | search time |",
             "| --- | ---: | ---: | --- | ---: | ---: |",
             f"| pure INT8 | 0 | {rows[0]['metric']:.4f} | {rows[0]['meets']} | "
             f"{rows[0]['ion_mb']:.2f} MB | |",
             f"| duotpu mix | {pick['n_bf16']} | {pick['metric']:.4f} | {pick['meets']} | "
             f"{pick['ion_mb']:.2f} MB | {our_secs:.0f} s |",
             f"| tpu_mlir fast_search (expected_cos 0.995, its table built as is) | {fs['n_bf16']} | "
             f"{fs['metric']:.4f} | {fs['meets']} | {fs['ion_mb']:.2f} MB | (part of the above) |"]
    if bf16:
        lines.append(f"| pure BF16 | all | {bf16['metric']:.4f} | {bf16['meets']} | "
                     f"{bf16['ion_mb']:.2f} MB | |")
    lines += ["", "duotpu search steps: " + "; ".join(
        f"{r['label']} → {r['metric']:.4f}" for r in rows), "",
        f"duotpu's BF16 layers: {', '.join(pick['layers']) or '(none)'}", "",
        f"fast_search's BF16 layers: {', '.join(fs['layers'])}"]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
