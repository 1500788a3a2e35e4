"""Benchmark: INT8 with optimized weight rounding (`--rounding optimized`) against tpu_mlir's
round-to-nearest, side by side on the same calibration images.

Each model is built INT8 twice (the same recipe, `calibration.rounding` nearest and optimized, in
one work folder: the export, transform and calibration are shared) and evaluated on held-out
images: N random crops and flips of the built-in photos with seed 2026 (the calibration set uses
seed 0, as in bench/fidelity.py), by decisive top-1 agreement with fp32, mean / worst cosine and
mean KL; the rounding's own cost (seconds, per layer) and its per-layer output error come from
the build's `rounding.json`. Prints a table and writes bench/results/rounding.md.

Run: `.venv/bin/python bench/rounding.py [--models efficientnet_lite0,mnv2_photos] [--images 200]`
(`mnv2_photos` is trained by `bench/mnv3_photos.py --arch mobilenet_v2 --epochs 6` first: ~10 min).
`--mix-target 'cos>=0.995'` also runs the mixed-precision search from each rounding;
`--detector` adds bench/detect.py's trained YOLOv8n (mAP against labels and fp32).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402
from duotpu.builder import pipeline  # noqa: E402
from duotpu.config.recipe import load_recipe, set_dotted  # noqa: E402
from duotpu.core import images  # noqa: E402
from fidelity import evaluate_build  # noqa: E402

WORK = Path("build/bench-rounding")


#: models trained by bench/mnv3_photos.py (`--arch`), read from their recipe files
TRAINED = {"mnv2_photos": "mobilenet_v2", "mnv3_photos": "mobilenet_v3_small"}


def recipe_for(model: str, rounding: str):
    """The demo recipe for ``efficientnet_lite0``; the recipe bench/mnv3_photos.py wrote for a
    network it trained (``mnv2_photos``, ``mnv3_photos``); torchvision's own weights otherwise."""
    if model == "efficientnet_lite0":
        base = load_recipe(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml")
        data = base.to_dict()
    elif model in TRAINED:
        path = Path("build/bench-mix") / f"{model}.toml"
        if not path.is_file():
            raise SystemExit(f"{path}: run bench/mnv3_photos.py --arch {TRAINED[model]} first")
        data = load_recipe(path).to_dict()
        data["mix"] = {}
    else:
        data = {
            "name": model,
            "model": {"source": f"torchvision:{model}", "weights": "DEFAULT"},
            "inputs": [{"name": "input", "shape": [1, 3, 224, 224]}],
            "preprocess": {
                "resize": [256, 256],
                "resize_mode": "short_side",
                "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225],
            },
        }
    set_dotted(data, "quantize", ["int8"])
    set_dotted(data, "calibration.rounding", rounding)
    from duotpu.config.recipe import recipe_from_dict

    return recipe_from_dict(data, f"bench/rounding.py {model}")


def held_out(n: int) -> list[Path]:
    folder = WORK / "images"
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != n:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, crop in images.random_crops(
            images.calibration_photos() + [("chelsea", images.builtin_photo("chelsea"))],
            n,
            seed=2026,
        ):
            images.save_image(folder / f"{name}.jpg", crop)
    return sorted(folder.glob("*.jpg"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--out", default=str(HERE / "results" / "rounding.md"))
    ap.add_argument(
        "--mix-target",
        default="",
        help="also search the BF16 layers each rounding needs to meet this target "
        "(e.g. 'cos>=0.995'), INT8 + BF16 builds in the same work folder",
    )
    ap.add_argument(
        "--detector",
        action="store_true",
        help="also the trained YOLOv8n of bench/detect.py (trains it first: ~20 min)",
    )
    ap.add_argument("--detector-epochs", type=int, default=30)
    args = ap.parse_args()
    paths = held_out(args.images)
    rows = []
    mixes = []
    models = [m for m in args.models.split(",") if m]
    for model in models:
        shutil.rmtree(WORK / model, ignore_errors=True)  # every stage timed, none cached
        for how in ("nearest", "optimized"):
            out = WORK / model / how
            t0 = time.monotonic()
            r = pipeline.build(recipe_for(model, how), out, WORK / model / "work")
            built = time.monotonic() - t0
            m = evaluate_build(out, paths, args.margin)["int8"]
            cost = ""
            stage = next((s for s in r.stages if s.name == "round"), None)
            if stage is not None and not stage.cached:
                layers = json.loads((stage.folder / "rounding.json").read_text())
                # today's layer: round-to-nearest weights, the table's threshold
                today = [x.get("mse_table") or x["mse_nearest"] for x in layers]
                better = sum(x["mse_optimized"] < t for x, t in zip(layers, today))
                gain = np.median(
                    [t / max(x["mse_optimized"], 1e-30) for x, t in zip(layers, today)]
                )
                tuned = sum(x["threshold_tuned"] != x["threshold_table"] for x in layers)
                cost = (
                    f"{len(layers)} layers, {better} closer; median layer error ÷{gain:.1f}; "
                    f"{tuned} read a tuned threshold; "
                    f"{stage.seconds:.0f} s ({stage.seconds / max(len(layers), 1):.1f} s/layer)"
                )
            rows.append((model, how, m, built, cost))
            print(model, how, f"{m.decisive_top1_agree:.3f}", cost, flush=True)
            if args.mix_target:
                recipe = recipe_for(model, how)
                data = recipe.to_dict()
                set_dotted(data, "quantize", ["int8", "bf16"])
                set_dotted(data, "mix.target", args.mix_target)
                from duotpu.config.recipe import recipe_from_dict

                t0 = time.monotonic()
                mixed = pipeline.build(
                    recipe_from_dict(data, f"bench/rounding.py {model} mix"),
                    WORK / model / f"{how}-mix",
                    WORK / model / "work",
                )
                mix = mixed.mix
                assert mix is not None
                mixes.append((model, how, mix, time.monotonic() - t0))
                print(model, how, "mix:", len(mix.best.layers), mix.best.metric, flush=True)
    title = (
        f"# INT8 weight rounding — nearest vs optimized, {args.images} held-out crops/flips "
        f"(seed 2026), decisive margin {args.margin}, {time.strftime('%Y-%m-%d')}"
        if rows
        else f"# INT8 weight rounding — nearest vs optimized, {time.strftime('%Y-%m-%d')}"
    )
    lines = [title]
    if rows:
        cal = recipe_for(models[0], "nearest").calibration
        lines += [
            "",
            "| model | rounding | decisive top-1 agree (n) | top-1 agree | mean cosine "
            "| worst cosine | mean KL | build s | the rounding |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for model, how, m, built, cost in rows:
            lines.append(
                f"| {model} | {how} | {m.decisive_top1_agree:.3f} ({m.decisive_n}) | "
                f"{m.top1_agree:.3f} | {m.cosine_mean:.4f} | {m.cosine_worst:.4f} | "
                f"{m.kl_mean:.4f} | {built:.0f} | {cost} |"
            )
        lines += [
            "",
            f"Calibration: each recipe's ({cal.count} built-in natural crops, seed {cal.seed}); "
            "the rounding and the thresholds are chosen on 16 of them. Both builds of a model "
            "share one work folder (export, transform, calibration: the optimized row's build "
            "time is the round stage, its deploy and verification). Cosine and KL: each image's "
            "class scores against fp32. 'a tuned threshold': layers whose input threshold the "
            "round stage moved from tpu_mlir's table.",
        ]
    if mixes:
        lines += [
            "",
            f"The BF16 layers the mixed-precision search keeps to meet `--target "
            f"{args.mix_target}` (on the recipe's mix images), from each rounding's INT8 model:",
            "",
            "| model | rounding | BF16 layers | metric | meets | candidates | search s |",
            "| --- | --- | ---: | ---: | --- | ---: | ---: |",
        ]
        for model, how, mix, seconds in mixes:
            best = mix.best
            count = "all" if best.all_bf16 else str(len(best.layers))
            lines.append(
                f"| {model} | {how} | {count} | {best.metric:.4f} | "
                f"{'yes' if mix.met else 'no'} | {len(mix.rows)} | {seconds:.0f} |"
            )
    if args.detector:
        lines += detector_rows(args.detector_epochs)
    emit(lines, Path(args.out))
    return 0


def detector_rows(epochs: int) -> list[str]:
    """The trained YOLOv8n of bench/detect.py (synthetic shapes, 320×320; trained there first,
    cached in build/bench-detect) built INT8 with each rounding on its 100 calibration images,
    scored on its 100 val images: mAP against the labels and against the fp32 detections."""
    import detect

    best, _ = detect.train(epochs)
    rows = []
    for how in ("nearest", "optimized"):
        recipe = detect.shapes_recipe(best, **{"quantize": ["int8"], "calibration.rounding": how})
        t0 = time.monotonic()
        result = pipeline.build(recipe, WORK / "shapes_v8n" / how, WORK / "shapes_v8n" / "work")
        built = time.monotonic() - t0
        ((mode, met, fp, _),) = detect.scored(result)
        rows.append((how, met, fp, built))
        print("shapes_v8n", how, f"{met.map50_95:.3f}", f"{met.map50_vs_fp32:.3f}", flush=True)
    fp = rows[0][2]
    lines = [
        "",
        f"A trained detector: bench/detect.py's YOLOv8n ({epochs} epochs on synthetic shapes, "
        "320×320), INT8 cvimodels on its 100 val images; fp32 (ONNX Runtime) has mAP@0.5 "
        f"{fp['map50']:.3f} and mAP@0.5:0.95 {fp['map50_95']:.3f} against the labels:",
        "",
        "| model | rounding | mAP@0.5 (labels) | mAP@0.5:0.95 (labels) | mAP@0.5 vs fp32 "
        "detections | worst head-map cosine (mean over images) | build s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for how, met, _, built in rows:
        lines.append(
            f"| shapes_v8n | {how} | {met.map50:.3f} | {met.map50_95:.3f} | "
            f"{met.map50_vs_fp32:.3f} | {min(met.cosine_mean.values()):.4f} | {built:.0f} |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
