"""Quantizing: the calibration images or samples, the ``calibrate`` stage (run_calibration) and
the ``deploy`` stage (model_deploy, per mode), with the ways around a compiler failure it
checks."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from duotpu import compiler
from duotpu.builder import calibdata, calibshare, rounding
from duotpu.builder import export as export_mod
from duotpu.config.errors import (
    CompilerFailure,
    ConfigError,
    DataError,
    DuoTpuError,
    ToleranceError,
    ToolchainError,
)
from duotpu.config.recipe import Recipe
from duotpu.core import images
from duotpu.core.preprocess import preprocess_image

from .calibdata import CalibrationData
from .prepare import folder_key, tensor_inputs
from .results import (
    Calibrated,
    Deployed,
    Exported,
    RoundedModel,
    Transformed,
)
from .workdir import (
    Stage,
    StageEvent,
    WorkDir,
    tool_name,
)


def builtin_calibration_set(wd: WorkDir, r: Recipe) -> Path:
    """The built-in calibration crops for the recipe's count and seed, made once per work dir."""
    cal = r.calibration
    if cal.images != "builtin:natural":
        raise DataError(
            f"Unknown calibration set {cal.images!r}: use 'builtin:natural' or a folder of images."
        )
    final = wd.root / "calibration-images" / f"natural-n{cal.count}-seed{cal.seed}"
    if not final.is_dir():
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        images.write_calibration_set(tmp, cal.count, cal.seed)
        os.replace(tmp, final)
    return final


def with_calibration_arrays(
    r: Recipe, data: CalibrationData, wd: WorkDir, exported: Exported
) -> Recipe:
    """The recipe calibrating on arrays given in Python (see `.calibdata`), written once
    into the work directory; verified on the first of them unless it names a test image."""
    if r.deploy.fuse_preprocess:
        raise ConfigError(
            "Calibration arrays are preprocessed inputs, but with deploy.fuse_preprocess the "
            "model takes raw images: calibrate on a folder of images (calibration.images)."
        )
    inputs = tensor_inputs(r) if r.tensor_inputs else [(exported.input_name, r.inputs[0].shape)]
    folder = calibdata.write_arrays(data, wd.root / "calibration-data", inputs)
    files = calibdata.array_files(folder)
    # every array given is used: calibration.count is for image folders, not for data the
    # caller chose
    wd.events(
        StageEvent("calibrate", "info", message=f"calibrating on the {len(files)} arrays given")
    )
    return replace(
        r,
        calibration=replace(r.calibration, images=str(folder), count=len(files)),
        # a tensor model is verified on a few of them (test_images); an image model on one
        test_image=r.test_image or ("" if r.tensor_inputs else str(files[0])),
    )


#: the fewest calibration images a build accepts (README: "The recipe")
MIN_CALIBRATION_IMAGES = 4


def _calibration_images(
    r: Recipe, folder: Path, wd: WorkDir, compiled: tuple[str, ...] = ()
) -> tuple[Path, int]:
    """Fill ``folder/images`` with the calibration images; returns (folder, skipped count)."""
    cal = r.calibration
    target = folder / "images"
    if cal.images.startswith("builtin:"):
        target.symlink_to(builtin_calibration_set(wd, r).resolve())
        return target, 0
    if r.tensor_inputs:  # samples of the inputs: checked, written as float32 .npz once
        samples = calibdata.folder_samples(Path(cal.images), tensor_inputs(r), cal.count)
        made = calibdata.write_arrays(samples, wd.root / "calibration-data", tensor_inputs(r))
        # one .npy per input the compiled model reads, in its order
        listed = calibdata.npy_list(made, list(compiled) or [i.name for i in r.inputs])
        (folder / "inputs.txt").symlink_to(listed.resolve())
        return folder / "inputs.txt", 0
    arrays = calibdata.array_files(Path(cal.images))
    if arrays:  # preprocessed inputs (calibration_data): tpu_mlir reads .npz as model inputs
        target.mkdir(parents=True, exist_ok=True)
        for p in arrays[: cal.count]:
            (target / p.name).symlink_to(p.resolve())
        return target, 0
    scan = (
        images.scan_images(Path(cal.images))
        if Path(cal.images).is_dir()
        else images.scan_list(Path(cal.images))
    )
    if not scan.paths:
        raise DataError(
            f"The calibration folder {cal.images} has no readable images "
            f"({len(scan.skipped)} other files). Put JPEG or PNG images of the kind "
            "the model will see there (100–1000 is typical), or use "
            "calibration.images = 'builtin:natural'."
        )
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cal.seed)
    # the seed's choice first, then the others in order: a broken file is replaced by the next
    first = [int(i) for i in sorted(rng.choice(len(scan.paths), min(cal.count, len(scan.paths)),
                                                replace=False))]  # fmt: skip
    taken = set(first)
    order = first + [i for i in range(len(scan.paths)) if i not in taken]
    chosen: list[Path] = []
    broken: list[tuple[Path, str]] = []
    for i in order:
        if len(chosen) == cal.count:
            break
        problem = images.image_problem(scan.paths[i])
        if problem:
            broken.append((scan.paths[i], problem))
        else:
            chosen.append(scan.paths[i])
    if broken:
        p, why = broken[0]
        wd.events(
            StageEvent(
                "calibrate",
                "warning",
                message=f"left out {len(broken)} image file(s) that do not decode whole "
                f"(first: {p.name}: {why})",
            )
        )
    if len(chosen) < MIN_CALIBRATION_IMAGES:
        raise DataError(
            f"The calibration folder {cal.images} has {len(chosen)} whole image(s); INT8 "
            f"calibration needs at least {MIN_CALIBRATION_IMAGES} (and works best with 25 or "
            "more of the kind the model will see). Add images there, or use calibration.images "
            "= 'builtin:natural'."
        )
    if len(chosen) < cal.count:
        wd.events(
            StageEvent(
                "calibrate",
                "warning",
                message=f"calibrating on {len(chosen)} image(s), fewer than calibration.count = "
                f"{cal.count}: that is all {cal.images} holds",
            )
        )
    for i, p in enumerate(chosen):
        (target / f"{i:05d}{p.suffix.lower()}").symlink_to(p.resolve())
    return target, len(scan.skipped)


def _calibration_files(spec: Path) -> list[Path]:
    """The files a calibration spec names: a folder's files, or a list file's lines."""
    return images.list_files(spec) if spec.is_dir() else [spec, *images.scan_list(spec).paths]


def _thresholds_options(cal: Any) -> dict[str, Any]:
    """The calibration options the thresholds depend on (not how weights are rounded)."""
    return {k: v for k, v in asdict(cal).items() if k != "rounding"}


#: calibration samples the weight rounding is chosen on (at most): its time grows with them
ROUNDING_IMAGES = 16


def _rounding_sources(r: Recipe, cal: Calibrated) -> list[Path]:
    """The calibration files the rounding is chosen on: the first ROUNDING_IMAGES of them
    (images, or ``.npz`` / ``.npy`` samples of a model's inputs)."""
    if r.tensor_inputs:
        return calibdata.tensor_files(Path(r.calibration.images))[:ROUNDING_IMAGES]
    if not r.calibration.images.startswith("builtin:"):
        arrays = calibdata.array_files(Path(r.calibration.images))
        if arrays:  # calibration_data from Python
            return arrays[:ROUNDING_IMAGES]
    files = [p for p in _calibration_files(cal.images) if p.is_file() and p != cal.images]
    return files[:ROUNDING_IMAGES]


def _rounding_samples(r: Recipe, t: Transformed, paths: list[Path]) -> list[dict[str, Any]]:
    """Each calibration file as the compiled model's inputs by name."""
    if r.tensor_inputs:
        samples = [calibdata.read_sample(p, tensor_inputs(r)) for p in paths]
        wanted = t.input_names or tuple(i.name for i in r.inputs)
        return [{k: v for k, v in s.items() if k in wanted} for s in samples]
    name = t.input_names[0] if t.input_names else r.inputs[0].name
    shape = (1, *tuple(r.inputs[0].shape)[1:])
    return [
        calibdata.read_sample(p, [(name, shape)])  # calibration_data written as .npz
        if p.suffix.lower() == ".npz"
        else {name: preprocess_image(p, r.preprocess, shape)}
        for p in paths
    ]


def stage_round(
    wd: WorkDir, r: Recipe, transformed: Stage[Transformed], calibrated: Stage[Calibrated]
) -> Stage[RoundedModel]:
    """``calibration.rounding = "optimized"``: the transformed model with its convolution and
    matrix-multiplication weights moved to the integers an output-error-minimising rounding
    chooses on the calibration samples, and the calibration table with the thresholds of those
    layers' inputs tuned against the same error (`duotpu.builder.rounding`), for the INT8
    deploy."""
    t, cal = transformed.result, calibrated.result
    sources = _rounding_sources(r, cal)
    key: dict[str, Any] = {
        "mlir": compiler.file_digest(t.mlir),
        "weights": compiler.file_digest(t.weights),
        "table": compiler.file_digest(cal.table),
        "samples": folder_key(sources),
        "preprocess": asdict(r.preprocess),
        "iterations": rounding.ITERATIONS,
        "passes": rounding.PASSES,
        "code": [compiler.code_digest(), compiler.file_digest(Path(rounding.__file__))],
        "versions": compiler.versions(),
    }

    def run(folder: Path) -> RoundedModel:
        graph = compiler.mlir_graph(t.mlir, folder / "graph.log")
        with np.load(t.weights) as npz:
            weights = {k: np.array(npz[k]) for k in npz.files}
        found = rounding.layers(t.mlir, graph, set(weights))
        samples = _rounding_samples(r, t, sources)
        wanted = sorted({ly.input for ly in found})
        first = next(iter(samples[0])) if samples else r.inputs[0].name
        acts = compiler.run_tensors("mlir", t.mlir, first, samples, wanted)
        thresholds = rounding.read_thresholds(cal.table)
        tune = rounding.tunable(found, graph, thresholds)

        def progress(done: int, total: int) -> None:
            wd.events(StageEvent("round", "progress", message=f"{done}/{total} layers"))

        new, report, tuned = rounding.optimize(
            found,
            weights,
            acts,
            progress,
            stop=compiler.check_cancelled,
            thresholds=thresholds,
            tune=tune,
            ceilings=rounding.read_ceilings(cal.table),
        )
        if rounding.PASSES > 1 and new:
            # the second pass, in graph order, a group of layers at a time: each refitted on
            # its inputs as the INT8 model computes them with the layers before it already
            # refitted (the error that reaches it included)
            current = {**weights, **new}
            refit: list[rounding.Rounded] = []
            inputs_of = {ly.name: ly.input for ly in found}
            for start in range(0, len(found), rounding.GROUP):
                group = found[start : start + rounding.GROUP]
                actual = _int8_activations(
                    r,
                    t,
                    current,
                    cal.table,
                    tuned,
                    samples,
                    sorted({ly.input for ly in group}),
                    folder / "pass2",
                )
                done_new, done_report, _ = rounding.optimize(
                    group,
                    weights,
                    acts,
                    stop=compiler.check_cancelled,
                    thresholds={**thresholds, **tuned},
                    actual=actual,
                )
                current.update(done_new)
                new.update(done_new)
                refit += done_report
                wd.events(
                    StageEvent(
                        "round",
                        "progress",
                        message=f"{len(refit)}/{len(found)} layers refitted on INT8 inputs",
                    )
                )
            # the thresholds as the first pass reported them (table's, and tuned)
            report = [
                replace(x, threshold_table=thresholds.get(inputs_of.get(x.layer, "")))
                for x in refit
            ]
        weights.update(new)
        out = _model_copy(t, folder, weights)
        table = folder / cal.table.name
        rounding.write_thresholds(cal.table, table, tuned)
        (folder / "rounding.json").write_text(json.dumps([asdict(x) for x in report], indent=1))
        better = sum(x.mse_optimized < (x.mse_table or x.mse_nearest) for x in report)
        refitted = sum(x.on_int8_inputs for x in report)
        wd.events(
            StageEvent(
                "round",
                "info",
                message=f"{len(report)} layers rounded on {len(sources)} calibration samples: "
                f"{better} closer to fp32 than round-to-nearest; {len(tuned)} of "
                f"{len(tune)} input thresholds tuned"
                + (f"; {refitted} refitted on the INT8 model's own inputs" if refitted else ""),
            )
        )
        return RoundedModel(
            out,
            replace(cal, table=table),
            t.weights,
            {x.layer: x.weight for x in report},
        )

    return wd.run("round", key, run, RoundedModel)


def _model_copy(t: Transformed, folder: Path, weights: dict[str, Any]) -> Transformed:
    """The transformed model in ``folder`` with ``weights`` (its MLIR, test input and fp32
    outputs copied)."""
    out = replace(
        t,
        mlir=folder / t.mlir.name,
        weights=folder / t.weights.name,
        test_input=folder / t.test_input.name,
        top_outputs=folder / t.top_outputs.name,
    )
    for src, dst in ((t.mlir, out.mlir), (t.test_input, out.test_input),
                     (t.top_outputs, out.top_outputs)):  # fmt: skip
        shutil.copyfile(src, dst)
    np.savez(out.weights, **weights)
    return out


def _int8_activations(
    r: Recipe,
    t: Transformed,
    weights: dict[str, Any],
    table: Path,
    tuned: dict[str, float],
    samples: list[dict[str, Any]],
    wanted: list[str],
    folder: Path,
) -> list[dict[str, Any]]:
    """The tensors ``wanted`` on each sample as the INT8 model with ``weights`` and ``table``
    (its thresholds ``tuned``) computes them: tpu_mlir lowers it to its quantized MLIR (no
    cvimodel) and its interpreter runs that."""
    folder.mkdir(parents=True, exist_ok=True)
    files = _model_copy(t, folder, weights)
    moved = folder / table.name
    rounding.write_thresholds(table, moved, tuned)
    opts = replace(
        deploy_options(r, "int8", None),
        tolerance=compiler.NO_TOLERANCE,
        excepts=(),
        fuse_preprocess="",
        aligned_input=False,
    )
    lowered = compiler.deploy(
        files.files,
        folder / "deploy",
        folder / "deploy.log",
        opts,
        cvimodel_name="pass1.cvimodel",
        calibration_table=moved,
        lower_only=True,
    )
    first = next(iter(samples[0])) if samples else r.inputs[0].name
    got = compiler.run_tensors("mlir", lowered.tpu_mlir, first, samples, wanted)
    for left in folder.iterdir():  # the model's copies: only the log stays
        if left.name != "deploy.log":
            shutil.rmtree(left) if left.is_dir() else left.unlink()
    return got


def stage_calibrate(wd: WorkDir, r: Recipe, transformed: Stage[Transformed]) -> Stage[Calibrated]:
    t = transformed.result
    cal = r.calibration
    data_key: Any = (
        cal.images
        if cal.images.startswith("builtin:")
        else {"folder": cal.images, "files": folder_key(_calibration_files(Path(cal.images)))}
    )
    key: dict[str, Any] = {
        "mlir": compiler.file_digest(t.mlir),
        "weights": compiler.file_digest(t.weights),
        "data": data_key,
        "calibration": _thresholds_options(cal),
        "code": compiler.code_digest(),
        "versions": compiler.versions(),
    }

    # what a table must have been made under to serve a cut of its model (calibshare)
    conditions = {
        "data": data_key,
        "calibration": _thresholds_options(cal),
        "preprocess": asdict(r.preprocess),
        "inputs": [[i.name, list(i.shape)] for i in r.inputs],
        "code": key["code"],
        "versions": key["versions"],
    }

    def run(folder: Path) -> Calibrated:
        data, skipped = _calibration_images(r, folder, wd, t.input_names)
        if skipped:
            wd.events(
                StageEvent(
                    "calibrate",
                    "warning",
                    message=f"skipped {skipped} file(s) in {cal.images} that are "
                    "not readable images",
                )
            )
        held = data.read_text().splitlines() if data.is_file() else list(data.iterdir())
        n = min(cal.count, len(held))
        table = folder / f"{tool_name(r.name)}_cali_table"
        pool = wd.shared_folder("shared-calibrations")
        shared = calibshare.shared_table(pool, conditions, t.mlir, t.weights)
        if shared is not None:
            earlier, count = shared
            shutil.copyfile(earlier, table)
            wd.events(
                StageEvent(
                    "calibrate",
                    "info",
                    message=f"thresholds of all {count} layers taken from the table of the "
                    "model this one is cut from (same images, options and weights)",
                )
            )
            return Calibrated(table, data, n, skipped)
        for src in (t.mlir, t.weights):  # run_calibration works next to the MLIR
            (folder / src.name).symlink_to(src.resolve())

        def calibrate(tune_num: int, log: str) -> None:
            compiler.calibrate(
                folder / t.mlir.name,
                data,
                n,
                folder / f"{tool_name(r.name)}_cali_table",
                folder / log,
                method=cal.method,
                histogram_bins=cal.histogram_bins,
                tune_num=tune_num,
            )

        try:
            calibrate(cal.tune_num, "calibrate.log")
        except ToolchainError:
            stopped = compiler.tuning_failure(folder / "calibrate.log") if cal.tune_num else ""
            if not stopped:
                raise
            # the thresholds were collected; only tpu_mlir's refinement of them failed
            wd.events(
                StageEvent(
                    "calibrate",
                    "warning",
                    message=f"tpu_mlir's threshold tuning stopped at {stopped}; calibrated "
                    "again without it (as calibration.tune_num = 0)",
                )
            )
            calibrate(0, "calibrate-untuned.log")
        calibshare.keep(pool, table, conditions, calibshare.weights_index(t.weights))
        return Calibrated(table, data, n, skipped)

    return wd.run("calibrate", key, run, Calibrated)


def deploy_options(r: Recipe, mode: str, test_image: Path | None) -> compiler.DeployOptions:
    """model_deploy's options for ``mode`` from the recipe — the one place they are assembled,
    for the deploy stage, every mixed-precision candidate and the old command lines."""
    d, tol = r.deploy, r.tolerance
    return compiler.DeployOptions(
        quantize=mode,
        chip=r.chip,
        tolerance=tol.int8 if mode == "int8" else tol.bf16,
        correctness=tol.correctness,
        excepts=tuple(tol.excepts),
        fuse_preprocess=d.pixel_format if d.fuse_preprocess else "",
        aligned_input=d.aligned_input,
        test_image=test_image,
        model_version=d.model_version,
        inputs_type=d.inputs_type,
        outputs_type=d.outputs_type,
    )


def options_key(opts: compiler.DeployOptions) -> dict[str, Any]:
    """Deploy options in a cache key: the test image by its content (a fused-preprocess deploy
    reads it), not by where the work directory happens to be."""
    return asdict(opts) | {"test_image": None}


def stage_deploy(
    wd: WorkDir,
    r: Recipe,
    mode: str,
    transformed: Stage[Transformed],
    calibrated: Stage[Calibrated] | None,
    background: bool = False,
) -> Stage[Deployed]:
    t = transformed.result
    d = r.deploy
    # model_deploy's check against fp32 is all but off here and made at the recipe's tolerance
    # by the verify stage: a changed tolerance re-checks in a second instead of redeploying
    asked = deploy_options(r, mode, t.test_image)
    opts = replace(asked, tolerance=compiler.NO_TOLERANCE)
    table = calibrated.result.table if calibrated else None
    key: dict[str, Any] = {
        "mode": mode,
        "name": r.name,
        "options": options_key(opts),
        "mlir": compiler.file_digest(t.mlir),
        "weights": compiler.file_digest(t.weights),
        "test_input": compiler.file_digest(t.test_input),
        "table": compiler.file_digest(table) if table else None,
        "batch_sizes": list(d.batch_sizes),
        "code": compiler.code_digest(),
        "versions": compiler.versions(),
    }
    if d.fuse_preprocess:
        key["test_image"] = compiler.file_digest(t.test_image)
    if d.batch_sizes != (1,):
        key["onnx"] = compiler.file_digest(t.onnx)
        key["preprocess"] = asdict(r.preprocess)
        key["transform_tolerance"] = r.tolerance.transform
    cvi_name = cvimodel_file(tool_name(r.name), r, mode)

    def run(folder: Path) -> Deployed:
        transformed_files = t.files
        simulated = True
        if d.batch_sizes == (1,):
            try:
                files = compiler.deploy(
                    transformed_files,
                    folder,
                    folder / "deploy.log",
                    opts,
                    cvimodel_name=cvi_name,
                    calibration_table=table,
                    background=background,
                )
            except ToleranceError as e:  # a sign flip, the one thing NO_TOLERANCE still fails
                bad = compiler.compare_failures(e.log_path, asked.tolerance) if e.log_path else []
                raise ToleranceError(e.what, bad or e.mismatches, e.advice, e.log_path) from None
            except CompilerFailure as e:
                files = compiler.DeployFiles(
                    folder, t.files.name, mode.upper(), r.chip, folder / cvi_name
                )
                if not (
                    e.failure.kind == "simulator-cmdbuf"
                    and files.cvimodel.is_file()
                    and files.tpu_outputs.is_file()
                ):
                    raise _ways_around(e, r, mode, t, table, folder, background) from None
                # the board's runtime loads what the host simulator cannot: check the model on
                # its quantized MLIR instead (INT8: bit-exact with the simulator)
                from duotpu.cvimodel import read_cvimodel

                outs = read_cvimodel(files.cvimodel).programs[0].outputs
                compiler.outputs_without_simulator(files, [o.name for o in outs])
                simulated = False
                wd.events(
                    StageEvent(
                        f"deploy-{mode}",
                        "warning",
                        message=(
                            "the CV18xx simulator cannot load this cvimodel (a command buffer "
                            "larger than it reserves; the board has no such limit): verified on "
                            "the quantized MLIR instead"
                        ),
                    )
                )
        else:
            files = compiler.deploy_batches(
                transformed_files,
                t.onnx,
                r.inputs[0].shape,
                r.preprocess,
                d.batch_sizes,
                folder,
                opts,
                cvimodel_name=cvi_name,
                transform_tolerance=r.tolerance.transform,
                calibration_table=table,
                background=background,
            )
        info = compiler.model_tool_info(files.cvimodel, folder / "model_tool_info.log")
        return Deployed(
            files.cvimodel,
            files.cvimodel.stat().st_size,
            info.ion_mb,
            info.version,
            files.model_outputs,
            files.tpu_mlir,
            simulated,
            None if opts.self_checked or not files.tpu_outputs.is_file() else files.tpu_outputs,
        )

    return wd.run(f"deploy-{mode}", key, run, Deployed)


def _ways_around(
    e: CompilerFailure,
    r: Recipe,
    mode: str,
    t: Transformed,
    table: Path | None,
    folder: Path,
    background: bool,
) -> CompilerFailure:
    """The failure explained with the ways around that were checked: a cv180x layer too large
    for its local memory is deployed for cv181x (one model_deploy, no new transform), and a
    failing last layer gets the model tensor to cut the TPU model at."""
    failure = e.failure
    works: bool | None = None
    if r.chip == "cv180x" and failure.kind in ("kernel", "local-memory", "tiu-parameter"):
        opts = replace(deploy_options(r, mode, t.test_image), chip="cv181x")
        try:
            compiler.deploy(
                t.files,
                folder / "try-cv181x",
                folder / "try-cv181x" / "deploy.log",
                opts,
                cvimodel_name=f"{tool_name(r.name)}_cv181x_{mode}.cvimodel",
                calibration_table=table,
                background=background,
            )
            works = True
        except DuoTpuError:
            works = False
    cut = ""
    tail = failure.tail_layer
    if tail is not None:
        cut = export_mod.tensor_before(t.onnx, tail.name, tail.op)
    other = "bf16" if mode == "int8" else "int8"
    text = compiler.diagnose.explain(
        failure,
        r.chip,
        mode,
        other_chip_works=works,
        cut_at=cut,
        other_mode_built=other in r.quantize,
    )
    return CompilerFailure(e, text, failure, cut)


def cvimodel_file(name: str, recipe: Recipe, mode: str) -> str:
    """A cvimodel's file name: ``name``, the chip, the mode and the batch sizes
    (``MyNet_cv180x_int8.cvimodel``, ``net_cv180x_bf16_bs1_bs4.cvimodel``)."""
    sizes = recipe.deploy.batch_sizes
    suffix = "" if sizes == (1,) else "_" + "_".join(f"bs{b}" for b in sizes)
    return f"{name}_{recipe.chip}_{mode}{suffix}.cvimodel"
