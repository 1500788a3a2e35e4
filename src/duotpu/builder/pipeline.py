"""The build pipeline: the stages and the whole build.

Stages run in their own folders of the work directory (:mod:`duotpu.builder.workdir`)::

    export/  transform/  reference/  calibrate/  deploy-MODE/  verify-MODE/  mix/

Each stage returns a frozen dataclass (:class:`Exported`, :class:`Transformed`, …) that the work
directory stores in the stage's ``stage.json`` and reads back, typed, when the stage is cached.
Every stage that calls the compiler has ``compiler.code_digest()`` in its cache key. The BF16
branch runs concurrently with calibration and INT8 deployment.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import os
import shutil
import struct
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from numpy.typing import NDArray

from duotpu import compiler
from duotpu.builder import calibdata, intake, summary
from duotpu.builder import export as export_mod
from duotpu.compiler.executor import Executor
from duotpu.config.errors import (
    BuildFailed,
    CompilerFailure,
    ConfigError,
    DataError,
    DuoTpuError,
    Mismatch,
    PartialBuild,
    ShapeError,
    ToleranceError,
    ToolchainError,
)
from duotpu.config.recipe import InputSpec, Mix, Recipe
from duotpu.core import images, metrics, onnxrt, preprocess
from duotpu.core.files import atomic_write
from duotpu.core.head import YoloHead

from . import results
from .calibdata import CalibrationData
from .manifest import MANIFEST, Manifest, ManifestModel
from .report import write_build_report
from .results import (
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
from .workdir import (
    EventSink,
    Stage,
    StageEvent,
    WorkDir,
    atomic_copy,
    check_writable,
    exclusive,
    no_events,
    to_json,
    tool_name,
    work_root,
    write_json,
)

# the result types are re-exported: callers of the pipeline find them here too
__all__ = [*results.__all__, "StageEvent", "EventSink", "build", "deploy_options"]


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------
def _files_key(paths: list[Path]) -> list[list[Any]]:
    return [[str(p), compiler.file_digest(p)] for p in paths]


def _folder_key(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def stage_export(wd: WorkDir, r: Recipe) -> Stage[Exported]:
    src = r.model
    key: dict[str, Any] = {
        "source": src.source,
        "weights": src.weights,
        "opset": src.opset,
        "kwargs": src.kwargs,
        "constants": src.constants,
        "shape": list(r.inputs[0].shape),
        "input": r.inputs[0].name,
        "batch_sizes": list(r.deploy.batch_sizes),
        "task": r.task,
        "outputs": list(src.outputs),
        "preprocess": asdict(r.preprocess),  # random weights: BatchNorm statistics from it
        "files": _files_key(export_mod.source_files(src)),
        "code": [compiler.file_digest(Path(str(m.__file__))) for m in (export_mod, intake)],
        "versions": compiler.versions(),
    }

    if r.tensor_inputs:
        key["inputs"] = [[i.name, list(i.shape)] for i in r.inputs]
    if r.task == "detect":
        key["detect"] = {"classes": list(r.detect.classes), "anchors": list(r.detect.anchors)}
        key["code_yolo"] = compiler.file_digest(Path(export_mod.__file__).with_name("yolo.py"))

    def run(folder: Path) -> Exported:
        m = export_mod.export_onnx(
            src,
            {i.name: i.shape for i in r.inputs} if len(r.inputs) > 1 else r.inputs[0].shape,
            r.inputs[0].name,
            folder / f"{tool_name(r.name)}.onnx",
            r.deploy.batch_sizes,
            task=r.task,
            detect=r.detect,
            preprocess=r.preprocess,
        )
        for note in m.notes:
            wd.events(StageEvent("export", "info", message=note))
        head = None
        if m.head is not None:
            head = folder / "head.json"
            m.head.save(head)
            wd.events(
                StageEvent(
                    "export",
                    "info",
                    message=(
                        f"detector cut before the box decode: {m.head.kind} head, strides "
                        f"{m.head.strides}, {m.head.nc} classes; the TPU returns "
                        f"{len(m.head.outputs)} head maps"
                    ),
                )
            )
        whole = m.onnx_path.with_name(m.onnx_path.stem + "_full.onnx") if m.tail else None
        return Exported(
            m.onnx_path, m.input_name, tuple(m.output_names), head, m.notes, m.tail, whole
        )

    return wd.run("export", key, run, Exported)


def exported_head(exported: Stage[Exported]) -> YoloHead | None:
    """How to decode a detector's outputs (from the export stage), ``None`` for a classifier."""
    head = exported.result.head
    return YoloHead.load(head) if head is not None else None


#: how many of the user's calibration images a build is verified on (no test image given)
VERIFY_IMAGES = 4
#: a test-image folder the user gives is verified on all of it, up to this many images
MAX_TEST_IMAGES = 64


def given_folder(r: Recipe) -> bool:
    """True when the recipe's test image is a folder of the user's: verified on all of it (up
    to :data:`MAX_TEST_IMAGES`), its worst image decides."""
    return bool(r.test_image) and Path(r.test_image).is_dir()


def test_images(r: Recipe, folder: Path) -> list[Path]:
    """The images a build is verified on; the first is also the compiler's test input.

    ``test_image`` names one image (or tensor file), or a folder to take a few from; when it is
    empty, a few of the user's calibration images are used (images of the model's own domain),
    and the built-in cat photo only when the calibration set is built in too.
    """
    if r.tensor_inputs:
        return _tensor_test_inputs(r, folder)
    spec = r.test_image
    pool: list[Path] = []
    if given_folder(r):
        pool = [
            p for p in images.list_files(Path(spec)) if p.suffix.lower() in images.IMAGE_SUFFIXES
        ]
        if not pool:
            raise DataError(
                f"The test image folder {spec} has no readable images to verify the model on."
            )
    elif not spec and not r.calibration.images.startswith("builtin:"):
        # (an empty calibration folder is reported by the calibration, with its own advice)
        cal = Path(r.calibration.images)
        if cal.is_file():
            pool = images.scan_list(cal).paths
        elif cal.is_dir():
            pool = images.list_files(cal)
        pool = [p for p in pool if p.suffix.lower() in images.IMAGE_SUFFIXES]
    if not pool:
        return [images.resolve_image(spec or "builtin:chelsea", folder)]
    n = min(MAX_TEST_IMAGES if given_folder(r) else VERIFY_IMAGES, len(pool))
    picks = sorted({round(i * (len(pool) - 1) / max(n - 1, 1)) for i in range(n)})
    chosen: list[Path] = []
    for i in picks + [i for i in range(len(pool)) if i not in picks]:
        if len(chosen) == n:
            break
        try:
            chosen.append(images.resolve_image(str(pool[i]), folder))
        except DataError:  # an unreadable file among the images: the next one
            continue
    if not chosen:
        return [images.resolve_image("builtin:chelsea", folder)]
    return chosen if not r.deploy.fuse_preprocess else chosen[:1]


def _cut_way(onnx_path: Path, feed: str, folder: Path) -> str:
    """The ``--cut-at`` before a layer, said as a way around when the graph can be cut there
    (tried on a copy), else why not."""
    try:
        export_mod.cut_graph(onnx_path, folder / "try-head.onnx", folder / "try-tail.onnx", (feed,))
    except DuoTpuError as e:
        return f"a cut before it (--cut-at {feed}) is not possible ({str(e).rstrip('.')})"
    return (
        f"--cut-at {feed} (model.outputs) ends the TPU model before it and runs the rest on "
        "the CPU (ONNX Runtime)"
    )


def _tensor_inputs(r: Recipe) -> list[tuple[str, tuple[int, ...]]]:
    """A tensor model's inputs as (name, shape), in order."""
    return [(i.name, tuple(i.shape)) for i in r.inputs]


def _tensor_test_inputs(r: Recipe, folder: Path) -> list[Path]:
    """The samples a model of tensor inputs is verified on, checked and written as float32
    ``.npz`` files under ``folder`` (the compiler's test input is the first): every sample of a
    ``test_image`` folder, that one file, or else a few of the calibration samples."""
    spec = r.test_image
    if spec and Path(spec).is_dir():
        pool, n = calibdata.tensor_files(Path(spec)), MAX_TEST_IMAGES
    elif spec:
        if not Path(spec).is_file():
            raise DataError(f"The test input {spec} (test_image) does not exist.")
        pool, n = [Path(spec)], 1
    else:
        pool, n = calibdata.tensor_files(Path(r.calibration.images)), VERIFY_IMAGES
    if not pool:
        names = ", ".join(f"{i.name}=…" for i in r.inputs)
        raise DataError(
            "The model's inputs are tensors, so it is verified on samples of them, and "
            f"{'the folder ' + spec if spec else 'the recipe'} gives none: set test_image "
            f"(--test-image) to an .npz file of the inputs (np.savez(path, {names})) or a folder "
            "of them, or calibrate on such a folder (calibration.images)."
        )
    picks = sorted({round(i * (len(pool) - 1) / max(n - 1, 1)) for i in range(min(n, len(pool)))})
    inputs = _tensor_inputs(r)
    out = []
    for i in picks:
        sample = calibdata.read_sample(pool[i], inputs)
        digest = hashlib.sha256(b"".join(a.tobytes() for a in sample.values())).hexdigest()[:12]
        path = folder / f"{pool[i].stem}-{digest}.npz"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.npz")
            np.savez(tmp, **sample)
            os.replace(tmp, path)
        out.append(path)
    return out


def stage_transform(wd: WorkDir, r: Recipe, exported: Stage[Exported]) -> Stage[Transformed]:
    onnx_path = exported.result.onnx
    test_image = test_images(r, wd.root / "inputs")[0]
    key: dict[str, Any] = {
        "name": r.name,
        "onnx": compiler.file_digest(onnx_path),
        "shape": list(r.inputs[0].shape),
        "preprocess": asdict(r.preprocess),
        "test_image": compiler.file_digest(test_image),
        "inputs": [[i.name, list(i.shape)] for i in r.inputs] if r.tensor_inputs else None,
        "tolerance": r.tolerance.transform,
        "excepts": list(r.tolerance.excepts),
        "code": compiler.code_digest(),
        "versions": compiler.versions(),
    }

    def run(folder: Path) -> Transformed:
        try:
            return transform(folder)
        except ToleranceError as e:
            if not e.mismatches or "model_transform" not in e.what:
                raise
            name, op, feed = export_mod.first_differing_layer(onnx_path, e.mismatches[0].tensor)
            if not name:
                raise
            way = (
                _cut_way(onnx_path, feed, folder)
                if feed
                else "it reads the model's input directly, so no cut before it leaves work "
                "for the TPU"
            )
            raise ToleranceError(
                e.what,
                e.mismatches,
                f"The first layer that differs is '{name}' ({op}): the compiler translates "
                f"that {op} differently from ONNX Runtime. Way around: {way}; or accept the "
                "difference (tolerance.transform, or tolerance.excepts for those tensors). "
                f"Log: {e.log_path}",
                e.log_path,
            ) from None

    # the TPU part of a cut model may read fewer inputs than the model (the rest reads them)
    names = [i.name for i in intake.inputs_info(intake.load(onnx_path, weights=False))]
    shapes = {i.name: list(i.shape) for i in r.inputs}
    compiled = [shapes[n] for n in names] if r.tensor_inputs else [list(r.inputs[0].shape)]

    def transform(folder: Path) -> Transformed:
        files = compiler.transform(
            tool_name(r.name),
            onnx_path,
            compiled,
            folder,
            folder / "transform.log",
            preprocess=None if r.tensor_inputs else r.preprocess,
            test_input=test_image,
            tolerance=r.tolerance.transform,
            excepts=list(r.tolerance.excepts),
        )
        return Transformed(
            files.mlir,
            files.weights,
            files.test_input,
            files.top_outputs,
            onnx_path,
            test_image,
            tuple(names),
        )

    return wd.run("transform", key, run, Transformed)


def test_feed(t: Transformed) -> dict[str, NDArray[Any]]:
    """The model's inputs on the test input, by name: the compiler's (``test_input``) and, for
    a model of tensor inputs, any its compiled part does not read (a cut model's tail may)."""
    feed = dict(np.load(t.test_input))
    if t.test_image.suffix.lower() == ".npz":
        with np.load(t.test_image) as z:
            feed.update({k: np.array(z[k]) for k in z.files if k not in feed})
    return feed


def stage_reference(
    wd: WorkDir, transformed: Stage[Transformed], whole: Path | None = None
) -> Stage[Referenced]:
    """The fp32 ONNX model's outputs on the test input, in ONNX Runtime: the reference every
    cvimodel is verified against (``whole``: the model before a cut, whose outputs count)."""
    t = transformed.result
    onnx_path = whole or t.onnx
    key: dict[str, Any] = {
        "onnx": compiler.file_digest(onnx_path),
        "test_input": compiler.file_digest(t.test_input),
        "test_image": compiler.file_digest(t.test_image),
        "versions": compiler.versions(),
    }

    def run(folder: Path) -> Referenced:
        inputs = test_feed(t)
        np.savez(folder / "reference.npz", **onnxrt.onnx_reference(onnx_path, inputs))
        return Referenced(folder / "reference.npz")

    return wd.run("reference", key, run, Referenced)


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


def _with_calibration_arrays(
    r: Recipe, data: CalibrationData, wd: WorkDir, exported: Exported
) -> Recipe:
    """The recipe calibrating on arrays given in Python (see :mod:`.calibdata`), written once
    into the work directory; verified on the first of them unless it names a test image."""
    if r.deploy.fuse_preprocess:
        raise ConfigError(
            "Calibration arrays are preprocessed inputs, but with deploy.fuse_preprocess the "
            "model takes raw images: calibrate on a folder of images (calibration.images)."
        )
    inputs = _tensor_inputs(r) if r.tensor_inputs else [(exported.input_name, r.inputs[0].shape)]
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
        samples = calibdata.folder_samples(Path(cal.images), _tensor_inputs(r), cal.count)
        made = calibdata.write_arrays(samples, wd.root / "calibration-data", _tensor_inputs(r))
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


def stage_calibrate(wd: WorkDir, r: Recipe, transformed: Stage[Transformed]) -> Stage[Calibrated]:
    t = transformed.result
    cal = r.calibration
    data_key: Any = (
        cal.images
        if cal.images.startswith("builtin:")
        else {"folder": cal.images, "files": _folder_key(_calibration_files(Path(cal.images)))}
    )
    key: dict[str, Any] = {
        "mlir": compiler.file_digest(t.mlir),
        "weights": compiler.file_digest(t.weights),
        "data": data_key,
        "calibration": asdict(cal),
        "code": compiler.code_digest(),
        "versions": compiler.versions(),
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
        return Calibrated(folder / f"{tool_name(r.name)}_cali_table", data, n, skipped)

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


def _options_key(opts: compiler.DeployOptions) -> dict[str, Any]:
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
        "options": _options_key(opts),
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
                from duotpu.compiler.cvimodel import read_cvimodel

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


def stage_mix(
    wd: WorkDir,
    r: Recipe,
    transformed: Stage[Transformed],
    calibrated: Stage[Calibrated],
    dep_int8: Stage[Deployed] | None,
    dep_bf16: Stage[Deployed] | None,
    executor: Executor | None = None,
) -> Stage[Mixed]:
    """Search the fewest BF16 layers for INT8 to reach ``mix.target`` (or measure ``mix.qtable``).
    Every candidate's cvimodel is kept, so ``mix.pick`` chooses another row without a search.
    ``dep_int8`` is None when the pure INT8 model missed model_deploy's per-layer tolerance: the
    search builds it as its first row and starts from there."""
    from duotpu.builder import mixprec
    from duotpu.core.preprocess import load_bgr, preprocess_image

    t = transformed.result
    table = calibrated.result.table
    mix = r.mix
    val_key: Any = (
        mix.images
        if mix.images.startswith("builtin:")
        else _folder_key(images.list_files(Path(mix.images)))
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
        "preprocess": asdict(r.preprocess),
        "tolerance": asdict(r.tolerance),
        "options": _options_key(deploy_options(r, "int8", t.test_image)),
        "code": [compiler.file_digest(Path(mixprec.__file__)), compiler.code_digest()],
        "versions": compiler.versions(),
    }

    def built(dep: Stage[Deployed]) -> mixprec.Built:
        return mixprec.Built(dep.result.tpu_mlir, dep.result.cvimodel, dep.result.model_outputs)

    def run(folder: Path) -> Mixed:
        shape = r.inputs[0].shape
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
    preprocessing at all (raw 0–255 pixels, RGB, no mean/std): "" when the recipe gives some.
    A model trained on normalised input sees values it never saw, which quantize worst."""
    pre = r.preprocess
    if r.tensor_inputs:  # no images, no preprocessing to get wrong
        return ""
    plain = (
        all(m == 0.0 for m in pre.mean)
        and all(s == 1.0 for s in pre.std)
        and pre.pixel_format == "rgb"
        and pre.resize is None
    )
    if not plain:
        return ""
    return (
        "First check the preprocessing: the recipe gives none (RGB pixels 0–255 straight in, no "
        "mean/std, no resize). If the model was trained on normalised input (ImageNet's "
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


def cvimodel_file(name: str, recipe: Recipe, mode: str) -> str:
    """A cvimodel's file name: ``name``, the chip, the mode and the batch sizes
    (``MyNet_cv180x_int8.cvimodel``, ``net_cv180x_bf16_bs1_bs4.cvimodel``)."""
    sizes = recipe.deploy.batch_sizes
    suffix = "" if sizes == (1,) else "_" + "_".join(f"bs{b}" for b in sizes)
    return f"{name}_{recipe.chip}_{mode}{suffix}.cvimodel"


def delivered_name(recipe: Recipe, mode: str) -> str:
    """The file name of a delivered cvimodel: the user's model name (the work folder's copy
    has tpu_mlir's :func:`~.workdir.tool_name`)."""
    return cvimodel_file(recipe.name, recipe, mode)


def default_out_dir(recipe: Recipe) -> Path:
    """Where a build puts its final files unless told otherwise: ``build/<name>``."""
    return Path("build") / recipe.name


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
    ``out_dir/work``). Raises a :class:`~duotpu.config.errors.DuoTpuError` subclass on failure.
    """
    recipe, note = settle_input_shape(recipe.validate())
    recipe = recipe.validate()
    compiler.clear_cancel()
    out_dir = Path(out_dir) if out_dir else default_out_dir(recipe)
    check_writable(out_dir)
    root, moved = work_root(out_dir, Path(work_dir) if work_dir else None, recipe.name)
    with exclusive(root):  # one build per work folder at a time
        wd = WorkDir(root, events)
        for line in (moved, note):
            if line:
                events(StageEvent("export", "info", message=line))
        return _build_in(wd, recipe, out_dir, events, executor, calibration_data)


def _build_in(
    wd: WorkDir,
    recipe: Recipe,
    out_dir: Path,
    events: EventSink,
    executor: Executor | None,
    calibration_data: CalibrationData | None,
) -> BuildResult:
    _check_inputs_early(recipe, calibration_data is not None)
    exported = stage_export(wd, recipe)
    if calibration_data is not None:
        recipe = _with_calibration_arrays(recipe, calibration_data, wd, exported.result)
    recipe, note = settle_task(recipe, exported.result)
    if note:
        events(StageEvent("export", "info", message=note))
    transformed = stage_transform(wd, recipe, exported)
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
        _check_qtable(recipe, transformed)
    # The INT8 branch (calibrate → deploy) is the critical path; the other modes and the fp32
    # reference run beside it at a lower CPU priority.
    critical = "int8" if "int8" in recipe.quantize else recipe.quantize[0]
    with cf.ThreadPoolExecutor(max_workers=1) as ref_pool:
        ref_future = ref_pool.submit(stage_reference, wd, transformed, exported.result.whole)

        estimates: dict[str, Any] = {}

        def branch(mode: str) -> tuple[Stage[Deployed], Stage[Verified]]:
            cal = stage_calibrate(wd, recipe, transformed) if mode == "int8" else None
            dep = stage_deploy(wd, recipe, mode, transformed, cal, background=mode != critical)
            # the latency estimate (a second or two of pure Python) beside the verification, in
            # the branch: a BF16 model's is off the critical path altogether
            with cf.ThreadPoolExecutor(max_workers=1) as est_pool:
                est = est_pool.submit(_estimate, dep.result.cvimodel)
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
        mixed = stage_mix(
            wd,
            recipe,
            transformed,
            wd.stages["calibrate"],
            # a pure INT8 model that deployed but missed verification is the search's first row
            results["int8"][0] if "int8" in results else wd.stages.get("deploy-int8"),
            results["bf16"][0] if "bf16" in results else None,
            executor,
        )
    assert referenced is not None  # no branch failed, or the mix search took INT8's place
    if errors:
        # deliver what verified (and the mixed model), and say what did not
        partial = _finish(
            recipe, out_dir, wd, exported, transformed, referenced, results, mixed, estimates
        )
        partial.failed = {m: str(e) for m, e in failed.items()}
        partial.failed_stages = dict(wd.failed)
        for m in failed:  # a file an earlier build left under a failed mode's name is not this
            for stale in out_dir.glob(f"{recipe.name}_{recipe.chip}_{m}*.cvimodel"):
                stale.unlink()
        _write_failures(partial)
        partial.report = write_build_report(partial)
        raise PartialBuild(partial, failed)
    result = _finish(
        recipe, out_dir, wd, exported, transformed, referenced, results, mixed, estimates
    )
    if recipe.deploy.save_input_files:
        from duotpu.builder.replay import write_input_archive

        result.inputs_archive = write_input_archive(result)
    result.report = write_build_report(result)
    return result


def settle_input_shape(r: Recipe) -> tuple[Recipe, str]:
    """The recipe with its input shape settled (see :class:`~duotpu.config.recipe.InputSpec`)
    and a note saying where the shape came from ("" when the recipe gave it and it fits)."""
    given = tuple(r.inputs[0].shape)
    kind = export_mod.source_kind(r.model.source)
    if kind == "onnx":
        export_mod.source_files(r.model)  # a missing file is named before the shape is asked
        path = Path(r.model.source)
        consts = r.model.constants
        real = [
            i for i in intake.inputs_info(intake.load(path, weights=False)) if i.name not in consts
        ]
        if len(r.inputs) > 1 or len(real) > 1:
            named = [] if r.inputs == (InputSpec(),) else [(i.name, i.shape) for i in r.inputs]
            settled, note = intake.settle_inputs(path, named, constants=consts)
            return replace(r, inputs=tuple(InputSpec(n, s) for n, s in settled)), note
        shape, note = intake.settle_shape(path, given, constants=consts)
        if len(shape) != 4 and real and r.inputs[0].name != real[0].name:
            # a tensor input's samples are keyed by its name in the graph
            return replace(r, inputs=(InputSpec(real[0].name, shape),)), note
    elif len(r.inputs) > 1:
        unset = [i.name for i in r.inputs if not i.shape]
        if unset:
            raise ShapeError(
                f"The recipe lists {len(r.inputs)} inputs for a {kind} model and no shape for "
                f"{', '.join(unset)}: give each input's shape ([[inputs]] name = …, shape = […]); "
                "a PyTorch model does not declare its input shapes."
            )
        return r, ""
    elif given:
        return r, ""
    else:
        shape = (1, 3, 640, 640) if kind == "ultralytics" else intake.TORCH_DEFAULT_SHAPE
        note = f"input shape {list(shape)} (the default for a {kind} model; --input-shape sets it)"
    if shape == given:
        return r, note
    inputs = (replace(r.inputs[0], shape=shape), *r.inputs[1:])
    return replace(r, inputs=inputs), note


def settle_task(r: Recipe, exported: Exported) -> tuple[Recipe, str]:
    """The recipe with ``task = "auto"`` settled from the model's outputs: ``classify`` when it
    has one output of class scores (``[N, K]`` or ``[N, K, 1, 1]``, K ≥ 10), else ``generic``
    (segmentation maps, boxes, embeddings, several outputs: shown as tensors, never as
    classes). Returns the note to show ("" when nothing was settled)."""
    if r.task != "auto":
        return r, ""
    graph = intake.load(exported.reference_onnx, weights=False).graph
    shapes = {
        o.name: tuple(d.dim_value for d in o.type.tensor_type.shape.dim) for o in graph.output
    }
    if any(not s or 0 in s for s in shapes.values()):
        # the graph does not say (onnxsim failed on it, as on Paddle's exports): run it
        sess = onnxrt.session(exported.reference_onnx)
        feed = {
            i.name: np.zeros(tuple(spec.shape), np.float32)
            for i, spec in zip(sess.get_inputs(), r.inputs)
        }
        got = sess.run(None, feed)
        shapes = {o.name: tuple(v.shape) for o, v in zip(sess.get_outputs(), got)}
    classes = [
        s for s in shapes.values() if len(s) >= 2 and all(d == 1 for d in s[2:]) and s[1] >= 10
    ]
    task: Literal["classify", "generic"] = "classify" if len(shapes) == 1 and classes else "generic"
    shown = ", ".join(f"{n} {list(s)}" for n, s in shapes.items())
    note = f"task: {task} (outputs {shown}" + (
        ": class scores)" if task == "classify" else ": not class scores; --task sets it)"
    )
    return replace(r, task=task).validate(), note


def _check_inputs_early(r: Recipe, arrays_given: bool = False) -> None:
    """Data problems that would otherwise surface only after the long steps."""
    cal = r.calibration
    if r.tensor_inputs and "int8" in r.quantize and not arrays_given:
        # a folder of samples, not images (and not the built-in photos): checked whole here
        calibdata.folder_samples(Path(cal.images), _tensor_inputs(r), cal.count)
        return
    if "int8" in r.quantize and not cal.images.startswith("builtin:"):
        folder = Path(cal.images)
        if folder.is_file():  # a list of image paths (the old --image_list)
            images.scan_list(folder)
            return
        if not folder.is_dir():
            raise DataError(
                f"INT8 needs calibration images, and calibration.images = "
                f"{cal.images} is neither a folder nor a list file. Give a folder "
                "of images like the ones the model will see, a text file of image "
                "paths, or 'builtin:natural'."
            )
        if not images.list_files(folder):
            raise DataError(
                f"The calibration folder {cal.images} is empty: INT8 needs "
                "calibration images (100–1000 typical)."
            )
    if r.mix.qtable and not Path(r.mix.qtable).is_file():
        raise DataError(f"The mixed-precision table {r.mix.qtable} (mix.qtable) does not exist.")


def _check_qtable(r: Recipe, transformed: Stage[Transformed]) -> None:
    """Every layer a hand-written mix table names must be a layer of the model."""
    from duotpu.builder.mixprec import read_qtable

    graph = compiler.mlir_graph(transformed.result.mlir, transformed.folder.parent / ".graph.log")
    unknown = [n for n in read_qtable(Path(r.mix.qtable)) if n not in graph]
    if unknown:
        near = ", ".join(list(graph)[:6])
        raise DataError(
            f"The mixed-precision table {r.mix.qtable} names {len(unknown)} layer(s) "
            f"the model does not have: {', '.join(unknown[:5])}. Layer names are the "
            f"compiler's tensor names (e.g. {near}); see the trade-off table a "
            "--target build writes."
        )


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


def _estimate(cvimodel: Path) -> Any:
    """The board-free latency estimate of a delivered cvimodel (None if it cannot be read)."""
    try:
        return compiler.latency.estimate(cvimodel)
    except (ValueError, KeyError, IndexError, struct.error):
        return None


def _write_failures(result: BuildResult) -> None:
    """Record in the manifest which modes were not delivered, and why."""
    assert result.listing is not None  # _finish wrote it
    result.listing.failed = dict(result.failed)
    result.listing.failed_stages = {n: round(t, 3) for n, t in result.failed_stages.items()}
    result.listing.write(result.manifest)


def _finish(
    recipe: Recipe,
    out_dir: Path,
    wd: WorkDir,
    exported: Stage[Exported],
    transformed: Stage[Transformed],
    referenced: Stage[Referenced],
    results: dict[str, tuple[Stage[Deployed], Stage[Verified]]],
    mixed: Stage[Mixed] | None = None,
    estimates: dict[str, Any] | None = None,
) -> BuildResult:
    """Copy the final files into ``out_dir`` atomically and write the build manifest
    (``estimates``: the latency estimates the branches made, by mode)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = dict(np.load(referenced.result.reference))
    models: dict[str, ModelArtifact] = {}
    for mode in [m for m in recipe.quantize if m in results]:
        dep, ver = results[mode][0].result, results[mode][1].result
        final = atomic_copy(dep.cvimodel, out_dir / delivered_name(recipe, mode))
        got = dict(np.load(ver.whole_outputs or dep.model_outputs))
        models[mode] = ModelArtifact(
            mode,
            final,
            dep.size_bytes,
            dep.ion_mb,
            ver.cosine,
            {n: got[k].reshape(reference[n].shape) for n, k in ver.outputs.items()},
            dep.tpu_mlir,
            ver.per_image,
            (estimates or {}).get(mode) or _estimate(final),
            dep.simulated,
        )
    mix = None
    if mixed is not None:
        from duotpu.builder import mixprec

        mix = picked_mix(recipe, mixed)
        best = mix.best
        final = atomic_copy(best.cvimodel, out_dir / f"{recipe.name}_{recipe.chip}_mix.cvimodel")
        best_outputs = best.model_outputs
        if exported.result.tail is not None:
            best_outputs = wd.root / "mix" / "outputs-whole.npz"
            produced = dict(np.load(best.model_outputs))
            fed = test_feed(transformed.result)
            np.savez(best_outputs, **onnxrt.run_tail(exported.result.tail, produced, fed))
        cos, names = cosine_to_reference(referenced.result.reference, best_outputs)
        got = dict(np.load(best_outputs))
        models["mix"] = ModelArtifact(
            "mix",
            final,
            best.size_bytes,
            best.ion_mb,
            cos,
            {n: got[k].reshape(reference[n].shape) for n, k in names.items()},
            best.tpu_mlir,
            (),
            _estimate(final),
        )
        note = f"{best.label}: {mix.target or 'given table'} -> {best.metric:.4f}"
        if best.all_bf16:
            note += " (the whole model in BF16, which a table cannot say: use the BF16 cvimodel)"
        atomic_write(
            out_dir / f"{recipe.name}.qtable", mixprec.qtable_text(list(best.layers), note)
        )
        atomic_write(
            out_dir / f"{recipe.name}.mix.md",
            mixprec.table_md(mix.rows, mix.chosen, mix.target, mix.failed),
        )
    head = exported.result.head
    if head is not None:
        atomic_copy(head, out_dir / f"{recipe.name}.detect.json")
    tail = exported.result.tail
    if tail is not None:
        tail = atomic_copy(tail, out_dir / f"{recipe.name}.tail.onnx")
    recipe_path = atomic_write(out_dir / f"{recipe.name}.recipe.toml", recipe.to_toml())
    t = transformed.result
    order = [
        "export",
        "transform",
        "reference",
        "calibrate",
        # a failed mode's stages that did finish ran too (a partial build's report shows them)
        *[f"deploy-{m}" for m in recipe.quantize],
        *[f"verify-{m}" for m in recipe.quantize],
        "mix",
    ]
    stages = [wd.stages[n] for n in order if n in wd.stages]
    # layer id → name files, for the latency estimate's per-layer view (the mixed model's
    # files carry its candidate's name)
    infos = {
        m: str(
            (
                a.tpu_mlir.parent / f"{(mix.best if m == 'mix' and mix else a).cvimodel.stem}"
                "_tensor_info.txt"
            ).resolve()
        )
        for m, a in models.items()
        if a.tpu_mlir
    }
    manifest = out_dir / MANIFEST
    listing = Manifest(
        name=recipe.name,
        chip=recipe.chip,
        recipe=recipe.to_dict(),
        versions=compiler.versions(),
        work_dir=str(wd.root.resolve()),
        input_name=exported.result.input_name,
        # the files other commands need from the work directory, so none of them has to know
        # its layout or tpu_mlir's file names (read by duotpu.builder.manifest)
        onnx=str(exported.result.onnx.resolve()),
        reference_onnx=str(exported.result.reference_onnx.resolve()),
        tail=tail.name if tail is not None else None,
        task=recipe.task,
        top_mlir=str(t.mlir.resolve()),
        models={
            m: ManifestModel(
                cvimodel=a.cvimodel.name,
                size_bytes=a.size_bytes,
                ion_mb=a.ion_mb,
                cosine_vs_fp32=dict(a.cosine),
                sha256=compiler.file_digest(a.cvimodel),
                tpu_mlir=str(a.tpu_mlir.resolve()) if a.tpu_mlir else None,
                tensor_info=infos.get(m),
                estimate=compiler.latency.as_dict(a.estimate, top=0) if a.estimate else None,
                verified_on=(
                    "CV18xx simulator"
                    if a.simulated
                    else "quantized MLIR (the simulator cannot load this cvimodel)"
                ),
                fits={f.board: f.fits for f in summary.board_fits(recipe.chip, a.ion_mb)},
                verified_images=max(len(a.per_image), 1),
                worst_image_cosine=min(a.per_image) if a.per_image else None,
            )
            for m, a in models.items()
        },
        stages=[
            {
                "name": s.name,
                "cached": s.cached,
                "seconds": round(s.seconds, 3),
                "key": s.key,
                "result": to_json(s.result, s.folder),
            }
            for s in stages
        ],
    )
    listing.write(manifest)
    return BuildResult(
        recipe,
        out_dir,
        wd.root,
        exported.result.onnx,
        dict(np.load(t.test_input)),
        reference,
        models,
        stages,
        manifest,
        recipe_path,
        mix,
        exported_head(exported),
        t.test_image,
        listing=listing,
    )
