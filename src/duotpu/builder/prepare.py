"""Settling the recipe from the model and making the model the compiler reads: the input shapes
and the task, the early checks of the user's data, the test inputs, and the stages ``export``
(the source as ONNX), ``transform`` (model_transform: the fp32 MLIR) and ``reference`` (the fp32
outputs every cvimodel is verified against)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from duotpu import compiler
from duotpu.builder import calibdata, intake
from duotpu.builder import export as export_mod
from duotpu.config.errors import (
    DataError,
    DuoTpuError,
    ShapeError,
    ToleranceError,
)
from duotpu.config.recipe import InputSpec, Recipe
from duotpu.core import images, onnxrt
from duotpu.core.head import YoloHead

from .results import (
    Exported,
    Referenced,
    Transformed,
)
from .workdir import (
    Stage,
    StageEvent,
    WorkDir,
    tool_name,
)


# --------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------
def files_key(paths: list[Path]) -> list[list[Any]]:
    return [[str(p), compiler.file_digest(p)] for p in paths]


def folder_key(paths: list[Path]) -> str:
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
        "files": files_key(export_mod.source_files(src)),
        "code": [compiler.file_digest(Path(str(m.__file__))) for m in (export_mod, intake)],
        "versions": compiler.versions(),
    }

    if r.tensor_inputs:
        key["inputs"] = [[i.name, list(i.shape)] for i in r.inputs]
    if r.task == "detect":
        key["detect"] = {"classes": list(r.detect.classes), "anchors": list(r.detect.anchors)}
        key["code_yolo"] = compiler.file_digest(Path(export_mod.__file__).with_name("yolo.py"))

    def run(folder: Path) -> Exported:
        # a model that is exported anew is compiled anew: the fork server's imports overlap with
        # the export (a rebuild whose export is cached starts it at its first tool, if any)
        compiler.start_fork_server()
        compiler.passive_openmp()
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
    to `MAX_TEST_IMAGES`), its worst image decides."""
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


def _cut_way(onnx_path: Path, feed: str, folder: Path) -> tuple[str, bool]:
    """The ``--cut-at`` before a layer, said as a way around when the graph can be cut there
    (tried on a copy), else why not; and whether it can."""
    try:
        export_mod.cut_graph(onnx_path, folder / "try-head.onnx", folder / "try-tail.onnx", (feed,))
    except DuoTpuError as e:
        return f"a cut before it (--cut-at {feed}) is not possible ({str(e).rstrip('.')})", False
    return (
        f"--cut-at {feed} (model.outputs) ends the TPU model before it and runs the rest on "
        "the CPU (ONNX Runtime)",
        True,
    )


def tensor_inputs(r: Recipe) -> list[tuple[str, tuple[int, ...]]]:
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
    inputs = tensor_inputs(r)
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
            way, cuttable = (
                _cut_way(onnx_path, feed, folder)
                if feed
                else (
                    "it reads the model's input directly, so no cut before it leaves work "
                    "for the TPU",
                    False,
                )
            )
            raise ToleranceError(
                e.what,
                e.mismatches,
                f"The first layer that differs is '{name}' ({op}): the compiler translates "
                f"that {op} differently from ONNX Runtime. Way around: {way}; or accept the "
                "difference (tolerance.transform, or tolerance.excepts for those tensors). "
                f"Log: {e.log_path}",
                e.log_path,
                cut_at=feed if cuttable else "",
            ) from None

    def transform(folder: Path) -> Transformed:
        # the TPU part of a cut model may read fewer inputs than the model (the rest reads them);
        # read here, so a cached transform parses no ONNX
        names = [i.name for i in intake.inputs_info(intake.load(onnx_path, weights=False))]
        shapes = {i.name: list(i.shape) for i in r.inputs}
        compiled = [shapes[n] for n in names] if r.tensor_inputs else [list(r.inputs[0].shape)]
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


def settle_input_shape(r: Recipe) -> tuple[Recipe, str]:
    """The recipe with its input shape settled (see `InputSpec`)
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


def check_inputs_early(r: Recipe, arrays_given: bool = False) -> None:
    """Data problems that would otherwise surface only after the long steps."""
    cal = r.calibration
    if r.tensor_inputs and "int8" in r.quantize and not arrays_given:
        # a folder of samples, not images (and not the built-in photos): checked whole here
        calibdata.folder_samples(Path(cal.images), tensor_inputs(r), cal.count)
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


def check_qtable(r: Recipe, transformed: Stage[Transformed]) -> None:
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
