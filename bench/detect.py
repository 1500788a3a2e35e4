"""Benchmark: YOLO detectors on CV180x — accuracy at detection level and board fit.

1. Accuracy. No pretrained YOLO weights can be downloaded here, so a YOLOv8n is trained offline
   (Ultralytics, CPU, `--epochs`, 320×320) on duotpu's synthetic shapes set (circles, squares,
   triangles drawn on crops of the built-in photos; 400 train / 100 val images). The trained
   checkpoint (`best.pt`) is built by duotpu for INT8 (cv180x, calibrated on 100 train images)
   and evaluated on the val images: mAP@0.5 and mAP@0.5:0.95 against the labels for fp32 and
   INT8, mAP@0.5 of INT8 taking the fp32 detections as ground truth, and head-map cosines.
2. Board fit. yolov5n (Ultralytics' anchor-free YOLOv5u) and yolov8n (80 COCO classes,
   architecture from the yaml) built for INT8 at 640 and 320: cvimodel size, ION memory need,
   and fit on the Duo (64 MB board).

Prints a table and writes bench/results/detect.md. Trained weights are cached in
build/bench-detect/ (delete it to retrain).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from _report import emit  # noqa: E402
from duotpu import cvimodel
from duotpu.builder import pipeline
from duotpu.config import chips
from duotpu.config.recipe import load_recipe
from duotpu.core import images
from duotpu.core.detect import read_yolo_labels
from duotpu.core.preprocess import load_bgr
from duotpu.eval import evaluate
from duotpu.inference import runtime

HERE = Path(__file__).parent
ROOT = HERE.parent
WORK = ROOT / "build" / "bench-detect"


def train(epochs: int) -> tuple[Path, float]:
    data = WORK / "shapes"
    if not (data / "data.yaml").is_file():
        images.write_shapes_dataset(data / "train", 400, 320, seed=0)
        images.write_shapes_dataset(data / "val", 100, 320, seed=1)
        names = "".join(f"  {i}: {n}\n" for i, n in enumerate(images.SHAPE_CLASSES))
        (data / "data.yaml").write_text(
            f"path: {data}\ntrain: train/images\nval: val/images\nnames:\n{names}"
        )
    run = WORK / "runs" / f"v8n-e{epochs}"
    best = run / "weights" / "best.pt"
    if best.is_file():
        return best, float("nan")
    # Ultralytics writes best.pt after the first epoch: train under another name and move the
    # run in place when all epochs are done, so an interrupted training is never taken as done
    partial = run.with_name(run.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    t0 = time.monotonic()
    YOLO("yolov8n.yaml").train(
        data=str(data / "data.yaml"),
        epochs=epochs,
        imgsz=320,
        batch=16,
        workers=2,
        device="cpu",
        plots=False,
        amp=False,
        project=str(WORK / "runs"),
        name=partial.name,
        exist_ok=True,
        verbose=False,
        pretrained=False,
    )
    partial.rename(run)
    return best, time.monotonic() - t0


def shapes_recipe(best: Path, **overrides: object):
    """The recipe the trained shapes YOLOv8n is built with (INT8 + BF16 unless overridden)."""
    base = load_recipe(ROOT / "recipes" / "yolov8n.toml")
    return base.with_overrides(
        {
            "name": "shapes_v8n",
            "model.source": str(best),
            "inputs": [{"name": "images", "shape": [1, 3, 320, 320]}],
            "calibration.images": str(WORK / "shapes" / "train" / "images"),
            "calibration.count": 100,
            "test_image": str(WORK / "shapes" / "val" / "images" / "00000.jpg"),
            "quantize": ["int8", "bf16"],
            **overrides,
        }
    )


def scored(result) -> list[tuple[str, object, dict, object]]:
    """Each model of a shapes build on the val images: (mode, detection metrics, fp32's mAP
    against the labels, the artefact)."""
    paths, label_files = evaluate.detection_images(WORK / "shapes" / "val")
    hws = [load_bgr(p, False).shape[:2] for p in paths]
    truth = [read_yolo_labels(lf, hw) for lf, hw in zip(label_files, hws)]
    out = []
    for mode, art in result.models.items():
        m = runtime.open_model(art.cvimodel)
        tensors = runtime.tensors_for(m, paths)
        fp32 = runtime.fp32_reference(m, tensors)
        t0 = time.monotonic()
        outs = runtime.infer(m, tensors, backend="mlir")
        met, fp = evaluate.compare_detections(
            mode, m, fp32, outs, hws, truth, time.monotonic() - t0
        )
        out.append((mode, met, fp, art))
    return out


def accuracy(best: Path) -> list[str]:
    recipe = shapes_recipe(best)
    t0 = time.monotonic()
    result = pipeline.build(recipe, WORK / "shapes_v8n")
    build_s = time.monotonic() - t0
    paths, label_files = evaluate.detection_images(WORK / "shapes" / "val")
    hws = [load_bgr(p, False).shape[:2] for p in paths]
    truth = [read_yolo_labels(lf, hw) for lf, hw in zip(label_files, hws)]
    lines = [
        f"Trained YOLOv8n (synthetic shapes, 320×320), {len(paths)} val images "
        f"({sum(map(len, truth))} objects); build {build_s:.0f} s (INT8 + BF16).",
        "",
        "| model | mAP@0.5 (labels) | mAP@0.5:0.95 (labels) | mAP@0.5 vs fp32 detections "
        "| worst head-map cosine (mean over images) | size | ION |",
        "|---|---|---|---|---|---|---|",
    ]
    fp32_row = None
    for mode, met, fp, art in scored(result):
        if fp32_row is None:
            fp32_row = (
                f"| fp32 (ONNX Runtime) | {fp['map50']:.3f} | {fp['map50_95']:.3f} | "
                f"— | — | {result.onnx.stat().st_size / 1e6:.2f} MB | — |"
            )
            lines.append(fp32_row)
        lines.append(
            f"| {mode.upper()} cvimodel | {met.map50:.3f} | {met.map50_95:.3f} | "
            f"{met.map50_vs_fp32:.3f} | {min(met.cosine_mean.values()):.4f} | "
            f"{art.size_bytes / 1e6:.2f} MB | {art.ion_mb:.2f} MB |"
        )
    return lines


def board_fit() -> list[str]:
    lines = [
        "",
        "Board fit (80 COCO classes, INT8, cv180x; ION = the runtime's memory need, "
        "the same number model_tool prints):",
        "",
        "| model | input | cvimodel | ION | Duo (64 MB, ION heap "
        f"{chips.BOARDS['duo'].ion_mb:.0f} MB) | build s |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("yolov5n", "yolov8n"):
        for size in (640, 320):
            base = load_recipe(ROOT / "recipes" / f"{name}.toml")
            r = base.with_overrides(
                {
                    "name": f"{name}_{size}",
                    "inputs": [{"name": "images", "shape": [1, 3, size, size]}],
                    "calibration.count": 8,
                    "tolerance.int8": [0.5, -1.0],
                    "tolerance.verify_int8": 0.5,
                }
            )
            t0 = time.monotonic()
            res = pipeline.build(r, WORK / "fit" / f"{name}_{size}")
            secs = time.monotonic() - t0
            art = res.models["int8"]
            duo = cvimodel.board_fit(cvimodel.read_cvimodel(art.cvimodel))["duo"]
            lines.append(
                f"| {name} | {size} | {art.size_bytes / 1e6:.2f} MB | "
                f"{art.ion_mb:.2f} MB | {duo['verdict']} | {secs:.0f} |"
            )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument(
        "--weights", help="a YOLOv8n checkpoint already trained on the shapes set (skips training)"
    )
    ap.add_argument("--skip-fit", action="store_true")
    args = ap.parse_args()
    best, train_s = (Path(args.weights), float("nan")) if args.weights else train(args.epochs)
    lines = ["# Detectors on CV180x (bench/detect.py)", ""]
    lines.append(
        f"YOLOv8n trained {args.epochs} epochs on the CPU"
        + (f" in {train_s / 60:.1f} min." if train_s == train_s else " (cached).")
    )
    lines += accuracy(best)
    if not args.skip_fit:
        lines += board_fit()
    emit(lines, HERE / "results" / "detect.md")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
