"""Benchmark: what each calibration knob costs (calibration seconds) and buys (fidelity of the
INT8 model to fp32), on the demo model (EfficientNet-Lite0, pretrained).

From the default (100 images, kl, tune_num 5) one knob at a time: the image count
(`calibration.count`), tpu_mlir's threshold tuning (`calibration.tune_num`; 0 skips it) and the
method (`calibration.method`). Each row is a cold INT8 build of its own; fidelity is measured
like bench/fidelity.py: N crops and flips of the shipped photos with a seed (2026) other than the
calibration crops', on the fast path (bit-exact with the simulator for INT8). Prints a table and
writes bench/results/calibration.md.

    .venv/bin/python bench/calibration.py [--images 200] [--workers N]

`--zoo NAME` runs the same study on a row of bench/zoo.py instead (e.g. `dbnet_lite_640`, the
640×640 text detector, where calibration dominates the build): fidelity is then the output
cosine to fp32 (all outputs, per image) on held-out crops; results in
bench/results/calibration_NAME.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)
from duotpu.builder import pipeline
from duotpu.compiler.executor import executor
from duotpu.config.recipe import load_recipe
from duotpu.core import images, metrics
from duotpu.eval import evaluate
from duotpu.inference import runtime

HERE = Path(__file__).parent
DEFAULT = {"calibration.count": 100, "calibration.method": "kl", "calibration.tune_num": 5}
VARIANTS = [
    {},
    {"calibration.count": 25},
    {"calibration.count": 50},
    {"calibration.count": 200},
    {"calibration.tune_num": 0},
    {"calibration.tune_num": 10},
    {"calibration.method": "max"},
    {"calibration.method": "mse"},
    {"calibration.method": "percentile9999"},
]


def _recipe(zoo: str):
    if not zoo:
        return load_recipe(str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml"))
    import zoo as zoo_rows  # bench/zoo.py

    row = next(r for r in zoo_rows.ROWS if r.name == zoo)
    return zoo_rows.recipe_for(row, "cv180x", 100)


def _build(job: tuple[dict, str, str]) -> dict:
    """One cold INT8 build; its calibration seconds and the INT8 cvimodel."""
    over, out, zoo = job
    recipe = _recipe(zoo)
    recipe = recipe.with_overrides({**DEFAULT, **over, "quantize": ["int8"]}, "bench")
    shutil.rmtree(out, ignore_errors=True)
    r = pipeline.build(recipe, Path(out))
    secs = {s.name: s.seconds for s in r.stages}
    return {"cvimodel": str(r.models["int8"].cvimodel), "calibrate_s": secs["calibrate"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--workers", type=int, default=0, help="builds as parallel Ray tasks")
    ap.add_argument("--zoo", default="", help="a row of bench/zoo.py instead of the demo model")
    ap.add_argument("--only", default="", help="variant numbers to run (0 = the default), e.g. 0,1")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    args.out = args.out or str(
        HERE / "results" / (f"calibration_{args.zoo}.md" if args.zoo else "calibration.md")
    )
    variants = [
        v for i, v in enumerate(VARIANTS) if not args.only or str(i) in args.only.split(",")
    ]
    with tempfile.TemporaryDirectory(prefix="duotpu-calib-") as tmp_s:
        tmp = Path(tmp_s)
        crops = images.random_crops(
            images.calibration_photos() + [("chelsea", images.builtin_photo("chelsea"))],
            args.images,
            seed=2026,
        )
        jobs = [(v, str(tmp / f"b{i}"), args.zoo) for i, v in enumerate(variants)]
        with executor(args.workers) as ex:
            outcomes = ex.map(_build, jobs, labels=[str(v or "default") for v in variants])
        rows = []
        fp32: Any = None
        for v, o in zip(variants, outcomes):
            if o.value is None:
                rows.append((v, None, None, o.failed.error if o.failed else "failed"))
                continue
            m = runtime.open_model(o.value["cvimodel"])
            tensors = runtime.tensors_for(m, [c for _, c in crops])
            if args.zoo:  # any model: the output cosine per image, all outputs together
                if fp32 is None:
                    fp32 = runtime.fp32_reference(m, tensors)
                got = runtime.infer(m, tensors, backend="mlir")
                cos = [
                    metrics.cosine(
                        np.concatenate([a.ravel() for a in f]),
                        np.concatenate([np.asarray(x).ravel() for x in g.values()]),
                    )
                    for f, g in zip(fp32, got)
                ]
                rows.append((v, o.value["calibrate_s"], cos, ""))
                continue
            if fp32 is None:
                fp32 = np.stack([r[0].reshape(-1) for r in runtime.fp32_reference(m, tensors)])
            q, secs = evaluate.timed_infer(m, tensors, "mlir")
            rows.append(
                (
                    v,
                    o.value["calibrate_s"],
                    metrics.compare("int8", fp32, q, args.margin, None, secs),
                    "",
                )
            )
    if args.zoo:
        emit(_zoo_table(args, rows), args.out)
        return 0
    lines = [
        f"Calibration knobs on EfficientNet-Lite0 INT8 (cv180x), {args.images} held-out crops "
        f"(seed 2026), decisive margin {args.margin} (`bench/calibration.py`"
        + (f" --workers {args.workers}" if args.workers else "")
        + "):",
        "",
        "| calibration | calibrate s | top-1 agree | decisive agree (n) | mean cosine | "
        "worst cosine | mean KL |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for v, cal_s, m, err in rows:
        name = _variant_name(v)
        if m is None:
            lines.append(f"| {name} | — | failed: {err[:80]} | | | | |")
            continue
        lines.append(
            f"| {name} | {cal_s:.1f} | {m.top1_agree:.3f} | {m.decisive_top1_agree:.3f} "
            f"({m.decisive_n}) | {m.cosine_mean:.4f} | {m.cosine_worst:.4f} | {m.kl_mean:.4f} |"
        )
    emit(lines, args.out)
    return 0


def _variant_name(v: dict) -> str:
    cfg = {**DEFAULT, **v}
    return (
        f"{cfg['calibration.count']} images, {cfg['calibration.method']}, "
        f"tune_num {cfg['calibration.tune_num']}" + (" (default)" if not v else "")
    )


def _zoo_table(args: argparse.Namespace, rows: list) -> list[str]:
    lines = [
        f"Calibration knobs on {args.zoo} INT8 (cv180x, bench/zoo.py's recipe, random weights), "
        f"output cosine to fp32 on {args.images} held-out crops (seed 2026) "
        f"(`bench/calibration.py --zoo {args.zoo}`):",
        "",
        "| calibration | calibrate s | mean cosine | worst cosine |",
        "| --- | ---: | ---: | ---: |",
    ]
    for v, cal_s, cos, err in rows:
        name = _variant_name(v)
        if cal_s is None:
            lines.append(f"| {name} | — | failed: {err[:80]} | |")
            continue
        lines.append(f"| {name} | {cal_s:.1f} | {np.mean(cos):.4f} | {np.min(cos):.4f} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
