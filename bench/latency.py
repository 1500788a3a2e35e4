"""Latency estimate vs published board times (latency-facts.md: Milk-V's "Rel-v1.5" table).

Each published model is built here at its usual input size, INT8 (weights and calibration do
not change the time: random weights, 2 calibration crops, no accuracy gate), and duotpu's
board-free estimate of its cvimodel is printed beside the published time. Rows the table gives
for models that no package here provides (RetinaFace, MobileNet-SSD, YOLOv3-tiny, YOLOv4-s,
YOLOX-s) are listed as not rebuilt.

The cost model's fitted constants (the double_conv gain of 1x1 and of larger convolutions, DDR
bytes per cycle) were set on the four cv180x rows (the smallest largest error); the cv181x rows
are a check the constants were not fitted to. Builds are cached in bench/work/latency, so a rerun
after a change of the cost model only re-estimates.

Prints a table and writes it to bench/results/latency.md. Run:
`.venv/bin/python bench/latency.py [--only resnet18] [--chip cv181x]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _report import emit  # noqa: E402
from duotpu import latency  # noqa: E402
from duotpu.builder import pipeline  # noqa: E402
from duotpu.config.recipe import recipe_from_dict  # noqa: E402

WORK = HERE / "work" / "latency"
RESULTS = HERE / "results"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class Row:
    name: str  # the published table's name
    chip: str
    source: str  # "" = not rebuilt here
    size: int
    published_ms: float


ROWS = [
    Row("resnet18", "cv180x", "torchvision:resnet18", 224, 136.03),
    Row("mobilenet_v2", "cv180x", "torchvision:mobilenet_v2", 224, 31.68),
    Row("squeezenet_v1.1", "cv180x", "torchvision:squeezenet1_1", 224, 27.45),
    Row("efficientnet-lite_b0", "cv180x", "duotpu.zoo:efficientnet_lite0", 224, 29.19),
    Row("resnet50", "cv181x", "torchvision:resnet50", 224, 41.5),
    Row("resnet18", "cv181x", "torchvision:resnet18", 224, 18.26),
    Row("mobilenet_v1", "cv181x", "timm:mobilenetv1_100", 224, 7.18),
    Row("mobilenet_v2", "cv181x", "torchvision:mobilenet_v2", 224, 7.07),
    Row("squeezenet_v1.1", "cv181x", "torchvision:squeezenet1_1", 224, 4.82),
    # ION 1.62 MB published: the x0.5 variant (x1.0 has 2.3 M weights)
    Row("shufflenet_v2", "cv181x", "torchvision:shufflenet_v2_x0_5", 224, 1.53),
    Row("googlenet", "cv181x", "torchvision:googlenet", 224, 19.62),
    Row("inception_v3", "cv181x", "torchvision:inception_v3", 299, 55.95),
    Row("densenet121", "cv181x", "torchvision:densenet121", 224, 36.77),
    Row("densenet201", "cv181x", "torchvision:densenet201", 224, 66.42),
    Row("senet_r50", "cv181x", "timm:seresnet50", 224, 53.47),
    Row("resnext50", "cv181x", "torchvision:resnext50_32x4d", 224, 49.2),
    Row("efficientnet-lite_b0", "cv181x", "duotpu.zoo:efficientnet_lite0", 224, 6.9),
    Row("nasnet_mobile", "cv181x", "", 224, 13.91),  # not in timm
    Row("yolov5_s", "cv181x", "ultralytics:yolov5s.yaml", 640, 99.36),
    Row("retinaface_mnet25", "cv181x", "", 320, 3.47),
    Row("retinaface_mnet25_600", "cv181x", "", 600, 14.25),
    Row("mobilenet_ssd", "cv181x", "", 300, 14.79),
    Row("yolo_v3_tiny", "cv181x", "", 416, 26.82),
    Row("yolo_v4_s", "cv181x", "", 608, 113.76),
    Row("yolox_s", "cv181x", "", 640, 140.5),
]


def build_row(row: Row) -> Path:
    """The row's INT8 cvimodel (built once; the build folder is cached)."""
    name = f"{row.name.replace('.', '_').replace('-', '_')}_{row.chip}"
    pre = IMAGENET if not row.source.startswith("ultralytics:") else {"mean": [0.0], "std": [1.0]}
    data = {
        "name": name,
        "chip": row.chip,
        "quantize": ["int8"],
        "model": {"source": row.source},
        "inputs": [{"name": "input", "shape": [1, 3, row.size, row.size]}],
        "preprocess": pre,
        "calibration": {"count": 2, "tune_num": 1},
        # the time does not depend on the weights: no accuracy gate (model_deploy passes its
        # tolerance on a shell line, so the cosine part cannot be negative: NOTES.md)
        "tolerance": {"int8": [0.0, -1.0], "verify_int8": -1.0, "correctness": [0.0, -1.0]},
    }
    out = WORK / name
    result = pipeline.build(recipe_from_dict(data, f"bench/latency.py {name}"), out)
    return result.models["int8"].cvimodel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated model names")
    ap.add_argument("--chip", help="only this chip's rows")
    ap.add_argument(
        "--fit", action="store_true", help="fit the constants on the built training rows"
    )
    args = ap.parse_args()
    if args.fit:
        for chip in [args.chip] if args.chip else ["cv180x", "cv181x"]:
            print("\n".join(fit_constants(chip)))
        return
    store = RESULTS / "latency.json"
    done = (
        {(r["name"], r["chip"]): r for r in json.loads(store.read_text())}
        if store.is_file()
        else {}
    )
    for row in ROWS:
        if args.only and row.name not in args.only.split(","):
            continue
        if args.chip and row.chip != args.chip:
            continue
        entry: dict = {"name": row.name, "chip": row.chip, "size": row.size,
                       "published_ms": row.published_ms, "source": row.source}  # fmt: skip
        if row.source:
            t0 = time.monotonic()
            try:
                cvi = build_row(row)
                e = latency.estimate(cvi)
                entry.update(
                    estimate_ms=round(e.ms, 2),
                    tiu_ms=round(e.tiu_ms, 2),
                    tdma_ms=round(e.tdma_ms, 2),
                    bound=e.bound,
                    gmac=round(e.macs / 1e9, 3),
                    utilization=round(e.mac_utilization, 3),
                    error=round(e.ms / row.published_ms - 1, 3),
                    build_s=round(time.monotonic() - t0, 1),
                )
            except Exception as ex:  # noqa: BLE001 — a row that does not build is reported
                entry.update(failed=" ".join(str(ex).split())[:200])
        done[(row.name, row.chip)] = entry
        print(entry, flush=True)
        ordered = [done[(r.name, r.chip)] for r in ROWS if (r.name, r.chip) in done]
        RESULTS.mkdir(exist_ok=True)
        store.write_text(json.dumps(ordered, indent=1))
        emit(table(ordered), RESULTS / "latency.md", echo=False)
    emit(table([done[(r.name, r.chip)] for r in ROWS if (r.name, r.chip) in done]),
         RESULTS / "latency.md")  # fmt: skip


#: the rows each chip's constants are fitted on: the four models the cv180x table has
TRAIN = ("resnet18", "mobilenet_v2", "squeezenet_v1.1", "efficientnet-lite_b0")


def fit_constants(chip: str) -> list[str]:
    """Grid search of the fitted constants on the chip's training rows (the smallest largest
    error); prints every row's error with them, training and check rows apart."""
    import itertools
    from dataclasses import replace

    import numpy as np

    rows = [r for r in ROWS if r.chip == chip and r.source]
    paths = {}
    for r in rows:
        name = f"{r.name.replace('.', '_').replace('-', '_')}_{r.chip}"
        cvi = WORK / name / f"{name}_{r.chip}_int8.cvimodel"
        if cvi.is_file():
            paths[r.name] = (cvi, r.published_ms)
    train = {n: v for n, v in paths.items() if n in TRAIN}
    if not train:
        return [f"{chip}: no training row built yet"]
    routines = {n: latency.routines(v[0]) for n, v in paths.items()}
    base = latency.CHIPS[chip]

    def errors(k, names):
        return {
            n: sum(latency.simulate(r, k)[0] for r in routines[n]) / k.clock_mhz / 1e3 / paths[n][1]
            - 1
            for n in names
        }

    best = None
    for g, g1, bw in itertools.product(
        np.arange(1.0, 2.05, 0.1), np.arange(1.0, 2.05, 0.1), (2.0, 3.0, 4.0, 6.0, 8.0)
    ):
        k = replace(base, double_conv_gain=float(g), double_conv_gain_1x1=float(g1),
                    ddr_bytes_per_cycle=bw)  # fmt: skip
        e = errors(k, train)
        worst = max(abs(x) for x in e.values())
        if best is None or worst < best[0]:
            best = (worst, k)
    assert best is not None
    k = best[1]
    lines = [
        f"{chip}: double_conv gain {k.double_conv_gain:.1f}, 1x1 {k.double_conv_gain_1x1:.1f}, "
        f"DDR {k.ddr_bytes_per_cycle:g} B/cycle (fitted on {', '.join(sorted(train))})"
    ]
    for n, e in errors(k, paths).items():
        lines.append(f"  {n:22s} {'train' if n in train else 'check'} {e * 100:+.0f} %")
    return lines


def table(rows: list[dict]) -> list[str]:
    k180, k181 = latency.CHIPS["cv180x"], latency.CHIPS["cv181x"]
    lines = [
        "# Latency estimate vs published board times (INT8, batch 1)",
        "",
        "Estimate: duotpu's cost model over the cvimodel's command buffers (tpu_mlir 1.30.2). "
        "Published: Milk-V's table (Rel-v1.5, an older CVITEK compiler, 500 MHz). Constants: "
        f"cv180x DDR {k180.ddr_bytes_per_cycle} B/cycle, double_conv gain "
        f"{k180.double_conv_gain} (1x1: {k180.double_conv_gain_1x1}); cv181x DDR "
        f"{k181.ddr_bytes_per_cycle} B/cycle, double_conv gain {k181.double_conv_gain} "
        f"(1x1: {k181.double_conv_gain_1x1}).",
        "",
        "| model | chip | input | GMAC | estimate ms | published ms | error | TIU ms | TDMA ms "
        "| bound | MAC util. |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        if "estimate_ms" not in r:
            why = r.get("failed") or "not rebuilt here (no package provides the model)"
            lines.append(
                f"| {r['name']} | {r['chip']} | {r['size']} | — | — | {r['published_ms']} | — "
                f"| — | — | {why[:80]} | — |"
            )
            continue
        lines.append(
            f"| {r['name']} | {r['chip']} | {r['size']} | {r['gmac']:.2f} | "
            f"{r['estimate_ms']:.2f} | "
            f"{r['published_ms']} | {r['error'] * 100:+.0f} % | {r['tiu_ms']:.2f} | "
            f"{r['tdma_ms']:.2f} | {r['bound']} | {r['utilization'] * 100:.0f} % |"
        )
    lines.append("")
    for chip in ("cv180x", "cv181x"):
        errs = [abs(r["error"]) for r in rows if r["chip"] == chip and "error" in r]
        if errs:
            lines.append(
                f"- {chip}: {len(errs)} rows, median |error| "
                f"{statistics.median(errs) * 100:.0f} %, largest {max(errs) * 100:.0f} %"
            )
    return lines


if __name__ == "__main__":
    main()
