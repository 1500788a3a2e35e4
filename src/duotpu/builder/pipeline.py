"""The build: the recipe settled once, then the stages, each in the module named for what it does.

    prepare   export/  transform/  reference/   (the recipe settled, the model the compiler reads)
    quantize  calibrate/  deploy-MODE/          (run_calibration, model_deploy per mode)
    verify    verify-MODE/                      (each cvimodel against fp32)
    mixing    mix/                              (BF16 layers until INT8 meets a target)
    deliver   the final files and manifest.json

Stages run in their own folders of the work directory (`duotpu.builder.workdir`); each
returns a frozen dataclass (`duotpu.builder.results`) that the work directory stores in the
stage's ``stage.json`` and reads back, typed, when the stage is cached. Every stage that calls
the compiler has ``compiler.code_digest()`` in its cache key. The BF16 branch runs concurrently
with calibration and INT8 deployment.
"""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any, Callable

from duotpu import compiler
from duotpu.compiler.executor import Executor
from duotpu.config.errors import (
    BuildFailed,
    DuoTpuError,
    PartialBuild,
    ToleranceError,
)
from duotpu.config.recipe import Recipe

from . import ways
from .calibdata import CalibrationData
from .deliver import default_out_dir, estimate_latency, finish, write_failures
from .mixing import stage_mix, validation_images
from .prepare import (
    VERIFY_IMAGES,
    check_inputs_early,
    check_qtable,
    settle_input_shape,
    settle_task,
    stage_export,
    stage_reference,
    stage_transform,
    test_images,
)
from .quantize import (
    builtin_calibration_set,
    deploy_options,
    stage_calibrate,
    stage_deploy,
    stage_round,
    with_calibration_arrays,
)
from .report import write_build_report
from .results import (  # the result types: callers of the pipeline find them here too
    BuildResult,
    Calibrated,
    Deployed,
    Exported,
    Mixed,
    ModelArtifact,
    Referenced,
    Transformed,
    Verified,
)
from .verify import match_outputs, stage_verify
from .workdir import (
    EventSink,
    Stage,
    StageEvent,
    WorkDir,
    check_writable,
    exclusive,
    no_events,
    work_root,
)

__all__ = [
    "Exported",
    "Transformed",
    "Referenced",
    "Calibrated",
    "Deployed",
    "Verified",
    "Mixed",
    "ModelArtifact",
    "BuildResult",
    "StageEvent",
    "EventSink",
    "build",
    "default_out_dir",
    "deploy_options",
    "settle_task",
    "stage_export",
    "stage_transform",
    "test_images",
    "validation_images",
    "match_outputs",
    "VERIFY_IMAGES",
]


def build(
    recipe: Recipe,
    out_dir: Path | None = None,
    work_dir: Path | None = None,
    events: EventSink = no_events,
    executor: Executor | None = None,
    calibration_data: CalibrationData | None = None,
) -> BuildResult:
    """Run the pipeline export → transform → calibrate → deploy (per mode) → verify.

    Final files go to ``out_dir`` (default ``build/<name>``): one cvimodel per mode, the resolved
    recipe and ``manifest.json``. Intermediate files go to ``work_dir`` (default
    ``out_dir/work``). Raises a `DuoTpuError` subclass on failure.
    """
    recipe, note = settle_input_shape(recipe.validate())
    recipe = recipe.validate()
    compiler.clear_cancel()
    out_dir = Path(out_dir) if out_dir else default_out_dir(recipe)
    # the user's data before anything is made: a refused build leaves no work folder behind
    check_inputs_early(recipe, calibration_data is not None)
    check_writable(out_dir)
    root, moved = work_root(out_dir, Path(work_dir) if work_dir else None, recipe.name)
    with exclusive(root):  # one build per work folder at a time
        wd = WorkDir(root, events)
        for line in (moved, note):
            if line:
                events(StageEvent("export", "info", message=line))

        def build_in(r: Recipe, out: Path, sink: EventSink) -> BuildResult:
            wd.events = sink
            wd.stages.clear()  # what an earlier pass (a cut tried) ran is not this pass's
            wd.failed.clear()
            try:
                return _build_in(wd, r, out, sink, executor, calibration_data)
            finally:
                wd.events = events

        try:
            return build_in(recipe, out_dir, events)
        except DuoTpuError as e:
            failure = ways.cut_to_try(e, recipe)
            if failure is None:
                raise
            return ways.try_cuts(wd, recipe, out_dir, events, e, failure, build_in)


def _build_in(
    wd: WorkDir,
    recipe: Recipe,
    out_dir: Path,
    events: EventSink,
    executor: Executor | None,
    calibration_data: CalibrationData | None,
) -> BuildResult:
    exported = stage_export(wd, recipe)
    if calibration_data is not None:
        recipe = with_calibration_arrays(recipe, calibration_data, wd, exported.result)
    recipe, note = settle_task(recipe, exported.result)
    if note:
        events(StageEvent("export", "info", message=note))
    with cf.ThreadPoolExecutor(max_workers=1) as early:
        # the built-in calibration crops (1 s for 100) on the core the transform leaves free
        crops = (
            early.submit(builtin_calibration_set, wd, recipe)
            if "int8" in recipe.quantize and recipe.calibration.images == "builtin:natural"
            else None
        )
        transformed = stage_transform(wd, recipe, exported)
        if crops is not None:
            crops.result()
    verify_images = test_images(recipe, wd.root / "inputs")
    if len(verify_images) > 1:
        events(
            StageEvent(
                "verify",
                "info",
                message=f"verifying on {len(verify_images)} "
                f"{'samples' if recipe.tensor_inputs else 'images'}: "
                + ", ".join(p.name for p in verify_images),
            )
        )
    if recipe.mix.qtable:
        check_qtable(recipe, transformed)
    # The INT8 branch (calibrate → deploy) is the critical path; the other modes and the fp32
    # reference run beside it at a lower CPU priority.
    critical = "int8" if "int8" in recipe.quantize else recipe.quantize[0]
    with cf.ThreadPoolExecutor(max_workers=1) as ref_pool:
        ref_future = ref_pool.submit(stage_reference, wd, transformed, exported.result.whole)

        estimates: dict[str, Any] = {}

        def branch(mode: str) -> tuple[Stage[Deployed], Stage[Verified]]:
            cal = stage_calibrate(wd, recipe, transformed) if mode == "int8" else None
            weights = transformed
            if cal is not None and recipe.calibration.rounding == "optimized":
                rounded = stage_round(wd, recipe, transformed, cal)
                weights = rounded.part(rounded.result.transformed)
                cal = rounded.part(rounded.result.calibrated)
            dep = stage_deploy(wd, recipe, mode, weights, cal, background=mode != critical)
            # the latency estimate (a second or two of pure Python) beside the verification, in
            # the branch: a BF16 model's is off the critical path altogether
            with cf.ThreadPoolExecutor(max_workers=1) as est_pool:
                est = est_pool.submit(estimate_latency, dep.result.cvimodel)
                verified = stage_verify(
                    wd,
                    recipe,
                    mode,
                    ref_future.result(),
                    dep,
                    transformed,
                    verify_images[1:],
                    exported.result,
                )
                estimates[mode] = est.result()
            return dep, verified

        results, errors = _run_branches(branch, recipe.quantize)
        failed: dict[str, BaseException] = dict(
            zip([m for m in recipe.quantize if m not in results], errors)
        )
        # with a mixed-precision target (or table), an INT8 model below model_deploy's
        # tolerance is where the search starts: it keeps the layers where INT8 hurts in BF16
        rescue = (
            bool(recipe.mix.target or recipe.mix.qtable)
            and set(failed) == {"int8"}
            and isinstance(failed["int8"], ToleranceError)
            and "calibrate" in wd.stages
        )
        referenced = None
        if results or rescue:  # the reference of a partial build is still the reference
            try:
                referenced = ref_future.result()
            except DuoTpuError as e:
                errors.append(e)
                results, rescue = {}, False
    if errors and not results and not rescue:
        raise branch_error(errors)
    mixed = None
    if (recipe.mix.target or recipe.mix.qtable) and ("int8" in results or rescue):
        if rescue:
            events(
                StageEvent(
                    "mix",
                    "warning",
                    message="the pure INT8 model failed verification; "
                    + (
                        "building the given quantize table"
                        if recipe.mix.qtable
                        else "searching for the layers to keep in BF16"
                    ),
                )
            )
        # with the optimized rounding, the search starts from the rounded INT8 model: its
        # weights (the BF16 layers take them too) and its tuned table
        rounded = wd.stages.get("round")
        mixed = stage_mix(
            wd,
            recipe,
            rounded.part(rounded.result.transformed) if rounded else transformed,
            rounded.part(rounded.result.calibrated) if rounded else wd.stages["calibrate"],
            # a pure INT8 model that deployed but missed verification is the search's first row
            results["int8"][0] if "int8" in results else wd.stages.get("deploy-int8"),
            results["bf16"][0] if "bf16" in results else None,
            executor,
            rounded.result if rounded else None,
        )
    assert referenced is not None  # no branch failed, or the mix search took INT8's place
    if errors:
        # deliver what verified (and the mixed model), and say what did not
        partial = finish(
            recipe, out_dir, wd, exported, transformed, referenced, results, mixed, estimates
        )
        partial.failed = {m: str(e) for m, e in failed.items()}
        partial.failed_stages = dict(wd.failed)
        for m in failed:  # a file an earlier build left under a failed mode's name is not this
            for stale in out_dir.glob(f"{recipe.name}_{recipe.chip}_{m}*.cvimodel"):
                stale.unlink()
        write_failures(partial)
        partial.report = write_build_report(partial)
        raise PartialBuild(partial, failed)
    result = finish(
        recipe, out_dir, wd, exported, transformed, referenced, results, mixed, estimates
    )
    if recipe.deploy.save_input_files:
        from duotpu.builder.replay import write_input_archive

        result.inputs_archive = write_input_archive(result)
    result.report = write_build_report(result)
    return result


def _run_branches(
    branch: Callable[[str], Any], modes: tuple[str, ...]
) -> tuple[dict[str, Any], list[BaseException]]:
    """Run ``branch(mode)`` for every mode at once; (results by mode, errors in mode order).
    A failing branch does not stop the others (their finished stages are kept); an interrupt
    stops every child process at once instead of waiting for the running compiler steps."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    with cf.ThreadPoolExecutor(max_workers=len(modes)) as pool:
        futures = {pool.submit(branch, m): m for m in modes}
        try:
            for fut in cf.as_completed(futures):
                try:
                    results[futures[fut]] = fut.result()
                except Exception as e:  # noqa: BLE001 — collected and raised by build()
                    errors[futures[fut]] = e
        except BaseException:
            compiler.stop_children()
            raise
    interrupts = [e for e in errors.values() if isinstance(e, KeyboardInterrupt)]
    if interrupts:
        raise interrupts[0]
    return results, [errors[m] for m in modes if m in errors]


def branch_error(errors: list[BaseException]) -> BaseException:
    """The one error a failed build raises: the error itself, or every branch's together."""
    return errors[0] if len(errors) == 1 else BuildFailed(errors)
