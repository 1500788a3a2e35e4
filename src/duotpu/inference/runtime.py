"""Host inference of built models: the CV18xx simulator, or tpu_mlir's interpreter on the
quantized MLIR (the fast path, checked against the simulator), plus the fp32 reference.

A built model is found from its cvimodel: the build folder beside it holds the recipe
(``NAME.recipe.toml``, with the preprocessing) and ``manifest.json`` (the work directory with the
fp32 ONNX and the quantized MLIR of each mode).
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from duotpu import compiler
from duotpu import cvimodel as cvimodel_mod
from duotpu.builder.manifest import listed_model
from duotpu.config.errors import ConfigError, ModelError
from duotpu.config.recipe import Recipe, load_recipe
from duotpu.core.head import YoloHead
from duotpu.core.onnxrt import onnx_outputs
from duotpu.core.preprocess import fused_input, fused_to_float, preprocess_image


@dataclass
class BuiltModel:
    """A cvimodel with what is needed to feed it images and to check it. ``mode`` is the
    build's name for it (``int8``, ``bf16``, ``mix``); ``onnx``, ``tpu_mlir`` (its quantized
    MLIR, the fast path) and ``top_mlir`` (the fp32 MLIR) come from the build's manifest and
    are ``None`` when the work directory is gone or the file was not built by duotpu."""

    cvimodel: Path
    info: cvimodel_mod.CviModelInfo
    recipe: Recipe
    mode: str
    onnx: Path | None
    tpu_mlir: Path | None
    head: YoloHead | None = None
    top_mlir: Path | None = None
    tail: Path | None = None  # cut with model.outputs: the rest of the model, run on the CPU
    simulable: bool = True  # False: the simulator cannot load it; infer runs its quantized MLIR

    @property
    def input_name(self) -> str:
        return self.info.programs[0].inputs[0].name

    @property
    def compiled_output_names(self) -> list[str]:
        """The cvimodel's own outputs (for a cut model: the tensors the tail reads)."""
        return [t.name for t in self.info.programs[0].outputs]

    @functools.cached_property
    def output_names(self) -> list[str]:
        """The outputs `infer` returns: the whole model's, after the tail of a cut one."""
        if self.tail is None:
            return self.compiled_output_names
        import onnx

        return [o.name for o in onnx.load(str(self.tail), load_external_data=False).graph.output]


def open_model(path: str | Path, recipe_path: str | Path | None = None) -> BuiltModel:
    """Open a cvimodel made by ``duotpu build`` (or any cvimodel, with ``recipe_path``).

    What the build made beside it (mode, fp32 ONNX, quantized MLIR) is read from the build's
    ``manifest.json``; a cvimodel the manifest does not list is opened without them."""
    path = Path(path)
    info = cvimodel_mod.read_cvimodel(path)
    if recipe_path:
        recipe = load_recipe(recipe_path)
    else:
        listing = listed_model(path)
        candidates = [
            *([path.parent / f"{listing.name}.recipe.toml"] if listing and listing.name else []),
            path.parent / f"{info.name}.recipe.toml",
            *sorted(path.parent.glob("*.recipe.toml")),
        ]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(
                f"No recipe found beside {path} (looked for "
                f"{info.name}.recipe.toml), so the image preprocessing is unknown. "
                "Give the recipe the model was built with: --recipe FILE."
            )
        recipe = load_recipe(found)
    listed = listed_model(path)
    simulable = True
    if listed is not None:
        mode, onnx, tpu, top = listed.mode, listed.onnx, listed.tpu_mlir, listed.top_mlir
        simulable = listed.simulable
    else:  # a cvimodel from elsewhere: no fast path, no fp32 reference
        dtypes = {t.dtype for p in info.programs for t in p.inputs + p.outputs}
        mode = "bf16" if "bf16" in dtypes else "int8"
        onnx = tpu = top = None
    # the files beside it carry the user's name (the recipe's); the cvimodel's own name is the
    # compiler's lower-case work name (tpu_mlir lower-cases it): files of older builds used it
    stem = next(
        (n for n in (recipe.name, info.name) if (path.parent / f"{n}.detect.json").is_file()),
        recipe.name,
    )
    head_file = path.parent / f"{stem}.detect.json"
    head = YoloHead.load(head_file) if recipe.task == "detect" and head_file.is_file() else None
    if recipe.task == "detect" and head is None:
        raise ConfigError(
            f"{path} is a detector but {head_file} (how to decode its outputs, "
            "written by duotpu build) is missing. Copy it from the build folder "
            "or rebuild."
        )
    tail = None
    if recipe.model.outputs:
        tail = next(
            (
                t
                for t in (path.parent / f"{n}.tail.onnx" for n in (recipe.name, info.name))
                if t.is_file()
            ),
            path.parent / f"{recipe.name}.tail.onnx",
        )
        if not tail.is_file():
            raise ConfigError(
                f"{path} is the first part of a model cut at {', '.join(recipe.model.outputs)}; "
                f"the rest, {tail.name} (written by duotpu build beside it), is missing. Copy "
                "it from the build folder or rebuild."
            )
    return BuiltModel(path, info, recipe, mode, onnx, tpu, head, top, tail, simulable)


def tensors_for(model: BuiltModel, images: list) -> list[np.ndarray]:
    """Images (paths, ``builtin:NAME`` photos or RGB arrays) → batch-1 input tensors, with the
    build's preprocessing:
    float32 NCHW, or for a fused-preprocess model the raw uint8 image in its pixel format.
    A model whose inputs are tensors takes ``.npz`` files (an array per input name; ``.npy``
    for a model of one input) instead: each is checked and becomes ``{input name: array}``."""
    if model.recipe.tensor_inputs:
        from duotpu.builder.calibdata import read_sample

        inputs = [(i.name, tuple(i.shape)) for i in model.recipe.inputs]
        return [read_sample(Path(p), inputs) for p in images]  # type: ignore[misc]
    from duotpu.core.images import builtin_photo

    images = [
        builtin_photo(im.split(":", 1)[1])
        if isinstance(im, str) and im.startswith("builtin:")
        else im
        for im in images
    ]
    t = model.info.programs[0].inputs[0]
    shape = tuple(t.shape)
    if t.pixel_format in compiler.SELF_VALIDATED_FORMATS or t.aligned:
        return _aligned_inputs(model, t, images)
    if t.pixel_format and t.dtype in ("uint8", "int8"):
        return [
            fused_input(im, model.recipe.preprocess, shape, t.pixel_format).reshape(shape)
            for im in images
        ]
    return [preprocess_image(im, model.recipe.preprocess, shape) for im in images]


def _aligned_inputs(model: BuiltModel, t, images: list) -> list[np.ndarray]:
    """Raw inputs of a YUV / aligned fused-preprocess model, made by tpu_mlir's preprocessing
    (it needs the build's fp32 MLIR, which holds the resize settings)."""
    top = model.top_mlir
    if top is None:
        raise ModelError(
            f"{model.cvimodel} takes {t.pixel_format} input"
            f"{' with aligned rows' if t.aligned else ''}; making it from an "
            "image needs the build's work directory, which is gone. Rebuild, or "
            "give the raw input as an npz."
        )
    from duotpu.core.images import save_image

    out = []
    with tempfile.TemporaryDirectory(prefix="duotpu-raw-") as tmp:
        for i, im in enumerate(images):
            path = (
                save_image(Path(tmp) / f"im{i}.png", im) if isinstance(im, np.ndarray) else Path(im)
            )
            f = compiler.fused_input_file(
                top,
                path,
                t.pixel_format,
                t.aligned,
                model.info.chip,
                Path(tmp) / f"raw{i}.npz",
                Path(tmp) / "raw.log",
            )
            with np.load(f) as z:
                out.append(np.array(z[z.files[0]]).reshape(1, -1))
    return out


def infer_batched(
    model: BuiltModel, tensors: list[np.ndarray], progress: Callable[[int], None] | None = None
) -> list[dict[str, np.ndarray]]:
    """Like `infer` on the simulator, but a multi-batch cvimodel runs full batches through
    its largest program and the rest through its batch-1 program. One result per input."""
    programs = model.info.programs
    big = max(range(len(programs)), key=lambda k: programs[k].inputs[0].shape[0])
    b = programs[big].inputs[0].shape[0]
    one = next((k for k, p in enumerate(programs) if p.inputs[0].shape[0] == 1), 0)
    n_full = (len(tensors) // b) * b if b > 1 and not model.recipe.tensor_inputs else 0
    results: list[dict[str, np.ndarray]] = []
    if n_full:
        stacked = [np.concatenate(tensors[i : i + b]) for i in range(0, n_full, b)]
        names = [t.name for t in programs[big].outputs]
        for out in infer(model, stacked, program=big, output_names=names, progress=progress):
            for row in range(b):
                results.append({n: v[row : row + 1] for n, v in out.items()})
    if len(tensors) > n_full:
        results += infer(model, tensors[n_full:], program=one)
    return results


def infer(
    model: BuiltModel,
    tensors: list[np.ndarray],
    backend: str = "cvimodel",
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    keep_all: bool = False,
    program: int = 0,
    output_names: list[str] | None = None,
) -> list[dict[str, np.ndarray]]:
    """Run input tensors through the model on the host.

    ``backend``: ``cvimodel`` (the CV18xx simulator) or ``mlir`` (tpu_mlir's interpreter on the
    quantized MLIR from the build's work directory: same integer arithmetic, far faster).
    Returns, per input, the outputs by the cvimodel's output names (fp32).
    """
    if backend == "cvimodel" and not model.simulable and model.tpu_mlir is not None:
        backend = "mlir"  # the simulator cannot load this model; its MLIR is bit-exact (INT8)
    if backend == "mlir" and model.tpu_mlir is None:
        raise ModelError(
            f"The quantized MLIR of {model.cvimodel} is not available (the build's "
            "work directory is gone); use the simulator backend."
        )
    target = model.cvimodel if backend == "cvimodel" or model.tpu_mlir is None else model.tpu_mlir
    names: list[str] = [] if keep_all else (output_names or model.compiled_output_names)
    results = compiler.run_tensors(
        backend, target, model.input_name, tensors, names, workers, progress, program
    )
    for r in results:  # the simulator keeps NCHW-padded shapes ([1,10,1,1]); use the cvimodel's
        for t in model.info.programs[program].outputs:
            if t.name in r and r[t.name].size == int(np.prod(t.shape)):
                r[t.name] = r[t.name].reshape(t.shape)
    if keep_all:
        return results
    return [apply_tail(model, r, x) for r, x in zip(results, tensors)]


def apply_tail(
    model: BuiltModel, outputs: dict[str, np.ndarray], inputs: Any = None
) -> dict[str, np.ndarray]:
    """A cut model's TPU outputs → the whole model's outputs (its tail in ONNX Runtime, which
    may read the model's ``inputs`` too: one array, or arrays by name); the outputs unchanged
    for a model that was not cut."""
    if model.tail is None:
        return outputs
    from duotpu.core.onnxrt import run_tail

    fed = inputs if inputs is None or isinstance(inputs, dict) else {model.input_name: inputs}
    return run_tail(model.tail, outputs, fed)


def fp32_output_names(model: BuiltModel) -> list[str]:
    """The fp32 ONNX model's output names, in the order `fp32_reference` returns them."""
    import onnx

    if model.onnx is None:
        return []
    return [o.name for o in onnx.load(str(model.onnx), load_external_data=False).graph.output]


def fp32_reference(model: BuiltModel, tensors: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The fp32 ONNX model's outputs (ONNX Runtime), in output order."""
    if model.onnx is None:
        raise ModelError(
            f"The fp32 ONNX model of {model.cvimodel} is not available (the build's "
            "work directory is gone); rebuild it to compare against fp32."
        )
    return onnx_outputs(model.onnx, fp32_inputs(model, tensors))


def fp32_inputs(model: BuiltModel, tensors: list[np.ndarray]) -> list[np.ndarray]:
    """The model's input tensors as its fp32 ONNX model (and fp32 MLIR) takes them: a
    fused-preprocess model's raw (integer) pixels cropped and normalised as its TPU does; float
    tensors as they are."""
    t = model.info.programs[0].inputs[0]
    if not (t.pixel_format and t.dtype in ("uint8", "int8")):
        return tensors
    raw = [np.issubdtype(np.asarray(x).dtype, np.integer) for x in tensors]
    if not any(raw):  # already the float input of the fp32 model
        return tensors
    if t.aligned or t.pixel_format in compiler.SELF_VALIDATED_FORMATS:
        raise ModelError(
            f"{model.cvimodel.name} takes {t.pixel_format} pixels"
            f"{' with aligned rows' if t.aligned else ''}, which duotpu cannot turn back "
            "into the fp32 model's input; compare a build without fused preprocessing."
        )
    pre, shape = model.recipe.preprocess, tuple(model.recipe.inputs[0].shape)
    return [
        fused_to_float(x, pre, shape, t.pixel_format) if is_raw else x
        for x, is_raw in zip(tensors, raw)
    ]


def describe_outputs(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray] | None = None
) -> list[dict]:
    """A generic model's outputs as a person reads them: each output's name, shape, value
    range and mean, and its cosine to the fp32 model's when ``reference`` is given."""
    from duotpu.core.metrics import cosine
    from duotpu.core.onnxrt import match_outputs

    # the compiler names outputs after their op (y → y_Gemm_f32): show the model's names
    onnx_name = {v: k for k, v in match_outputs(reference, outputs).items()} if reference else {}
    rows = []
    for name, v in outputs.items():
        v = np.asarray(v, np.float32)
        shown = onnx_name.get(name, name)
        row = {
            "name": shown,
            "shape": list(v.shape),
            "min": float(v.min()) if v.size else 0.0,
            "max": float(v.max()) if v.size else 0.0,
            "mean": float(v.mean()) if v.size else 0.0,
        }
        if reference is not None and shown in reference:
            row["cosine_vs_fp32"] = round(cosine(reference[shown], v), 6)
        rows.append(row)
    return rows


def describe_generic(
    model: BuiltModel,
    outputs: list[dict[str, np.ndarray]],
    tensors: list[np.ndarray] | None = None,
) -> list[tuple[dict[str, np.ndarray], list[dict]]]:
    """Per input: its outputs under the model's own names (when ``tensors`` are given and the
    build's fp32 ONNX is there) and `describe_outputs` of them, with each output's cosine
    to fp32 on the same input."""
    refs: list[dict[str, np.ndarray]] | None = None
    if tensors is not None and model.onnx is not None:
        names = fp32_output_names(model)
        refs = [dict(zip(names, r)) for r in fp32_reference(model, tensors)]
    described = []
    for i, out in enumerate(outputs):
        ref = refs[i] if refs else None
        if ref is not None:
            out = as_reference_outputs(out, ref)
        described.append((out, describe_outputs(out, ref)))
    return described


def as_reference_outputs(
    outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The compiled model's outputs under the fp32 model's names and shapes (the simulator
    names them after their op and pads them to 4-D: ``box`` [1,4] → ``box_Gemm_f32`` [1,4,1,1])."""
    from duotpu.core.onnxrt import match_outputs

    names = match_outputs(reference, outputs)
    out = {}
    for n, k in names.items():
        v = outputs[k]
        out[n] = v.reshape(reference[n].shape) if v.size == reference[n].size else v
    return out


def save_outputs(outputs: dict[str, np.ndarray], target: Path) -> Path:
    """Write one input's outputs as an npz (atomically)."""
    from duotpu.core.files import atomic_path

    target = Path(target)
    with atomic_path(target) as tmp:
        np.savez(tmp, **outputs)
    return target


def top_k(
    model: BuiltModel,
    outputs: list[dict[str, np.ndarray]],
    k: int = 5,
    class_names: list[str] | None = None,
) -> list[list[dict[str, Any]]]:
    """Per input, the ``k`` best classes of the model's first output (softmax probabilities
    unless it already gives probabilities): ``{"class", "name", "probability"}`` each. Without
    ``class_names``, a 1000-class output is named with ImageNet's classes."""
    from duotpu.core import labels, metrics

    first = model.output_names[0]
    if class_names is None and outputs:
        n = int(np.prod(outputs[0][first].shape[1:]))
        class_names = labels.imagenet_classes() if n == 1000 else None
    out = []
    for o in outputs:
        probs = metrics.as_probabilities(o[first].reshape(o[first].shape[0], -1))[0]
        out.append(
            [
                {"class": i, "name": labels.class_name(class_names, i), "probability": round(p, 6)}
                for i, p in metrics.topk(probs, k)
            ]
        )
    return out


def detect(
    model: BuiltModel,
    images: list[Path],
    outputs: list[dict[str, np.ndarray]],
    *,
    conf: float | None = None,
    iou: float | None = None,
) -> list[list[Any]]:
    """Per image, a detector's objects (decoded and NMS-ed on the CPU, boxes in the image's
    pixels), at the recipe's ``detect.conf`` / ``detect.iou`` unless given."""
    from duotpu.core.detect import detections, input_frame, maps_in_order

    if model.head is None:
        raise ModelError(f"{model.cvimodel.name} is not a detector (no decode information).")
    opts = model.recipe.detect
    found = []
    for image, out in zip(images, outputs):
        pre, hw = input_frame(Path(image), model.recipe.preprocess, model.head)
        found.append(
            detections(
                model.head,
                maps_in_order(model.head, out),
                pre,
                [hw],
                opts.conf if conf is None else conf,
                opts.iou if iou is None else iou,
                opts.max_det,
            )[0]
        )
    return found
