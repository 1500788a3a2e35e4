"""The ``verify`` stage: each cvimodel on the CV18xx simulator against the fp32 model, on the
test input and the verification images, with model_deploy's per-layer check at the recipe's
tolerance."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from duotpu import compiler
from duotpu.config.errors import (
    Mismatch,
    ToleranceError,
)
from duotpu.config.recipe import Recipe
from duotpu.core import metrics, onnxrt, preprocess

from .prepare import given_folder, test_feed
from .results import (
    Deployed,
    Exported,
    Referenced,
    Transformed,
    Verified,
)
from .workdir import (
    Stage,
    WorkDir,
    write_json,
)

match_outputs = onnxrt.match_outputs  # the rule lives with the other output handling


def cosine_to_reference(reference: Path, outputs: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Cosine of each output in ``outputs`` (a simulator npz) to the fp32 reference npz, and
    which compiled output each reference output is."""
    ref = dict(np.load(reference))
    got = dict(np.load(outputs))
    names = match_outputs(ref, got)
    return {n: metrics.cosine(ref[n], got[names[n]]) for n in ref}, names


def stage_verify(
    wd: WorkDir,
    r: Recipe,
    mode: str,
    referenced: Stage[Referenced],
    deployed: Stage[Deployed],
    transformed: Stage[Transformed] | None = None,
    extra_images: list[Path] | tuple[Path, ...] = (),
    exported: Exported | None = None,
) -> Stage[Verified]:
    """The cvimodel's outputs on the CV18xx simulator against fp32 ONNX Runtime: on the test
    input (from model_deploy), and on ``extra_images`` (run here) when there are any. Each
    output's cosine is its mean over the images; the worst image is recorded."""
    t, d = referenced.result, deployed.result
    tail = exported.tail if exported else None
    need = r.tolerance.verify_int8 if mode == "int8" else r.tolerance.verify_bf16
    tolerance = r.tolerance.int8 if mode == "int8" else r.tolerance.bf16
    # model_deploy's own check (quantized MLIR vs fp32, all tensors), made here at the recipe's
    # tolerance: the deploy stage ran it all but switched off
    checked = d.tpu_outputs if d.tpu_outputs and transformed is not None else None
    worst_decides = given_folder(r)
    key: dict[str, Any] = {
        "tolerance": [list(tolerance), list(r.tolerance.excepts)] if checked else None,
        "tpu_outputs": compiler.file_digest(checked) if checked else None,
        "cvimodel": compiler.file_digest(d.cvimodel),
        "outputs": compiler.file_digest(d.model_outputs),
        "reference": compiler.file_digest(t.reference),
        "min_cosine": need,
        "worst_decides": worst_decides,
        "images": [compiler.file_digest(p) for p in extra_images],
        "preprocess": asdict(r.preprocess),
        "tail": compiler.file_digest(tail) if tail else None,
    }

    def run(folder: Path) -> Verified:
        try:
            return _verify(folder)
        except ToleranceError as e:
            hint = preprocessing_hint(r)
            if not hint:
                raise
            raise ToleranceError(e.what, e.mismatches, f"{hint} {e.advice}", e.log_path) from None

    def _verify(folder: Path) -> Verified:
        if checked is not None and transformed is not None:
            compiler.check_tolerance(
                checked,
                transformed.result.files.top_outputs,
                mode,
                tolerance,
                tuple(r.tolerance.excepts),
                folder / "tolerance.log",
            )
        outputs = d.model_outputs
        if tail is not None:  # the whole model's outputs: the TPU part, then the CPU part
            outputs = folder / "outputs.npz"
            fed = test_feed(transformed.result) if transformed else None
            np.savez(outputs, **onnxrt.run_tail(tail, dict(np.load(d.model_outputs)), fed))
        cos, names = cosine_to_reference(t.reference, outputs)
        per_image = [cos]
        if extra_images and transformed is not None:
            per_image += _extra_cosines(
                r, transformed.result, d, list(extra_images), exported, names
            )
        mean = {n: float(np.mean([c[n] for c in per_image])) for n in cos}
        worst = [min(c.values()) for c in per_image]
        # a folder the user gave to verify on: its worst image decides; else the mean over the
        # few calibration images picked
        decide = {n: float(min(c[n] for c in per_image)) for n in cos} if worst_decides else mean
        bad = [Mismatch(n, "cosine", c, need) for n, c in decide.items() if not c >= need]
        what = f"the {mode.upper()} cvimodel on the CV18xx simulator against the fp32 ONNX model"
        if len(per_image) > 1:
            item = "sample" if r.tensor_inputs else "image"
            what += (
                f" ({'worst' if worst_decides else 'mean'} over {len(per_image)} {item}s; "
                f"worst {item} {min(worst):.4f})"
            )
        if bad:
            raise ToleranceError(
                what, bad, compiler.tolerance_advice(mode, f"tolerance.verify_{mode}", need)
            )
        write_json(
            folder / "similarity.json",
            {"cosine": mean, "required": need, "per_image": worst},
        )
        return Verified(
            mean,
            need,
            names,
            folder / "similarity.json",
            tuple(worst),
            outputs if tail is not None else None,
        )

    return wd.run(f"verify-{mode}", key, run, Verified)


def preprocessing_hint(r: Recipe) -> str:
    """The first thing to check when a model misses verification and its recipe gives no
    preprocessing at all (RGB pixels scaled to 0–1, no mean/std, the image stretched to the
    input's size): "" when the recipe gives some (a resize mode is one). A model trained on
    normalised input sees values it never saw, which quantize worst."""
    pre = r.preprocess
    if r.tensor_inputs:  # no images, no preprocessing to get wrong
        return ""
    plain = (
        all(m == 0.0 for m in pre.mean)
        and all(s == 1.0 for s in pre.std)
        and pre.pixel_format == "rgb"
        and pre.resize is None
        and pre.resize_mode == "stretch"
    )
    if not plain:
        return ""
    return (
        "First check the preprocessing: the recipe gives none (RGB pixels scaled to 0–1, no "
        "mean/std, the image stretched to the input's size). If the model was trained on "
        "normalised input (ImageNet's "
        "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225, BGR with --pixel-format bgr, a "
        "resize with --resize), give what its own code does; a model fed input it never saw "
        "is where quantization loses most."
    )


# --------------------------------------------------------------------------------------------
# The whole build
# --------------------------------------------------------------------------------------------
def _extra_cosines(
    r: Recipe,
    t: Transformed,
    d: Deployed,
    paths: list[Path],
    exported: Exported | None,
    names: dict[str, str],
) -> list[dict[str, float]]:
    """Per image, each output's cosine of the cvimodel (simulator, and the tail on the CPU for a
    cut model) to the fp32 model (ONNX Runtime)."""
    input_name = next(iter(np.load(t.test_input).files))
    tensors: list[Any] = (
        [dict(np.load(p)) for p in paths]
        if r.tensor_inputs
        else [preprocess.preprocess_image(p, r.preprocess, r.inputs[0].shape) for p in paths]
    )
    with np.load(d.model_outputs) as z:
        compiled = list(z.files)
    got = compiler.run_tensors("cvimodel", d.cvimodel, input_name, tensors, compiled)
    whole = exported.reference_onnx if exported else t.onnx
    tail = exported.tail if exported else None
    refs = onnxrt.onnx_reference_many(whole, tensors)
    out = []
    for g, ref, x in zip(got, refs, tensors):
        if tail is not None:  # a tail may read the model's inputs too
            g = onnxrt.run_tail(tail, g, x if isinstance(x, dict) else {input_name: x})
        out.append({n: metrics.cosine(ref[n], g[k]) for n, k in names.items()})
    return out
