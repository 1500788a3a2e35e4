"""Benchmark: serial vs Ray (`--workers 2`, a local instance) on this machine.

Rows, each run serially (duotpu's default) and on a local Ray instance of 2 workers, cold
(fresh output folders, nothing cached), same inputs:
  (a) a mixed-precision search: the demo model (EfficientNet-Lite0, `agree>=0.99`) with --demo,
      else a small model with one INT8-sensitive layer (tests/tinymodels.py:outlier_onnx);
  (b) `build-many` of 6 recipes (torchvision models with random weights with --real, else
      6 variants of a tiny CNN);
  (c) `duotpu eval` of 200 images of a build: --eval-build DIR, the demo's with --demo, else a
      tiny build;
  (d) Ray's own overhead: starting and stopping the local instance, and 20 empty tasks.
Prints a table and writes it to bench/results/scale.md. Target: ≤ 0.6 × serial on 2 cores.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)
from duotpu.builder import pipeline
from duotpu.builder.many import build_many
from duotpu.compiler.executor import RayExecutor, Serial
from duotpu.config.recipe import load_recipe
from duotpu.core import images
from duotpu.eval.evaluate import evaluate_build

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))


def _tiny(onnx: Path, name: str, **over):
    from conftest import tiny_recipe

    return tiny_recipe(onnx, name=name, **over)


def mix_recipe(tmp: Path, demo: bool):
    if demo:
        r = load_recipe(HERE.parent / "recipes" / "efficientnet_lite0.toml")
        return r.with_overrides({"mix.target": "agree>=0.99", "quantize": ["int8"]}, "bench")
    import tinymodels

    onnx = tinymodels.outlier_onnx(tmp / "outlier.onnx")
    return _tiny(
        onnx,
        "outl",
        quantize=["int8"],
        **{"mix.count": 40, "calibration.count": 16, "mix.target": "agree>=0.95"},
    )


def many_recipes(tmp: Path, real: bool):
    if real:
        names = [
            "squeezenet1_1",
            "shufflenet_v2_x0_5",
            "mobilenet_v3_small",
            "mnasnet0_5",
            "resnet18",
            "regnet_x_400mf",
        ]
        base = load_recipe(HERE.parent / "recipes" / "efficientnet_lite0.toml").to_dict()
        from duotpu.config.recipe import recipe_from_dict

        out = []
        for n in names:
            d = {**base, "name": n, "model": {"source": f"torchvision:{n}"}}
            d["calibration"] = {**d["calibration"], "count": 32}
            out.append(recipe_from_dict(d, "bench"))
        return out
    import tinymodels

    onnx = tinymodels.tiny_onnx(tmp / "tiny.onnx")
    return [_tiny(onnx, f"t{i}", **{"calibration.seed": i}) for i in range(6)]


def timed(fn) -> tuple[float, object]:
    t0 = time.monotonic()
    value = fn()
    return time.monotonic() - t0, value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", action="store_true", help="the demo model's mix search and eval")
    ap.add_argument("--real", action="store_true", help="6 torchvision models for build-many")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--eval-build", help="a build folder to evaluate for (c), e.g. the demo's")
    ap.add_argument("--out", default=str(HERE / "results" / "scale.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="duotpu-scale-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.monotonic()
        ex = RayExecutor(workers=args.workers)
        start = time.monotonic() - t0
        empty, _ = timed(lambda: ex.map(abs, list(range(20))))

        def both(label: str, run) -> None:
            for name, executor in (("serial", Serial()), (f"Ray, {args.workers} workers", ex)):
                folder = tmp / f"{label[:3]}-{name[:3]}"
                shutil.rmtree(folder, ignore_errors=True)
                secs, _ = timed(lambda e=executor, f=folder: run(e, f))
                rows.append((label, name, secs))
                print(f"{label}: {name} {secs:.1f} s", flush=True)

        mix = mix_recipe(tmp, args.demo)
        both(
            f"(a) mix search, {mix.name}",
            lambda e, f: pipeline.build(mix, f, executor=e),
        )
        recipes = many_recipes(tmp, args.real)
        both(
            f"(b) build-many, {len(recipes)} recipes",
            lambda e, f: build_many(recipes, out_root=f, executor=e),
        )
        if args.eval_build or args.demo:
            build_dir = Path(args.eval_build or HERE.parent / "build" / "efficientnet_lite0")
        else:
            import tinymodels

            build_dir = tmp / "evalbuild"
            onnx = tinymodels.tiny_onnx(tmp / "tiny-eval.onnx")
            pipeline.build(_tiny(onnx, "ev"), build_dir)
        photos = tmp / "photos"
        images.write_calibration_set(photos, 200, seed=11)
        both(
            f"(c) eval, 200 images, {build_dir.name}",
            lambda e, f: evaluate_build(build_dir, photos, executor=e, layers=0),
        )
        ex.close()
        stop = time.monotonic()
        ex2 = RayExecutor(workers=args.workers)
        ex2.close()
        cycle = time.monotonic() - stop
    lines = [
        f"Serial vs a local Ray instance of {args.workers} workers (`bench/scale.py"
        + (" --demo" if args.demo else "")
        + (" --real" if args.real else "")
        + (f" --eval-build {args.eval_build}" if args.eval_build else "")
        + "`), cold, this machine:",
        "",
        "| work | serial s | Ray s | Ray / serial | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for i in range(0, len(rows), 2):
        (label, _, s), (_, _, p) = rows[i], rows[i + 1]
        lines.append(f"| {label} | {s:.1f} | {p:.1f} | {p / s:.2f} | ≤ 0.60 |")
    lines += [
        "",
        f"Ray's own overhead: starting the local instance {start:.1f} s (first start in this "
        f"process; a start and stop later {cycle:.1f} s), 20 empty tasks {empty:.2f} s.",
    ]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
