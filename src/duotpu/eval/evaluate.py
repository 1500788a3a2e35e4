"""Accuracy of built models against fp32: agreement metrics, labelled accuracy, per-layer view.

Used by ``duotpu eval``. Metrics, for each quantized model against the fp32 ONNX model:
top-1 agreement overall and on *decisive* images (fp32 top-1 minus top-2 probability ≥ a margin,
0.05 by default: near-ties flip even in BF16 and say little about quantization), top-5
containment of the fp32 top-1, mean and worst output cosine, and mean KL(fp32 ‖ quantized) of
the softmax outputs. With a labelled folder (one subfolder per class), top-1/top-5 accuracy.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from duotpu import compiler
from duotpu.compiler.executor import Executor, Outcome
from duotpu.config.errors import ConfigError, DataError, ModelError
from duotpu.core import images as images_mod
from duotpu.core import metrics
from duotpu.inference import runtime

from .results import (
    ClassifyEval,
    DetectEval,
    DetectMetrics,
    Disagreement,
    EvalResult,
    FastPathCheck,
    GenericEval,
    GenericMetrics,
    OutputRange,
)


def labelled_images(
    folder: Path, class_names: list[str] | None
) -> tuple[list[Path], list[int] | None]:
    """Images of ``folder``; when its subfolders name classes (ImageNet index or class name),
    also their labels."""
    scan = images_mod.scan_images(folder)
    if not scan.paths:
        raise DataError(f"The image folder {folder} has no readable images.")
    lookup = {n.lower(): i for i, n in enumerate(class_names or [])}
    labels = []
    for p in scan.paths:
        rel = p.relative_to(folder)
        if len(rel.parts) < 2:
            return scan.paths, None
        cls = rel.parts[0]
        if cls.isdigit():
            labels.append(int(cls))
        elif cls.lower().replace("_", " ") in lookup:
            labels.append(lookup[cls.lower().replace("_", " ")])
        else:
            raise DataError(
                f"The class folder '{cls}' in {folder} is neither a class number nor "
                "a known class name. Name class folders by ImageNet index (e.g. 285) "
                "or class name (e.g. Egyptian_cat), or pass --labels FILE."
            )
    return scan.paths, labels


def per_layer(
    model: runtime.BuiltModel, top_mlir: Path, tensors: list[np.ndarray]
) -> list[tuple[str, float]]:
    """Cosine of every tensor of the quantized MLIR to the same tensor of the fp32 MLIR (mean
    over ``tensors``), in graph order (the order the interpreter computes them)."""
    if model.tpu_mlir is None:
        raise ModelError(
            f"The quantized MLIR of {model.cvimodel} is not available (the build's work "
            "directory is gone): the per-layer view needs it. Rebuild the model."
        )
    quant = compiler.run_tensors("mlir", model.tpu_mlir, model.input_name, tensors, [])
    fp32 = compiler.run_tensors(
        "mlir", top_mlir, model.input_name, runtime.fp32_inputs(model, tensors), []
    )
    sims: dict[str, list[float]] = {}
    for q, f in zip(quant, fp32):
        for name in q:
            if name in f and q[name].size == f[name].size and name != model.input_name:
                sims.setdefault(name, []).append(metrics.cosine(f[name], q[name]))
    return [(n, float(np.mean(v))) for n, v in sims.items()]


def least_similar(layers: list[tuple[str, float]], n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` layers of a per-layer view least similar to fp32, worst first."""
    return sorted(layers, key=lambda kv: kv[1])[:n]


def _layer_views(
    built: list[runtime.BuiltModel], tensors: list[np.ndarray], layers: int
) -> dict[str, list[tuple[str, float]]]:
    """Per model, the per-layer view on the first ``layers`` images (none when 0)."""
    return {
        b.mode: per_layer(b, b.top_mlir, tensors[:layers])
        for b in built
        if layers and b.tpu_mlir is not None and b.top_mlir is not None
    }


#: below this output cosine between the fast path and the simulator on a checked image, a
#: model is evaluated on the simulator (tpu_mlir 1.30's interpreter and simulator can differ
#: on some inputs only: EfficientViT-B0 INT8, cosine < 0.4 on 4 of 6 natural crops)
FAST_PATH_AGREE = 0.99


def check_fast_path(model: runtime.BuiltModel, tensors: list[np.ndarray]) -> tuple[float, float]:
    """Largest absolute output difference and lowest output cosine between the fast path and
    the CV18xx simulator."""
    sim = runtime.infer(model, tensors, backend="cvimodel")
    fast = runtime.infer(model, tensors, backend="mlir")
    pairs = [(a[n], b[n]) for a, b in zip(sim, fast) for n in model.output_names]
    diff = max(float(np.max(np.abs(a.ravel() - b.ravel()))) for a, b in pairs)
    return diff, min(metrics.cosine(a, b) for a, b in pairs)


@dataclass(frozen=True)
class _Shard:
    """Some images of an evaluation, for one task: the model is opened again where it runs."""

    cvimodel: str
    recipe: str | None
    tensors: list
    backend: str


def _infer_shard(shard: _Shard) -> list[dict[str, np.ndarray]]:
    model = runtime.open_model(shard.cvimodel, shard.recipe)
    # one interpreter per task: the executor already runs a task per core
    return runtime.infer(model, shard.tensors, backend=shard.backend, workers=1)


def _infer_timed(
    model: runtime.BuiltModel,
    tensors: list,
    backend: str,
    progress: Progress,
    executor: Executor | None = None,
    recipe: Path | None = None,
) -> tuple[list[dict[str, np.ndarray]], float]:
    """Every image's outputs and the seconds they took, counting progress per model. With a
    parallel executor the images go out in shards (two per worker), the outputs come back in
    the images' order."""
    t0 = time.monotonic()
    if executor is None or executor.workers <= 1:
        outs = runtime.infer(
            model,
            tensors,
            backend=backend,
            progress=functools.partial(_count, progress, model.mode, len(tensors)),
        )
        return outs, time.monotonic() - t0
    size = max(1, -(-len(tensors) // (2 * executor.workers)))
    shards = [
        _Shard(str(model.cvimodel), str(recipe) if recipe else None, tensors[i : i + size], backend)
        for i in range(0, len(tensors), size)
    ]
    done = [0]

    def finished(o: Outcome[list[dict[str, np.ndarray]]]) -> None:
        done[0] += len(shards[o.index].tensors)
        progress(model.mode, done[0], len(tensors))

    outcomes = executor.map(
        _infer_shard,
        shards,
        labels=[
            f"{model.mode} images {i * size + 1}–{i * size + len(sh.tensors)}"
            for i, sh in enumerate(shards)
        ],
        on_done=finished,
    )
    failed = [o.failed for o in outcomes if o.failed is not None]
    if failed:
        raise ModelError(f"{failed[0].label} did not run: {failed[0].error}")
    outs = [r for o in outcomes for r in (o.value or [])]
    return outs, time.monotonic() - t0


def timed_infer(
    model: runtime.BuiltModel,
    tensors: list,
    backend: str,
    progress: Progress | None = None,
    executor: Executor | None = None,
    recipe: Path | None = None,
) -> tuple[np.ndarray, float]:
    """A classifier's outputs (first output, one row per image) and the seconds taken."""
    outs, secs = _infer_timed(model, tensors, backend, progress or _quiet, executor, recipe)
    return np.stack([o[model.output_names[0]].reshape(-1) for o in outs]), secs


# --------------------------------------------------------------------------------------------
# Detectors
# --------------------------------------------------------------------------------------------


def detection_images(folder: Path) -> tuple[list[Path], list[Path] | None]:
    """Images of a detection folder and, in the YOLO layout (``images/x.jpg`` with
    ``labels/x.txt``, or ``x.txt`` beside ``x.jpg``), their label files; ``None`` without any
    label file."""
    scan = images_mod.scan_images(folder)
    if not scan.paths:
        raise DataError(f"The image folder {folder} has no readable images.")
    labels = []
    for p in scan.paths:
        parts = list(p.parts)
        if "images" in parts:
            k = len(parts) - 1 - parts[::-1].index("images")
            parts[k] = "labels"
        beside = p.with_suffix(".txt")
        yolo = Path(*parts).with_suffix(".txt")
        labels.append(yolo if yolo.is_file() else beside)
    return scan.paths, labels if any(lp.is_file() for lp in labels) else None


def compare_detections(
    mode: str,
    model: runtime.BuiltModel,
    fp32_maps: list[list[np.ndarray]],
    q_outs: list[dict[str, np.ndarray]],
    image_hws: Sequence[tuple[int, int]],
    truth: list | None,
    seconds: float,
) -> tuple[DetectMetrics, dict | None]:
    """Detection-level metrics of one quantized detector: mAP@0.5 of its detections taking the
    fp32 model's detections (at the recipe's ``detect.conf``) as ground truth, per head-map
    cosine, and with labels mAP@0.5 and mAP@0.5:0.95 (pycocotools). Returns the metrics and,
    with labels, the fp32 model's own mAP."""
    from duotpu.core.detect import MAP_CONF, as_truth, coco_map, maps_in_order, per_image

    head, pre, opt = model.head, model.recipe.preprocess, model.recipe.detect
    if head is None:
        raise ModelError(f"{model.cvimodel} is not a detector (no decode information).")
    q_maps = [maps_in_order(head, o) for o in q_outs]
    q_low = per_image(head, q_maps, pre, image_hws, opt, MAP_CONF)
    vs_fp32 = coco_map(as_truth(per_image(head, fp32_maps, pre, image_hws, opt)), q_low, head.nc)
    cos = {
        n: [metrics.cosine(f[k], q[k]) for f, q in zip(fp32_maps, q_maps)]
        for k, n in enumerate(head.outputs)
    }
    m = DetectMetrics(
        mode,
        len(q_maps),
        vs_fp32["map50"],
        int(vs_fp32["objects"]),
        # NMS keeps a box only for higher-scoring ones: the detections at
        # detect.conf are those of q_low that score that high
        float(np.mean([sum(d.score >= opt.conf for d in ds) for ds in q_low])),
        {n: float(np.mean(c)) for n, c in cos.items()},
        {n: float(np.min(c)) for n, c in cos.items()},
        images_per_second=len(q_maps) / seconds if seconds > 0 else 0.0,
    )
    fp32_labelled = None
    if truth is not None:
        mq = coco_map(truth, q_low, head.nc)
        m.map50, m.map50_95 = mq["map50"], mq["map50_95"]
        fp32_labelled = coco_map(
            truth, per_image(head, fp32_maps, pre, image_hws, opt, MAP_CONF), head.nc
        )
    return m, fp32_labelled


# --------------------------------------------------------------------------------------------
# A whole evaluation (what `duotpu eval` runs)
# --------------------------------------------------------------------------------------------
Progress = Callable[[str, int, int], None]  # (model name, images done, images in all)
CHANGED_KEPT = 48  # images whose top-1 changed, kept for the report's gallery
DISAGREE_KEPT = 6  # per model, the detector images least like fp32's, kept for the report


#: images on which the fast path (the quantized MLIR) is checked against the simulator before it
#: evaluates: the library's default and the CLI's (``--check``)
FAST_PATH_CHECK = 2


def _quiet(*_: object) -> None:
    pass


def _count(progress: Progress, mode: str, total: int, done: int) -> None:
    progress(mode, done, total)


def evaluate_build(
    target: Path,
    images: Path,
    *,
    recipe: Path | None = None,
    backend: str = "mlir",
    margin: float = 0.05,
    class_names: list[str] | None = None,
    limit: int = 0,
    check: int = FAST_PATH_CHECK,
    layers: int = 0,
    progress: Progress = _quiet,
    log: Callable[[str], None] = _quiet,
    executor: Executor | None = None,
) -> EvalResult:
    """Evaluate every cvimodel of a build folder (or one cvimodel) against the fp32 model on a
    folder of images: classifiers by agreement (and accuracy with labelled subfolders),
    detectors by mAP against the fp32 detections (and against YOLO labels), other models by
    each output's cosine. Returns the typed result (``to_json()`` is ``report.json``);
    ``progress`` and ``log`` report as it goes.
    ``executor`` (`duotpu.compiler.executor`) spreads the images over Ray workers."""
    target = Path(target)
    models = sorted(target.glob("*.cvimodel")) if target.is_dir() else [target]
    if not models:
        raise ConfigError(f"No cvimodel in {target}. Give a cvimodel or a build folder.")
    built = [runtime.open_model(m, recipe) for m in models]
    if backend == "mlir" and any(b.tpu_mlir is None for b in built):
        # a build copied from elsewhere (another node, another machine) has no work folder
        log(
            "the quantized MLIR (the fast path) is not here — the build's work folder is "
            "elsewhere: evaluating on the CV18xx simulator (slower, the same answers)"
        )
        backend = "cvimodel"
    if built[0].head is not None:
        return _evaluate_detector(
            target, built, Path(images), backend, limit, layers, progress, log, executor, recipe
        )
    if built[0].recipe.task == "generic" or built[0].recipe.tensor_inputs:
        return _evaluate_generic(
            target, built, Path(images), backend, limit, layers, progress, log, executor, recipe
        )
    first = built[0]
    paths, labels = labelled_images(Path(images), class_names)
    if limit:
        paths, labels = paths[:limit], (labels[:limit] if labels else None)
    log(
        f"evaluating {', '.join(b.cvimodel.name for b in built)} on {len(paths)} images "
        f"({'labelled' if labels else 'agreement with fp32'}), backend {backend}"
    )
    tensors = runtime.tensors_for(first, paths)
    fp32 = np.stack([o[0].reshape(-1) for o in runtime.fp32_reference(first, tensors)])
    data = ClassifyEval(
        str(target),
        first.recipe.name,
        str(images),
        len(paths),
        backend,
        margin=margin,
        fp32=metrics.fp32_metrics(fp32, labels, margin),
    )
    quantized: dict[str, np.ndarray] = {}
    for b in built:
        used = backend
        if backend == "mlir" and check:
            k = min(check, len(tensors))
            diff, cos = check_fast_path(b, tensors[:k])
            if cos < FAST_PATH_AGREE:
                used = "cvimodel"
            data.fast_path_check[b.mode] = FastPathCheck(k, diff, cos, used)
            log(
                f"  {b.mode.upper()}: fast path vs CV18xx simulator on {k} image(s): "
                f"largest output difference {diff:g}"
                + (" (bit-exact)" if diff == 0 else "")
                + (
                    f", cosine {cos:.4f}: they disagree, so this model is evaluated on the "
                    "simulator"
                    if used != backend
                    else ""
                )
            )
        q, secs = timed_infer(b, tensors, used, progress, executor, recipe)
        data.modes[b.mode] = metrics.compare(b.mode, fp32, q, margin, labels, secs)
        quantized[b.mode] = metrics.as_probabilities(q)
    data.per_layer = _layer_views(built, tensors, layers)
    data.changed = changed_top1(paths, metrics.as_probabilities(fp32), quantized, class_names)
    return data


def changed_top1(
    paths: list[Path],
    p_fp32: np.ndarray,
    quantized: dict[str, np.ndarray],
    class_names: list[str] | None,
    keep: int = CHANGED_KEPT,
) -> list[dict]:
    """The images on which some quantized model's top-1 class differs from fp32's, the most
    confident fp32 answers first (those flips matter most): each with the fp32 and every
    model's top-3 (class, name, probability)."""
    from duotpu.core.labels import class_name

    t1f = p_fp32.argmax(1)
    flipped = sorted(
        {i for p in quantized.values() for i in np.flatnonzero(p.argmax(1) != t1f)},
        key=lambda i: -float(np.max(p_fp32[i])),
    )[:keep]

    def top3(p: np.ndarray) -> list[dict]:
        return [
            {"class": c, "name": class_name(class_names, c), "probability": round(v, 4)}
            for c, v in metrics.topk(p, 3)
        ]

    return [
        {
            "image": str(paths[i]),
            "fp32": top3(p_fp32[i]),
            "modes": {m: top3(p[i]) for m, p in quantized.items()},
        }
        for i in flipped
    ]


def _evaluate_detector(
    target: Path,
    built: list[runtime.BuiltModel],
    folder: Path,
    backend: str,
    limit: int,
    layers: int,
    progress: Progress,
    log: Callable[[str], None],
    executor: Executor | None = None,
    recipe: Path | None = None,
) -> DetectEval:
    from duotpu.core.detect import (
        MAP_CONF,
        agreement,
        maps_in_order,
        per_image,
        read_yolo_labels,
    )
    from duotpu.core.preprocess import load_bgr

    first = built[0]
    paths, label_files = detection_images(folder)
    if limit:
        paths = paths[:limit]
        label_files = label_files[:limit] if label_files else None
    hws = [(im.shape[0], im.shape[1]) for im in (load_bgr(p, False) for p in paths)]
    truth = [read_yolo_labels(lf, hw) for lf, hw in zip(label_files, hws)] if label_files else None
    log(
        f"evaluating detector {', '.join(b.cvimodel.name for b in built)} on "
        f"{len(paths)} images ({'YOLO labels' if truth else 'agreement with fp32'}), "
        f"backend {backend}"
    )
    tensors = runtime.tensors_for(first, paths)
    fp32 = runtime.fp32_reference(first, tensors)
    data = DetectEval(
        str(target),
        first.recipe.name,
        str(folder),
        len(paths),
        backend,
        conf=first.recipe.detect.conf,
        iou=first.recipe.detect.iou,
        map_conf=MAP_CONF,
    )
    head, pre, opt = first.head, first.recipe.preprocess, first.recipe.detect
    assert head is not None
    fp32_dets = per_image(head, fp32, pre, hws, opt)
    for b in built:
        outs, secs = _infer_timed(b, tensors, backend, progress, executor, recipe)
        m, fp32_lab = compare_detections(b.mode, b, fp32, outs, hws, truth, secs)
        data.modes[b.mode] = m
        if fp32_lab is not None:
            data.fp32 = {
                "map50": fp32_lab["map50"],
                "map50_95": fp32_lab["map50_95"],
                "objects": fp32_lab["objects"],
            }
        q_dets = per_image(head, [maps_in_order(head, o) for o in outs], pre, hws, opt)
        scores = [agreement(f, q) for f, q in zip(fp32_dets, q_dets)]
        m.agreement_mean = float(np.mean(scores))
        data.disagreement[b.mode] = [
            Disagreement(
                str(paths[i]),
                round(scores[i], 4),
                [d.to_json() for d in fp32_dets[i]],
                [d.to_json() for d in q_dets[i]],
            )
            for i in np.argsort(scores, kind="stable")[:DISAGREE_KEPT]
            if scores[i] < 1.0
        ]
    data.per_layer = _layer_views(built, tensors, layers)
    return data


def _evaluate_generic(
    target: Path,
    built: list[runtime.BuiltModel],
    folder: Path,
    backend: str,
    limit: int,
    layers: int,
    progress: Progress,
    log: Callable[[str], None],
    executor: Executor | None = None,
    recipe: Path | None = None,
) -> GenericEval:
    """A model that is neither classifier nor detector, or whose inputs are tensors: every
    output's cosine to fp32 over the images (``.npz`` samples for a tensor model; mean and
    worst), and its value range."""
    first = built[0]
    if first.recipe.tensor_inputs:
        from duotpu.builder.calibdata import tensor_files

        found = tensor_files(folder)
        if not found:
            raise DataError(
                f"The folder {folder} has no .npz samples; {first.cvimodel.name} takes tensors "
                f"({', '.join(i.name for i in first.recipe.inputs)}): evaluate it on a folder of "
                ".npz files, one array per input name."
            )
    else:
        scan = images_mod.scan_images(folder)
        if not scan.paths:
            raise DataError(f"The image folder {folder} has no readable images.")
        found = scan.paths
    paths = found[:limit] if limit else found
    item = "samples" if first.recipe.tensor_inputs else "images"
    log(
        f"evaluating {', '.join(b.cvimodel.name for b in built)} on {len(paths)} {item} "
        f"(each output against fp32), backend {backend}"
    )
    tensors = runtime.tensors_for(first, paths)
    names = runtime.fp32_output_names(first)
    refs = [dict(zip(names, r)) for r in runtime.fp32_reference(first, tensors)]
    data = GenericEval(
        str(target),
        first.recipe.name,
        str(folder),
        len(paths),
        backend,
        fp32={
            n: OutputRange(
                list(refs[0][n].shape),
                float(min(r[n].min() for r in refs)),
                float(max(r[n].max() for r in refs)),
            )
            for n in names
        },
    )
    for b in built:
        outs, secs = _infer_timed(b, tensors, backend, progress, executor, recipe)
        per: dict[str, list[float]] = {n: [] for n in names}
        for out, ref in zip(outs, refs):
            named = runtime.as_reference_outputs(out, ref)
            for n in names:
                per[n].append(metrics.cosine(ref[n], named[n]))
        data.modes[b.mode] = GenericMetrics(
            len(paths),
            {n: float(np.mean(v)) for n, v in per.items()},
            {n: float(np.min(v)) for n, v in per.items()},
            {n: str(paths[int(np.argmin(v))].name) for n, v in per.items()},
            {n: str(paths[int(np.argmin(v))]) for n, v in per.items()},
            len(paths) / secs if secs > 0 else 0.0,
            # per image, its least similar output (the distribution the report plots)
            [float(min(c)) for c in zip(*per.values())],
        )
    data.per_layer = _layer_views(built, tensors, layers)
    return data
