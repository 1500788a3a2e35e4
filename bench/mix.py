"""Benchmark: duotpu's mixed-precision search vs tpu_mlir's own fast_search.

One `duotpu build --target TARGET` runs both: tpu_mlir's cosine-driven
`run_calibration --search fast_search` (expected_cos = the target for `cos>=X`, else 0.995),
whose table duotpu builds and measures as one candidate, and duotpu's region search (sensitivity
of contiguous regions by the task metric, greedy union, bisection trim). All candidates are real
cvimodels measured with the same metric on the same validation images.
Prints a table and writes bench/results/mix.md (or --out).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)

HERE = Path(__file__).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="agree>=0.95")
    ap.add_argument("--out", default=str(HERE / "results" / "mix.md"))
    ap.add_argument("--recipe", help="another model's recipe (default: the demo's), e.g. "
                                     "build/bench-mix/mnv3_photos.toml from bench/mnv3_photos.py")
    args = ap.parse_args()
    recipe = args.recipe or str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml")
    model = Path(recipe).stem
    out = Path("build/mix-bench") / model / "duotpu"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "duotpu.cli", "build", "--recipe", recipe,
                           "--out", str(out), "--json", "--target", args.target],
                          capture_output=True, text=True)
    if not (out / "manifest.json").exists():
        sys.exit(f"build failed:\n{proc.stderr[-3000:]}")
    stage = next(s for s in json.loads((out / "manifest.json").read_text())["stages"]
                 if s["name"] == "mix")
    res, secs = stage["result"], stage["seconds"] or time.monotonic() - t0
    rows = res["rows"]
    fs = next((r for r in rows if r["label"] == "tpu_mlir fast_search"), None)
    own = [r for r in rows[1:] if r is not fs and not r["all_bf16"]]  # the region search's
    own_best = min((r for r in own if r["meets"]), key=lambda r: (r["n_bf16"], -r["metric"]),
                   default=max(own, key=lambda r: r["metric"]) if own else None)
    bf16 = next((r for r in rows if r["all_bf16"]), None)
    fs_secs = res.get("fast_search_seconds", 0.0)

    def line(name: str, r: dict | None, when: str = "") -> str:
        if r is None:
            return f"| {name} | — | — | — | — | {when} |"
        n = "all" if r["all_bf16"] else str(r["n_bf16"])
        return (f"| {name} | {n} | {r['metric']:.4f} | {r['meets']} | {r['ion_mb']:.2f} MB | "
                f"{when} |")

    lines = [f"# Mixed precision on {model} (cv180x), target {args.target}, "
             f"{time.strftime('%Y-%m-%d')}", "",
             "| model | BF16 layers | metric | meets | ION | search time |",
             "| --- | ---: | ---: | --- | ---: | ---: |",
             line("pure INT8", rows[0]),
             line("duotpu region search (its fewest layers that meet)", own_best,
                  f"{secs - fs_secs:.0f} s ({len(own)} builds)"),
             line("tpu_mlir fast_search (its table, built and measured)",
                  fs or (rows[0] if fs_secs else None),
                  f"{fs_secs:.0f} s"),
             line("duotpu's choice (all candidates)", rows[res["chosen"]], f"{secs:.0f} s"),
             line("pure BF16", bf16), "",
             "Every candidate (in the order built):", "",
             "| # | candidate | BF16 layers | metric | meets | ION |",
             "| ---: | --- | ---: | ---: | --- | ---: |"]
    lines += [f"| {i + 1} | {r['label']} | {'all' if r['all_bf16'] else r['n_bf16']} | "
              f"{r['metric']:.4f} | {r['meets']} | {r['ion_mb']:.2f} MB |"
              for i, r in enumerate(rows)]
    lines += ["", f"duotpu's BF16 layers: {', '.join(rows[res['chosen']]['layers']) or '(none)'}",
              "", f"fast_search's BF16 layers: {', '.join(fs['layers']) if fs else '(none)'}"]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
