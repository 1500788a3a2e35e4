"""ONNX intake: whatever exporter wrote the file, make it a file the compiler and ONNX Runtime take.

Real exports differ from the files duotpu makes itself: a newer IR version than the installed
onnx reads (a current onnx writes IR 10), an opset past 19, free input dims (``batch``,
``height``, ``width``, or unnamed ``?``), weights in external-data files, an already quantized
graph. `settle_shape` decides the input shape before anything runs (cheap: the graph's
header only); `normalise` writes the file every later stage uses.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duotpu.config.errors import ModelError, ShapeError

if TYPE_CHECKING:
    import onnx

#: the default input shape of a PyTorch source when the recipe gives none
TORCH_DEFAULT_SHAPE = (1, 3, 224, 224)

# tpu_mlir 1.30.2 ships onnx 1.14.1 (IR 9, opset 19) and onnxruntime 1.16.3 (opset 19).
MAX_OPSET = 19
#: onnxsim 0.4.17 (which tpu_mlir's model_transform runs too) refuses IR 9 ("Your model
#: ir_version is higher than the checker's") and simplifies the same graph written as IR 8,
#: opset 19 included; IR 9 only added float8 types, which no TPU model has
SIMPLIFIER_IR = 8

#: Ops of the default domain whose meaning changed (or that were added) after opset 19, with the
#: opset of the change. A model using none of them means the same at opset 19: the later opsets
#: only admit more element types (int4, float8, bfloat16) for the other ops.
CHANGED_AFTER_19 = {
    "AffineGrid": 20,
    "DFT": 20,
    "Gelu": 20,
    "GridSample": 20,
    "ImageDecoder": 20,
    "RegexFullMatch": 20,
    "StringConcat": 20,
    "StringSplit": 20,
    "GroupNormalization": 21,
    "Attention": 23,
    "RMSNormalization": 23,
    "RotaryEmbedding": 23,
    "Swish": 24,
    "TensorScatter": 24,
}

#: ops that mark an already quantized ONNX graph (onnxruntime.quantization, QDQ exports)
QUANTIZED_OPS = {
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearConcat",
    "QuantizeLinear",
    "DequantizeLinear",
}

Dim = int | str | None  # a fixed size, a named free dim, an unnamed free dim


@dataclass(frozen=True)
class InputInfo:
    """The one image input of an ONNX graph as the file declares it."""

    name: str
    dims: tuple[Dim, ...]
    imgsz: tuple[int, int] | None  # Ultralytics' ``imgsz`` metadata, when present

    @property
    def free(self) -> list[int]:
        """Positions of the dims that are not fixed."""
        return [i for i, d in enumerate(self.dims) if not isinstance(d, int)]

    def shown(self) -> str:
        return "[" + ", ".join(str(d) if d is not None else "'?'" for d in self.dims) + "]"


def load(path: Path, *, weights: bool = True) -> "onnx.ModelProto":
    """Parse an ONNX file (with its external-data files when ``weights``).

    Raises `ModelError`: "corrupt" only when the bytes do not parse as ONNX.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"The model file {path} does not exist.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 — protobuf raises DecodeError and others
        raise ModelError(
            f"The ONNX file {path} is corrupt: its bytes do not parse as an ONNX model "
            f"({type(e).__name__}: {str(e)[:120]}). Is the file complete? Export it again."
        ) from None
    if not model.graph.node:
        raise ModelError(f"{path} parses as ONNX but has no graph nodes: it is not a model file.")
    if weights and _has_external_data(model):
        from onnx.external_data_helper import load_external_data_for_model

        external_files(model, path)  # every location stays inside the model's folder
        try:
            load_external_data_for_model(model, str(path.parent))
        except (FileNotFoundError, OSError) as e:
            missing = getattr(e, "filename", None) or str(e)
            raise ModelError(
                f"The ONNX file {path} keeps its weights in external data files, and "
                f"{missing} cannot be read. Copy the data files that were exported with the "
                "model into the same folder as the .onnx file."
            ) from None
    return model


def external_files(model: "onnx.ModelProto", path: Path) -> list[Path]:
    """The external-data files an ONNX model names, resolved beside ``path``. A location that
    leaves the model's folder (``../../.ssh/id_rsa``, an absolute path, a link out of it) is
    refused: onnx 1.14 would read that file (CVE-2024-27318)."""
    import onnx

    folder = Path(path).parent.resolve()
    tensors = list(model.graph.initializer) + [
        a.t for n in model.graph.node for a in n.attribute if a.HasField("t")
    ]
    out: list[Path] = []
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ModelError(
                f"The ONNX file {path} keeps tensor {t.name!r} in {location!r}, outside the "
                f"model's folder {folder}. duotpu reads external data only from the model's own "
                "folder: a model that points elsewhere is refused (it could read any file). "
                "Re-export the model, or put its data files beside it and fix the locations."
            )
        if target not in out:
            out.append(target)
    return out


def _has_external_data(model: "onnx.ModelProto") -> bool:
    import onnx

    return any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    ) or any(
        a.t.data_location == onnx.TensorProto.EXTERNAL
        for n in model.graph.node
        for a in n.attribute
        if a.HasField("t")
    )


def inputs_info(model: "onnx.ModelProto") -> list[InputInfo]:
    """Every input of the graph, in its order (initializers listed as inputs are not inputs)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims: list[Dim] = []
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
        out.append(InputInfo(inp.name, tuple(dims), _imgsz(model)))
    return out


def input_info(model: "onnx.ModelProto", where: Path | str = "the model") -> InputInfo:
    """The graph's one input; a model of several inputs is refused (see `inputs_info`)."""
    inputs = inputs_info(model)
    if len(inputs) != 1:
        listed = ", ".join(f"'{i.name}' {i.shown()}" for i in inputs)
        raise ModelError(
            f"The ONNX model {where} has {len(inputs)} inputs ({listed}) where one was expected."
        )
    return inputs[0]


def _imgsz(model: "onnx.ModelProto") -> tuple[int, int] | None:
    for p in model.metadata_props:
        if p.key == "imgsz":
            try:
                v = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            if isinstance(v, int):
                return (v, v)
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
                return (int(v[0]), int(v[1]))
    return None


def settle_shape(
    path: Path,
    shape: Sequence[int],
    *,
    where: str = "model.source",
    constants: Mapping[str, object] | None = None,
) -> tuple[tuple[int, ...], str]:
    """The input shape to build an ONNX model at, and a note saying where it came from ("" when
    the recipe gave it and it fits). ``shape`` is the recipe's (empty: not given).

    Free dims take the recipe's sizes; without one, a fixed model keeps its own shape, a free
    batch becomes 1 and free height/width come from Ultralytics' ``imgsz`` metadata. Raises
    `ModelError` when the recipe contradicts a fixed dim or nothing settles a free one.
    """
    graph = load(path, weights=False)
    freeze_inputs(graph, constants or {}, path)
    info = input_info(graph, path)
    dims = info.dims
    if shape:
        if len(shape) != len(dims) or any(
            isinstance(d, int) and d != s for d, s in zip(dims, shape)
        ):
            raise ShapeError(
                f"The recipe's input shape {list(shape)} (inputs.shape) does not match the "
                f"model's input '{info.name}' of shape {info.shown()} ({where}): its fixed "
                "dims must be kept. Set inputs.shape (--input-shape) to the model's shape."
            )
        if info.free:
            return tuple(shape), (
                f"input '{info.name}' {info.shown()}: free dims fixed to {list(shape)}"
            )
        return tuple(shape), ""
    if not info.free:
        return tuple(int(d) for d in dims), ""  # type: ignore[arg-type]
    settled = list(dims)
    if 0 in info.free:
        settled[0] = 1
    rest = [i for i in info.free if i != 0]
    source = "batch 1"
    if rest and len(dims) == 4 and set(rest) <= {2, 3} and info.imgsz:
        settled[2], settled[3] = info.imgsz
        source = f"the model's imgsz metadata {list(info.imgsz)}"
        rest = []
    if rest:
        names = ", ".join(f"dim {i} ({dims[i] if dims[i] is not None else '?'})" for i in rest)
        if len(dims) == 4:
            channels = settled[1] if isinstance(settled[1], int) else 3
            example = (
                f"--input-shape 1,{channels},H,W (recipe key inputs.shape), e.g. "
                f"1,{channels},224,224 for a classifier or 1,{channels},640,640 for a detector"
            )
        else:
            sizes = ",".join(str(d) if isinstance(d, int) else "SIZE" for d in settled)
            example = f"--input-shape {sizes} (recipe key inputs.shape)"
        raise ShapeError(
            f"The model's input '{info.name}' has the shape {info.shown()}, whose free "
            f"{names} the recipe does not settle. Give the size the model should run at with "
            f"{example}; the TPU runs one fixed shape."
        )
    return tuple(int(d) for d in settled), (  # type: ignore[arg-type]
        f"input '{info.name}' {info.shown()}: free dims fixed to {settled} ({source})"
    )


def freeze_inputs(
    model: "onnx.ModelProto", constants: Mapping[str, object], where: Path | str = "the model"
) -> list[str]:
    """Replace the graph inputs named in ``constants`` by those values (``model.constants``),
    in place; returns a note per input. The value takes the input's element type and declared
    shape (a scalar for ``[]``). Raises `ModelError` for a name that is not an input."""
    import numpy as np
    from onnx import helper, numpy_helper

    if not constants:
        return []
    by_name = {i.name: i for i in model.graph.input}
    inits = {i.name for i in model.graph.initializer}
    notes = []
    for name, value in constants.items():
        inp = by_name.get(name)
        if inp is None or name in inits:
            listed = ", ".join(i.name for i in inputs_info(model))
            raise ModelError(
                f"model.constants names {name!r}, which is not an input of {where} (its inputs: "
                f"{listed or 'none'})."
            )
        dtype = helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        arr = np.asarray(value, dtype=dtype)
        dims = [
            d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim
        ]
        if -1 not in dims and int(np.prod(dims)) == arr.size:
            arr = arr.reshape(dims)
        elif len(dims) != arr.ndim:
            raise ModelError(
                f"model.constants.{name} = {value!r} has {arr.ndim} dims; the input {name!r} of "
                f"{where} has {len(dims)}."
            )
        model.graph.input.remove(inp)
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
        notes.append(f"input '{name}' fixed to {value!r} (model.constants)")
    return notes


def inputs_table(infos: Sequence[InputInfo], named: Mapping[str, int] | None = None) -> str:
    """The recipe's ``inputs`` for ``infos`` as an inline TOML list for ``--set 'inputs=…'``
    (a free batch shown as 1, a named dim settled elsewhere as its size, others as SIZE)."""
    known = dict(named or {})

    def dims(info: InputInfo) -> str:
        return ", ".join(
            str(d)
            if isinstance(d, int)
            else str(known[d])
            if isinstance(d, str) and d in known
            else "1"
            if k == 0
            else "SIZE"
            for k, d in enumerate(info.dims)
        )

    return "[" + ", ".join(f'{{name = "{i.name}", shape = [{dims(i)}]}}' for i in infos) + "]"


def settle_inputs(
    path: Path,
    given: Sequence[tuple[str, Sequence[int]]],
    *,
    where: str = "model.source",
    constants: Mapping[str, object] | None = None,
) -> tuple[list[tuple[str, tuple[int, ...]]], str]:
    """Every input's (name, shape) to build an ONNX model of several inputs at, in the graph's
    order, and a note saying what was settled. ``given`` is the recipe's inputs (name, shape;
    an empty shape: the model's own).

    A fixed dim is kept, a free batch (dim 0) becomes 1; any other free dim must be given by
    the recipe. Raises `ShapeError` naming the input and the recipe table to write.
    """
    graph = load(path, weights=False)
    freeze_inputs(graph, constants or {}, path)
    infos = inputs_info(graph)
    by_name = {i.name: i for i in infos}
    listed = ", ".join(f"'{i.name}' {i.shown()}" for i in infos)
    table = inputs_table(infos)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in given:
        if name not in by_name:
            raise ShapeError(
                f"The recipe names an input '{name}' (inputs.name); the model ({where}) has "
                f"{len(infos)} inputs: {listed}. Give each input by its name: --set "
                f"'inputs={table}' (in a recipe file: one [[inputs]] table per input)."
            )
        if shape:
            info = by_name[name]
            if len(shape) != len(info.dims) or any(
                isinstance(d, int) and d != s for d, s in zip(info.dims, shape)
            ):
                raise ShapeError(
                    f"The recipe's shape {list(shape)} for input '{name}' does not match the "
                    f"model's {info.shown()} ({where}): its fixed dims must be kept."
                )
            shapes[name] = tuple(int(v) for v in shape)
    # a named dim is one size wherever it appears (silero's "batch": input dim 0, state dim 1)
    named: dict[str, int] = {}
    for name, shape in shapes.items():
        for d, v in zip(by_name[name].dims, shape):
            if isinstance(d, str):
                named.setdefault(d, v)
    for info in infos:
        if info.name not in shapes and 0 in info.free and isinstance(info.dims[0], str):
            named.setdefault(info.dims[0], 1)  # a free batch is 1
    notes = []
    for info in infos:
        if info.name in shapes:
            continue
        settled = list(info.dims)
        if 0 in info.free:
            settled[0] = 1
        for i in info.free:
            d = info.dims[i]
            if isinstance(d, str) and d in named:
                settled[i] = named[d]
        rest = [i for i in info.free if not isinstance(settled[i], int)]
        if rest:
            raise ShapeError(
                f"The model's input '{info.name}' has the shape {info.shown()}, whose free "
                f"dim(s) {', '.join(str(i) for i in rest)} the recipe does not settle. A model "
                f"of several inputs ({listed}) takes each input's shape from the recipe: --set "
                f"'inputs={inputs_table(infos, named)}' (in a recipe file: one [[inputs]] "
                "table per input); the TPU runs one fixed shape."
            )
        shapes[info.name] = tuple(int(d) for d in settled)  # type: ignore[arg-type]
        if info.free:
            notes.append(f"'{info.name}' {info.shown()} → {list(shapes[info.name])}")
    note = "inputs: free dims fixed: " + "; ".join(notes) if notes else ""
    return [(i.name, shapes[i.name]) for i in infos], note


def _check_ops(model: "onnx.ModelProto", where: Path) -> int:
    """The default-domain opset; refuses quantized graphs and ops newer than opset 19."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    quantized = sorted(ops & QUANTIZED_OPS)
    if quantized:
        raise ModelError(
            f"The ONNX model {where} is already quantized (it has {', '.join(quantized)}). "
            "The TPU's INT8 model is made by tpu_mlir's own calibration, which needs the float "
            "model: give the model before quantization (the fp32 ONNX or PyTorch file)."
        )
    if opset > MAX_OPSET:
        changed = sorted(o for o in ops if o in CHANGED_AFTER_19 and o != "Gelu")
        if changed:
            raise ModelError(
                f"The ONNX model {where} has opset {opset} and uses "
                f"{', '.join(f'{o} (changed in opset {CHANGED_AFTER_19[o]})' for o in changed)}; "
                f"the compiler (tpu_mlir 1.30.2, onnx 1.14.1) takes opsets up to {MAX_OPSET}. "
                "Export again with opset 17 (torch.onnx.export(..., opset_version=17); "
                "Ultralytics: model.export(format='onnx', opset=17))."
            )
    return opset


ERF_TANH = (1.1283791671, 0.1009109)  # erf(z) ≈ tanh(a z + b z³), |error| ≤ 3.6e-4


def constant_values(model: "onnx.ModelProto") -> dict[str, Any]:
    """The graph's constant tensors by name (initializers and ``Constant`` nodes)."""
    from onnx import numpy_helper

    out: dict[str, Any] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _fused_gelu_erfs(model: "onnx.ModelProto") -> set[str]:
    """The ``Erf`` nodes (by output name) inside PyTorch's GELU, ``x · (1 + erf(x / c)) · 0.5``
    exactly as tpu_mlir's transform matches it (``onnx_opt.TorchGELUPattern``: Div by a
    constant, Erf, Add 1, Mul by x, Mul by 0.5, each read only by the next): the transform
    fuses those into one GELU op, which CV18xx runs as a lookup table (exact in INT8, where
    the tanh arithmetic below loses most)."""
    import numpy as np

    g = model.graph
    consts = constant_values(model)
    made = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def only_reader(name: str, op: str) -> Any:
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and r[0].op_type == op else None

    def is_const(name: str, value: float | None = None) -> bool:
        if name not in consts:
            return False
        return value is None or bool(np.all(np.asarray(consts[name]) == value))

    fused = set()
    for n in g.node:
        if n.op_type != "Erf" or n.domain not in ("", "ai.onnx"):
            continue
        div = made.get(n.input[0])
        if div is None or div.op_type != "Div" or not is_const(div.input[1]):
            continue
        x = div.input[0]
        if only_reader(div.output[0], "Erf") is not n:
            continue
        add = only_reader(n.output[0], "Add")
        if add is None or list(add.input[:1]) != [n.output[0]] or not is_const(add.input[1], 1):
            continue
        mul0 = only_reader(add.output[0], "Mul")
        if mul0 is None or list(mul0.input) != [x, add.output[0]]:
            continue
        mul1 = only_reader(mul0.output[0], "Mul")
        if mul1 is None or mul1.input[0] != mul0.output[0] or not is_const(mul1.input[1], 0.5):
            continue
        fused.add(n.output[0])
    return fused


def _rewrite_erf_gelu(model: "onnx.ModelProto") -> tuple[int, int, int]:
    """Make every ``Gelu`` (opset 20) and ``Erf`` node something CV18xx runs; returns the counts
    of Gelu nodes, of Erf nodes written as Tanh arithmetic, and of GELUs tpu_mlir fuses.

    CV18xx has no Erf kernel (tpu_mlir 1.30.2 stops with "unimplemented tpu dialect" when it
    lowers ``top.Erf``). PyTorch writes GELU as Erf arithmetic that tpu_mlir's transform fuses
    into its GELU op (a lookup table on CV18xx: see `_fused_gelu_erfs`): those are left as
    they are, and a ``Gelu`` node is written in that same form. Any other Erf becomes
    ``tanh(a z + b z³)``, erf's form of GELU's tanh approximation.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    g = model.graph
    keep = _fused_gelu_erfs(model)
    counts = {"Gelu": 0, "Erf": 0}
    new = []
    for n in list(g.node):
        if (
            n.op_type not in counts
            or n.domain not in ("", "ai.onnx")
            or (n.op_type == "Erf" and n.output[0] in keep)
        ):
            new.append(n)
            continue
        counts[n.op_type] += 1
        x, y = n.input[0], n.output[0]
        p = f"{n.name or n.op_type.lower()}_{sum(counts.values())}"

        def const(name: str, value: float, p: str = p) -> str:
            arr = np.array(value, np.float32)
            g.initializer.append(numpy_helper.from_array(arr, f"{p}_{name}"))
            return f"{p}_{name}"

        if n.op_type == "Gelu":  # 0.5 x (1 + erf(x / sqrt 2)), as PyTorch writes it
            new += [
                helper.make_node("Div", [x, const("sqrt2", float(np.sqrt(2)))], [f"{p}_z"]),
                helper.make_node("Erf", [f"{p}_z"], [f"{p}_erf"]),
                helper.make_node("Add", [f"{p}_erf", const("one", 1.0)], [f"{p}_1e"]),
                helper.make_node("Mul", [x, f"{p}_1e"], [f"{p}_x1e"]),
                helper.make_node("Mul", [f"{p}_x1e", const("half", 0.5)], [y], name=n.name),
            ]
            continue
        a, b = ERF_TANH
        new += [
            helper.make_node("Mul", [x, x], [f"{p}_z2"]),
            helper.make_node("Mul", [f"{p}_z2", const("b", b)], [f"{p}_bz2"]),
            helper.make_node("Add", [f"{p}_bz2", const("a", a)], [f"{p}_poly"]),
            helper.make_node("Mul", [x, f"{p}_poly"], [f"{p}_arg"]),
            helper.make_node("Tanh", [f"{p}_arg"], [y], name=n.name),
        ]
    if any(counts.values()):
        del g.node[:]
        g.node.extend(new)
    return counts["Gelu"], counts["Erf"], len(keep) + counts["Gelu"]


def normalise(
    src: Path,
    out: Path,
    shape: Sequence[int] | Mapping[str, Sequence[int]],
    *,
    batch_dynamic: bool = False,
    constants: Mapping[str, object] | None = None,
) -> tuple[str, ...]:
    """Write ``src`` to ``out`` as a file tpu_mlir 1.30.2 and onnxruntime 1.16.3 take; the notes
    say what was changed. Weights are stored inside ``out`` (no external data).

    IR versions newer than the installed onnx reads are rewritten down (the IR version only
    describes the file format; the opset decides the meaning); opsets past 19 are lowered when no
    op's meaning changed; ``Gelu`` becomes the GELU tpu_mlir fuses and other ``Erf`` nodes Tanh
    arithmetic (CV18xx has no Erf); free
    input dims are fixed to ``shape`` (by input name for a model of several inputs; the batch
    stays free with ``batch_dynamic``), and the
    graph is simplified at that shape so ONNX Runtime and the compiler see static shapes.
    """
    import onnx

    src, out = Path(src), Path(out)
    model = load(src)
    notes: list[str] = []
    opset = _check_ops(model, src)
    frozen = freeze_inputs(model, constants or {}, src)
    notes += frozen
    if model.ir_version > SIMPLIFIER_IR:
        notes.append(
            f"IR version {model.ir_version} rewritten to {SIMPLIFIER_IR} (the newest onnxsim's "
            f"checker reads, in tpu_mlir's transform too; onnx {onnx.__version__} reads "
            f"{onnx.IR_VERSION}; the opset keeps the meaning)"
        )
        model.ir_version = SIMPLIFIER_IR
    gelus, erfs, fused = _rewrite_erf_gelu(model)
    if gelus:
        notes.append(
            f"{gelus} Gelu node(s) written as PyTorch's erf form, which tpu_mlir fuses into its "
            "GELU op (a lookup table on CV18xx)"
        )
    if erfs:
        notes.append(
            f"{erfs} Erf node(s) outside a GELU written as tanh(a·z + b·z³) (CV18xx has no Erf; "
            "the largest difference in erf is 3.6e-4)"
        )
    if opset > MAX_OPSET:
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = MAX_OPSET
        notes.append(
            f"opset {opset} lowered to {MAX_OPSET} (no op of the model changed meaning since)"
        )
    if isinstance(shape, Mapping):
        by_name = {i.name: i for i in inputs_info(model)}
        wanted = {by_name[n]: tuple(v) for n, v in shape.items() if n in by_name}
        if len(wanted) != len(by_name):
            raise ModelError(
                f"The model {src} has the inputs {', '.join(by_name)}; shapes were given for "
                f"{', '.join(shape)}."
            )
    else:
        wanted = {input_info(model, src): tuple(shape)}
    for info, dims in wanted.items():
        if len(info.dims) != len(dims):
            raise ModelError(
                f"The input shape {list(dims)} has {len(dims)} dims; the model's input "
                f"'{info.name}' has {len(info.dims)}: {info.shown()}."
            )
    if batch_dynamic or frozen or any(info.free for info in wanted):
        model = _fix_dims(model, wanted, batch_dynamic, notes)
    _save(model, out)
    return tuple(notes)


def _fix_dims(
    model: "onnx.ModelProto",
    wanted: Mapping[InputInfo, tuple[int, ...]],
    batch_dynamic: bool,
    notes: list[str],
) -> "onnx.ModelProto":
    """Fixed input dims, fresh shape inference, and (static shapes only) onnxsim at those
    shapes."""
    import onnx

    for info, shape in wanted.items():
        inp = next(i for i in model.graph.input if i.name == info.name)
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if i == 0 and batch_dynamic:
                d.ClearField("dim_value")
                d.dim_param = "N"
            else:
                d.ClearField("dim_param")
                d.dim_value = int(shape[i])
    # shapes the exporter inferred with free dims are stale now
    del model.graph.value_info[:]
    for o in model.graph.output:
        if batch_dynamic:
            od = o.type.tensor_type.shape.dim
            if od:
                od[0].ClearField("dim_value")
                od[0].dim_param = "N"
        else:
            # sizes unknown, the rank kept: onnx's checker refuses an output type without a
            # shape field ("Field 'shape' of 'type' is required"), and so does onnxsim
            for d in o.type.tensor_type.shape.dim:
                d.ClearField("dim_value")
                d.ClearField("dim_param")
    if batch_dynamic:
        return model
    folded = _inline_static_ifs(model)
    if folded:
        notes.append(
            f"{folded} If node(s) whose condition is fixed by the input shapes (exporter "
            "branches on a dim's size) replaced by the branch taken"
        )
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(
            copy.deepcopy(model),
            overwrite_input_shapes={i.name: list(v) for i, v in wanted.items()},
            check_n=0,
        )
        if not ok:
            raise RuntimeError("onnxsim's check failed")
        model = simplified
    except Exception as e:  # noqa: BLE001 — the fixed-dim model still stands; say so
        notes.append(f"onnxsim could not simplify the fixed-shape graph ({str(e)[:100]})")
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 — ONNX Runtime infers them itself
            pass
    return model


def _static_tensors(graph: "onnx.GraphProto") -> set[str]:
    """Tensors of ``graph`` whose values follow from its shapes alone: initializers, Constant
    nodes, Shape / Size outputs, and whatever only those feed."""
    static = {i.name for i in graph.initializer}
    for n in graph.node:  # nodes are in topological order
        if n.op_type in ("Shape", "Size", "Constant", "ConstantOfShape") and (
            n.op_type != "ConstantOfShape" or all(i in static for i in n.input if i)
        ):
            static.update(n.output)
        elif n.op_type != "If" and all(i in static for i in n.input if i) and n.input:
            static.update(n.output)
    return static


def _inline_static_ifs(model: "onnx.ModelProto", rounds: int = 8) -> int:
    """Replace top-level ``If`` nodes whose condition depends on shapes and constants only (the
    TorchScript exporter's "squeeze if this dim is 1") by the branch they take at the fixed
    input shapes, evaluated once in ONNX Runtime; nested ones surface and go in the next round.
    The compiler takes no ``If``. Returns how many were replaced."""
    import numpy as np
    import onnx
    from onnx import helper

    from duotpu.core.onnxrt import session

    done = 0
    for _ in range(rounds):
        graph = model.graph
        static = _static_tensors(graph)
        ifs = [n for n in graph.node if n.op_type == "If" and n.input[0] in static]
        if not ifs:
            break
        probe = copy.deepcopy(model)
        del probe.graph.output[:]
        probe.graph.output.extend(
            helper.make_tensor_value_info(n.input[0], onnx.TensorProto.BOOL, None) for n in ifs
        )
        feeds = {}
        for i in inputs_info(model):
            dtype = helper.tensor_dtype_to_np_dtype(
                next(g for g in graph.input if g.name == i.name).type.tensor_type.elem_type
            )
            feeds[i.name] = np.zeros([d if isinstance(d, int) else 1 for d in i.dims], dtype)
        try:
            conds = session(probe.SerializeToString()).run(None, feeds)
        except Exception:  # noqa: BLE001 — the graph as it is goes on to onnxsim and the compiler
            break
        nodes = []
        for n in graph.node:
            if n not in ifs:
                nodes.append(n)
                continue
            taken = bool(np.asarray(conds[ifs.index(n)]).reshape(-1)[0])
            branch = next(
                a.g for a in n.attribute if a.name == ("then_branch" if taken else "else_branch")
            )
            graph.initializer.extend(branch.initializer)
            nodes.extend(branch.node)
            nodes.extend(
                helper.make_node("Identity", [b.name], [o], name=f"{n.name}/taken/{k}")
                for k, (b, o) in enumerate(zip(branch.output, n.output))
            )
            done += 1
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def _save(model: "onnx.ModelProto", out: Path) -> None:
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() > 2_000_000_000:
        raise ModelError(
            "The model's weights are over 2 GB; a Duo has 64 MB of memory for the TPU at most."
        )
    onnx.save(model, str(out))
