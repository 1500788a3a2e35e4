"""The ``mix`` stage: the fewest BF16 layers for INT8 to reach a target (the search itself is
`duotpu.builder.mixprec`), and the row the user picks."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from duotpu import compiler
from duotpu.compiler.executor import Executor
from duotpu.config.errors import (
    ConfigError,
    DataError,
)
from duotpu.config.recipe import Mix, Recipe
from duotpu.core import images, onnxrt

from . import calibdata
from .prepare import exported_head, folder_key, tensor_inputs
from .quantize import deploy_options, options_key
from .results import (
    Calibrated,
    Deployed,
    Mixed,
    RoundedModel,
    Transformed,
)
from .workdir import (
    Stage,
    StageEvent,
    WorkDir,
)


def _hw(image: NDArray[Any]) -> tuple[int, int]:
    return int(image.shape[0]), int(image.shape[1])


def validation_images(r: Recipe) -> list[Path | NDArray[Any]]:
    """The images mixed precision is measured on (not the calibration crops)."""
    mix = r.mix
    if mix.images.startswith("builtin:"):
        photos = images.calibration_photos() + [("chelsea", images.builtin_photo("chelsea"))]
        return [c for _, c in images.random_crops(photos, mix.count, mix.seed + 1000)]
    scan = images.scan_images(Path(mix.images))
    if not scan.paths:
        raise DataError(f"The mixed-precision image folder {mix.images} has no readable images.")
    return list(scan.paths[: mix.count])


def validation_samples(r: Recipe) -> list[Path]:
    """The samples (``.npz`` / ``.npy``) mixed precision is measured on, for a model whose
    inputs are tensors: ``mix.images``'s, else the calibration folder's — those calibration
    did not read (it reads the first ``calibration.count``) when the folder has enough, else
    its last ``mix.count``."""
    mix = r.mix
    if not mix.images.startswith("builtin:"):
        files, where = calibdata.tensor_files(Path(mix.images)), f"mix.images = {mix.images!r}"
    else:
        folder = r.calibration.images
        files, where = calibdata.tensor_files(Path(folder)), f"calibration.images = {folder!r}"
        unread = files[r.calibration.count :]
        files = unread if len(unread) >= mix.count else files[-mix.count :]
    if not files:
        names = ", ".join(f"{i.name} {list(i.shape)}" for i in r.inputs)
        raise DataError(
            f"Mixed precision measures a model of tensor inputs ({names}) on samples of them: "
            f"{where} has no .npz files. Give a folder of .npz files, one array per input "
            "name, with --mix-images."
        )
    return files[: mix.count]


def stage_mix(
    wd: WorkDir,
    r: Recipe,
    transformed: Stage[Transformed],
    calibrated: Stage[Calibrated],
    dep_int8: Stage[Deployed] | None,
    dep_bf16: Stage[Deployed] | None,
    executor: Executor | None = None,
    rounded: RoundedModel | None = None,
) -> Stage[Mixed]:
    """Search the fewest BF16 layers for INT8 to reach ``mix.target`` (or measure ``mix.qtable``).
    Every candidate's cvimodel is kept, so ``mix.pick`` chooses another row without a search.
    ``dep_int8`` is None when the pure INT8 model missed model_deploy's per-layer tolerance: the
    search builds it as its first row and starts from there. ``rounded`` (the round stage's
    result, when ``transformed`` and ``calibrated`` are its model and table): the layers a
    candidate keeps in BF16 take their weights from before the rounding."""
    from duotpu.builder import mixprec
    from duotpu.core.preprocess import load_bgr, preprocess_image

    t = transformed.result
    table = calibrated.result.table
    float_weights = (rounded.original_weights, rounded.rounded) if rounded else None
    mix = r.mix
    val_key: Any = (
        folder_key(validation_samples(r))
        if r.tensor_inputs
        else mix.images
        if mix.images.startswith("builtin:")
        else folder_key(images.list_files(Path(mix.images)))
    )
    key: dict[str, Any] = {
        "mix": asdict(mix) | {"pick": None},
        "val": val_key,
        "table": compiler.file_digest(table),
        "mlir": compiler.file_digest(t.mlir),
        "weights": compiler.file_digest(t.weights),
        "int8": compiler.file_digest(dep_int8.result.cvimodel) if dep_int8 else None,
        "bf16": compiler.file_digest(dep_bf16.result.cvimodel) if dep_bf16 else None,
        "qtable_file": compiler.file_digest(Path(mix.qtable)) if mix.qtable else None,
        "unrounded": (
            [compiler.file_digest(float_weights[0]), float_weights[1]] if float_weights else None
        ),
        "preprocess": asdict(r.preprocess),
        "tolerance": asdict(r.tolerance),
        "options": options_key(deploy_options(r, "int8", t.test_image)),
        "code": [compiler.file_digest(Path(mixprec.__file__)), compiler.code_digest()],
        "versions": compiler.versions(),
    }

    def built(dep: Stage[Deployed]) -> mixprec.Built:
        return mixprec.Built(dep.result.tpu_mlir, dep.result.cvimodel, dep.result.model_outputs)

    def run(folder: Path) -> Mixed:
        shape = r.inputs[0].shape
        tensors: list[Any]
        if r.tensor_inputs:
            wanted = set(t.input_names or (i.name for i in r.inputs))
            tensors = [
                {k: v for k, v in calibdata.read_sample(p, tensor_inputs(r)).items() if k in wanted}
                for p in validation_samples(r)
            ]
            val: list[Any] = []
        else:
            val = validation_images(r)
            tensors = [preprocess_image(im, r.preprocess, shape) for im in val]
        fp32 = onnxrt.onnx_outputs(t.onnx, tensors)
        head = exported_head(wd.stages["export"])
        hws = (
            [_hw(im if isinstance(im, np.ndarray) else load_bgr(im, False)) for im in val]
            if head is not None
            else []
        )  # only detectors map boxes back
        score = mixprec.scorer(r, mix.goal.metric if mix.goal else "cos", fp32, hws, head)
        graph = compiler.mlir_graph(t.mlir, folder / "graph.log")
        transformed_files = t.files
        fast: list[str] = []
        fast_secs = 0.0
        if mix.fast_search and mix.target and not mix.qtable:
            t0 = time.monotonic()
            wd.events(StageEvent("mix", "info", message="running tpu_mlir's fast_search"))
            fast = compiler.fast_search(
                transformed_files,
                calibrated.result.images,
                calibrated.result.count,
                folder / "fast_search",
                chip=r.chip,
                expected_cos=fast_search_cos(mix),
            )
            wd.events(
                StageEvent(
                    "mix", "info", message=f"fast_search keeps {len(fast)} layer(s) in float"
                )
            )
            fast_secs = time.monotonic() - t0
        # each candidate is measured on the target's metric; model_deploy's per-layer check
        # against fp32 would stop the search at the layers it is looking for. Its
        # cvimodel-vs-MLIR check is made by the search itself: with BF16 layers among INT8 ones
        # the simulator can disagree with tpu_mlir's interpreter, and such a candidate is
        # measured on the simulator instead of being ruled out (mixprec.agreement)
        base = deploy_options(r, "int8", t.test_image)
        options = dataclasses.replace(
            base, tolerance=compiler.NO_TOLERANCE, correctness=compiler.NO_TOLERANCE
        )
        rows, chosen, failed = mixprec.search(
            r,
            folder,
            transformed=transformed_files,
            table=table,
            options=options,
            int8=built(dep_int8) if dep_int8 else None,
            bf16=built(dep_bf16) if dep_bf16 else None,
            val_tensors=tensors,
            score=score,
            graph=graph,
            fast_search_layers=fast,
            log=lambda m: wd.events(StageEvent("mix", "info", message=m)),
            executor=executor,
            agree=base.correctness[0],
            float_weights=float_weights,
        )
        # without a target (a given table) there is nothing to meet: the table is the answer
        met = any(rr.meets for rr in rows if not rr.all_bf16) if mix.target else True
        return Mixed(
            tuple(rows),
            chosen,
            mix.target,
            met,
            any(rr.meets for rr in rows if rr.all_bf16),
            round(fast_secs, 1),
            failed=tuple(failed),
        )

    return wd.run("mix", key, run, Mixed, resumable=True)


def fast_search_cos(mix: Mix) -> float:
    """The output cosine tpu_mlir's fast_search is asked for: ``mix.fast_search_cos``, else a
    ``cos>=X`` target's X, else 0.995 (its own default)."""
    if mix.fast_search_cos:
        return float(mix.fast_search_cos)
    return mix.goal.value if mix.goal and mix.goal.metric == "cos" else 0.995


def picked_mix(r: Recipe, mixed: Stage[Mixed]) -> Mixed:
    """The mix stage's result with ``chosen`` set to the row ``mix.pick`` names (1-based, as
    the trade-off table numbers them), when it names one."""
    res = mixed.result
    if r.mix.pick:
        if not 1 <= r.mix.pick <= len(res.rows):
            raise ConfigError(
                f"mix.pick = {r.mix.pick}: the trade-off table has rows 1 to "
                f"{len(res.rows)}; pick one of those numbers (see {r.name}.mix.md)."
            )
        res = dataclasses.replace(res, chosen=r.mix.pick - 1, picked=True)
    return res
