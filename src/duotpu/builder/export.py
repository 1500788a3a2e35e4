"""Model sources → ONNX (opset 13 by default), with the input shape checked against the model."""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch

    from duotpu.core.head import YoloHead

from duotpu.builder import intake
from duotpu.config.errors import ConfigError, ModelError, ShapeError
from duotpu.config.recipe import DetectOptions, ModelSource, Preprocess
from duotpu.core.files import captured_output

#: one input's shape, or (a model of several inputs) every input's shape by name
Shapes = Union[tuple[int, ...], Mapping[str, tuple[int, ...]]]


@dataclass
class ExportedModel:
    """An ONNX file ready for the compiler, with its input and output names."""

    onnx_path: Path
    input_name: str
    output_names: list[str]
    head: "YoloHead | None" = None
    notes: tuple[str, ...] = ()
    tail: Path | None = None  # with model.outputs: the rest of the model, run on the CPU


def source_kind(source: str) -> str:
    """``onnx``, ``torchscript`` (a .pt/.pth file), ``torchvision`` or ``factory``."""
    if source.startswith("torchvision:"):
        return "torchvision"
    if source.startswith("ultralytics:"):
        return "ultralytics"
    if source.startswith("timm:"):
        return "timm"
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".torchscript", ".ptl"):
        return "torchscript"
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", source):
        return "factory"
    raise ConfigError(
        f"Cannot tell what model.source {source!r} is. Give an .onnx file, a "
        "TorchScript/PyTorch .pt file, 'torchvision:NAME', 'timm:NAME', "
        "'ultralytics:yolov8n.yaml' or 'package.module:function'."
    )


def source_files(src: ModelSource) -> list[Path]:
    """The files whose content decides the exported model (for the cache key)."""
    files = []
    kind = source_kind(src.source)
    if kind in ("onnx", "torchscript"):
        if not Path(src.source).is_file():
            raise ModelError(
                f"The model file {src.source} does not exist. Check the path "
                "(relative paths in a recipe are taken from the recipe's folder)."
            )
        files.append(Path(src.source))
        if kind == "onnx":  # its external-data files decide the model too
            files += intake.external_files(
                intake.load(Path(src.source), weights=False), Path(src.source)
            )
    elif kind == "factory":
        module = src.source.split(":")[0]
        spec = importlib.util.find_spec(module.split(".")[0])
        if (
            spec is not None
            and spec.origin
            and not spec.origin.startswith(sys.prefix)
            and spec.origin not in ("built-in", "frozen")
        ):
            try:
                mod_spec = importlib.util.find_spec(module)
                if mod_spec and mod_spec.origin and Path(mod_spec.origin).is_file():
                    files.append(Path(mod_spec.origin))
                    # the modules beside it (the factory may import them): a user's own code
                    files += sorted(
                        p for p in Path(mod_spec.origin).parent.glob("*.py") if p not in files
                    )[:200]
            except (ImportError, ValueError):
                pass
    if src.weights and Path(src.weights).suffix:
        if not Path(src.weights).is_file():
            raise ModelError(f"The weights file {src.weights} (model.weights) does not exist.")
        files.append(Path(src.weights))
    return files


# --------------------------------------------------------------------------------------------
def load_torch_module(src: ModelSource) -> torch.nn.Module:
    """The ``nn.Module`` a PyTorch source names, in eval mode, with its weights loaded."""
    import torch

    kind = source_kind(src.source)
    if kind == "torchvision":
        model = _torchvision_model(src)
    elif kind == "ultralytics":
        from duotpu.builder.yolo import ultralytics_model

        model = ultralytics_model(src.source.split(":", 1)[1], **src.kwargs)
        if src.weights:
            _load_state_dict(model, Path(src.weights))
    elif kind == "timm":
        model = _timm_model(src)
    elif kind == "factory":
        module_name, fn_name = src.source.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ModelError(
                f"Cannot import the module '{module_name}' of model.source "
                f"{src.source!r}: {e}. Check the name and that the module is on "
                "PYTHONPATH (or in the current folder)."
            ) from None
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise ModelError(
                f"Module '{module_name}' has no function '{fn_name}' (model.source {src.source!r})."
            )
        model = fn(**src.kwargs)
        if not isinstance(model, torch.nn.Module):
            raise ModelError(
                f"{src.source} returned {type(model).__name__}, not a torch nn.Module."
            )
        if src.weights:
            _load_state_dict(model, Path(src.weights))
    else:
        model = _load_pt(Path(src.source))
        if src.weights:
            _load_state_dict(model, Path(src.weights))
    return model.eval()


def _timm_model(src: ModelSource) -> torch.nn.Module:
    """``timm:NAME``: the architecture from timm (never downloaded: random weights, or
    model.weights as a state_dict file)."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model.source {src.source!r} needs timm: pip install timm (it is in duotpu's "
            "requirements.lock)."
        ) from None
    name = src.source.split(":", 1)[1]
    if name not in timm.list_models():
        near = timm.list_models(f"*{name.split('_')[0]}*")[:6]
        raise ConfigError(f"timm has no model '{name}'. Near: {', '.join(near) or 'none'}.")
    model = timm.create_model(name, pretrained=False, **src.kwargs)
    if src.weights:
        _load_state_dict(model, Path(src.weights))
    return model


def _torchvision_model(src: ModelSource) -> torch.nn.Module:
    import torchvision

    name = src.source.split(":", 1)[1]
    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        raise ConfigError(
            f"torchvision has no model '{name}'. Examples: resnet18, "
            "mobilenet_v2, squeezenet1_1, shufflenet_v2_x0_5."
        ) from None
    weights = src.weights
    if weights and Path(weights).suffix:  # a file of weights: build, then load them
        model: torch.nn.Module = builder(weights=None, **src.kwargs)
        _load_state_dict(model, Path(weights))
        return model
    if weights:
        try:
            enum = torchvision.models.get_model_weights(name)
            w = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise ConfigError(
                f"torchvision has no weights '{weights}' for {name}; choose from "
                f"{', '.join(m.name for m in enum)} or DEFAULT."
            ) from None
        cached = (
            Path(os.environ.get("TORCH_HOME", Path.home() / ".cache/torch"))
            / "hub"
            / "checkpoints"
            / Path(w.url).name
        )
        try:
            loaded: torch.nn.Module = builder(weights=w, **src.kwargs)  # torchvision's code
            return loaded
        except Exception as e:  # offline: the download fails
            raise ModelError(
                f"torchvision could not load the weights {name}.{w.name}: {str(e)[:200]}. This "
                f"machine may be offline: put the file {Path(w.url).name} in {cached.parent} "
                "(torchvision reads it from there), or give model.weights as the path of a "
                "state_dict file."
            ) from None
    plain: torch.nn.Module = builder(weights=None, **src.kwargs)
    return plain


def _load_pt(path: Path) -> torch.nn.Module:
    import torch

    if not path.is_file():
        raise ModelError(f"The model file {path} does not exist.")
    try:
        scripted: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
        return scripted
    except Exception:
        pass
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelError(
            f"The model file {path} is not a TorchScript or PyTorch file that "
            f"can be loaded ({type(e).__name__}: {str(e)[:160]}). Is it complete? "
            "Re-save it with torch.jit.save or torch.save(model)."
        ) from None
    if isinstance(obj, torch.nn.Module):
        return obj
    from duotpu.builder.yolo import from_checkpoint

    model = from_checkpoint(obj)  # a training checkpoint (Ultralytics, YOLOv5)
    if model is not None:
        return model
    if isinstance(obj, dict):
        raise ModelError(
            f"{path} holds only weights (a state_dict), not a model. Give the "
            "architecture as model.source ('package.module:function' or "
            f"'torchvision:NAME') and this file as model.weights."
        )
    raise ModelError(f"{path} holds a {type(obj).__name__}, not a PyTorch model.")


def _load_state_dict(model: torch.nn.Module, path: Path) -> None:
    import torch

    if not path.is_file():
        raise ModelError(f"The weights file {path} does not exist.")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelError(f"Cannot read the weights file {path}: {str(e)[:200]}.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise ModelError(f"The weights in {path} do not fit the model: {str(e)[:300]}") from None


# --------------------------------------------------------------------------------------------
def export_onnx(
    src: ModelSource,
    shape: Shapes,
    input_name: str,
    out: Path,
    batch_sizes: tuple[int, ...] = (1,),
    task: str = "classify",
    detect: DetectOptions | None = None,
    preprocess: Preprocess | None = None,
) -> ExportedModel:
    """Write the model as ONNX to ``out`` (atomically) and check it runs at ``shape`` (for a
    model of several inputs, every input's shape by name; ``input_name`` is then unused).

    With more than one batch size the model is written with a dynamic batch dimension (a fixed
    batch in an ONNX file is replaced) and checked at every batch size. For ``task="detect"``
    the whole model is written to ``NAME_full.onnx`` and ``out`` is the model cut before its
    box decode (`duotpu.builder.yolo.cut_head`); the result's ``head`` says how to decode it.
    """
    dynamic = tuple(batch_sizes) != (1,)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    kind = source_kind(src.source)
    names: list[str] = []
    notes: tuple[str, ...] = ()
    if kind == "onnx":
        notes = intake.normalise(
            Path(src.source), tmp, shape, batch_dynamic=dynamic, constants=src.constants
        )
    else:
        import torch

        model = load_torch_module(src)
        feeds = dict(shape) if isinstance(shape, Mapping) else {input_name: tuple(shape)}
        if kind in ("torchvision", "ultralytics", "timm") and not src.weights:
            notes += (reestimate_batchnorm(model, feeds[input_name], preprocess),)
        if task == "detect":
            from duotpu.builder.yolo import prepare_for_export

            names = prepare_for_export(model)
        consts = dict(src.constants)
        dummy = tuple(torch.zeros(*s) for s in feeds.values())
        try:
            with torch.no_grad():
                model(*dummy, **consts)
        except Exception as e:
            raise ModelError(_torch_refusal(model, feeds, e, consts)) from None
        extra: dict[str, Any] = {}
        if dynamic:
            extra["dynamic_axes"] = {input_name: {0: "N"}, "output": {0: "N"}}

        def export(opset: int) -> None:
            # a failing export prints the whole graph, from C++ on stderr and on stdout: keep it
            # off the user's terminal (the error says what failed)
            with warnings.catch_warnings(), captured_output():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    (*dummy, consts) if consts else dummy,  # a last dict: keyword arguments
                    str(tmp),
                    opset_version=opset,
                    input_names=list(feeds),
                    output_names=["output"] if len(feeds) == 1 else None,
                    dynamo=False,
                    **extra,
                )

        try:
            export(src.opset)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            # an op the requested opset lacks (scaled_dot_product_attention needs 14): the
            # newest opset tpu_mlir takes, said in a note
            if "opset" in str(e).lower() and src.opset < intake.MAX_OPSET:
                try:
                    export(17)
                except Exception:  # noqa: BLE001 — the first error is the one to report
                    tmp.unlink(missing_ok=True)
                else:
                    notes += (
                        f"exported with opset 17: opset {src.opset} (model.opset) has no "
                        f"{_unsupported_op(e)}",
                    )
            if not tmp.exists():
                raise ModelError(
                    f"Exporting {src.source} to ONNX (opset {src.opset}) failed: "
                    f"{type(e).__name__}: {_last_line(e)}"
                ) from None
        if consts:
            _freeze_exported(tmp, set(feeds), consts)
    head = None
    tail = None
    try:
        if task == "detect":
            from duotpu.builder.yolo import cut_head

            full = out.with_name(out.stem + "_full.onnx")
            os.replace(tmp, full)
            detect = detect or DetectOptions()
            head = cut_head(
                full, tmp, list(detect.classes) or names, [list(a) for a in detect.anchors] or None
            )
        elif src.outputs:
            whole = out.with_name(out.stem + "_full.onnx")
            os.replace(tmp, whole)
            tail = out.with_name(out.stem + ".tail.onnx")
            cut_graph(whole, tmp, tail, tuple(src.outputs))
            check_onnx_runs(whole, shape)
        if isinstance(shape, Mapping):
            info = check_onnx_runs(tmp, shape)
        else:
            for b in sorted(set(batch_sizes) | {shape[0]}):
                info = check_onnx_runs(tmp, (b, *shape[1:]))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    if tail is not None:
        notes += (
            f"TPU model cut at {', '.join(src.outputs)}; the rest runs on the CPU "
            "(NAME.tail.onnx beside the cvimodel, in ONNX Runtime)",
        )
    return ExportedModel(out, info[0], info[1], head, notes, tail)


BN_CROPS = 32  # natural crops the statistics of a random-weight model are re-estimated on


def reestimate_batchnorm(
    model: torch.nn.Module, shape: tuple[int, ...], preprocess: Preprocess | None, seed: int = 0
) -> str:
    """Give a randomly initialised network realistic activations: its BatchNorm statistics
    re-estimated on natural photo crops, preprocessed as the recipe says. With fresh statistics
    (mean 0, variance 1) the activations of deep networks shrink layer by layer (random
    MobileNetV2: mean |x| 1e-9 at the last layer), so INT8 quantizes them to zero and every
    accuracy number would be meaningless. Returns the note to show."""
    import numpy as np
    import torch
    from torch import nn

    from duotpu.core.images import calibration_photos, random_crops
    from duotpu.core.preprocess import preprocess_image

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return "random weights (no BatchNorm layers to re-estimate)"
    pre = preprocess or Preprocess()
    one = (1, *shape[1:])
    crops = [c for _, c in random_crops(calibration_photos(), BN_CROPS, seed + 7)]
    x = torch.from_numpy(np.concatenate([preprocess_image(c, pre, one) for c in crops]))
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches seen
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 8):
            model(x[i : i + 8])
    model.eval()
    return (
        f"random weights: BatchNorm statistics of {len(bns)} layers re-estimated on "
        f"{BN_CROPS} natural crops (else the activations vanish); accuracy numbers of this "
        "model describe quantization only"
    )


def _freeze_exported(path: Path, feeds: set[str], consts: Mapping[str, Any]) -> None:
    """A scripted model keeps its ``int`` arguments as graph inputs (``sr.1``) even when the
    export was given their values: those inputs become the constants."""
    import onnx

    model = onnx.load(str(path))
    extra = {
        i.name: consts[i.name.split(".")[0]]
        for i in intake.inputs_info(model)
        if i.name not in feeds and i.name.split(".")[0] in consts
    }
    if extra:
        intake.freeze_inputs(model, extra, path)
        onnx.save(model, str(path))


def _torch_refusal(
    model: Any, feeds: Mapping[str, tuple[int, ...]], e: Exception, consts: Mapping[str, Any]
) -> str:
    """Why the PyTorch model did not run on zero tensors of the recipe's shapes: a ``forward``
    argument that is not a tensor (silero-vad's ``sr: int``) is named with the way around, else
    the shapes are."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a scripted forward without a Python signature
        params = []
    if not params:
        schema = getattr(getattr(model, "forward", None), "schema", None)
        args = [a for a in getattr(schema, "arguments", [])][1:]  # without self
        plain = [
            a.name
            for a in args
            if str(a.type) in ("int", "float", "bool", "str") and a.name not in consts
        ]
    else:
        plain = [
            p.name
            for p in params
            if p.annotation in (int, float, bool, str, "int", "float", "bool", "str")
            and p.name not in consts
        ]
    if plain:
        return (
            f"The model's forward takes {', '.join(repr(n) for n in plain)}, which "
            f"{'is' if len(plain) == 1 else 'are'} not a tensor: the TPU model takes tensors "
            f"only. Give {'its' if len(plain) == 1 else 'their'} value in the recipe: --set "
            f"model.constants.{plain[0]}=VALUE (e.g. a sample rate of 16000; recipe table "
            "[model.constants]), and the tensor inputs' shapes ([[inputs]] name/shape per input)."
        )
    shown = (
        str(list(*feeds.values()))
        if len(feeds) == 1
        else "; ".join(f"{n} {list(s)}" for n, s in feeds.items())
    )
    return (
        f"The model does not accept {'an input' if len(feeds) == 1 else 'inputs'} of shape "
        f"{shown} (recipe key inputs.shape): {type(e).__name__}: {_last_line(e)}. Set the "
        "shape the model was built for."
    )


def _unsupported_op(e: Exception) -> str:
    m = re.search(r"operator '([\w:]+)'", str(e))
    return m.group(1) if m else "an op the model uses"


def _last_line(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else repr(e))[:300]


def check_onnx_runs(path: Path, shape: Shapes) -> tuple[str, list[str]]:
    """Check the ONNX model's inputs are compatible with ``shape`` (one input's shape, or every
    input's by name) and that it runs on them in ONNX Runtime. Returns (first input's name,
    output names)."""
    import numpy as np

    model = intake.load(path, weights=False)
    if isinstance(shape, Mapping):
        infos = intake.inputs_info(model)
        wanted = {i.name: tuple(shape[i.name]) for i in infos if i.name in shape}
    else:
        infos = [intake.input_info(model, path)]
        wanted = {infos[0].name: tuple(shape)}
    for info in infos:
        s = wanted.get(info.name, ())
        if len(info.dims) != len(s) or any(
            isinstance(d, int) and d != v for d, v in zip(info.dims, s)
        ):
            raise ShapeError(
                f"The recipe's input shape {list(s)} (inputs.shape) does not match "
                f"the model's input '{info.name}' of shape {info.shown()}. Set inputs."
                "shape to the model's shape."
            )
    from duotpu.core.onnxrt import session

    shown = "; ".join(f"{n} {list(s)}" for n, s in wanted.items())
    try:
        sess = session(path)
        sess.run(None, {n: np.zeros(s, np.float32) for n, s in wanted.items()})
    except Exception as e:
        raise ModelError(
            f"ONNX Runtime cannot run the model on inputs of shape {shown}: {_last_line(e)}"
        ) from None
    return infos[0].name, [o.name for o in model.graph.output]


def tensor_before(path: Path, layer: str, op: str) -> str:
    """The model tensor that feeds the compiler's layer ``layer`` (tpu_mlir names a layer
    ``<ONNX output>_<op type>``), or "" when it is the model's input or not found."""
    model = intake.load(path, weights=False)
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    for node in model.graph.node:
        if any(layer in (out, f"{out}_{op}", f"{out}_{node.op_type}") for out in node.output):
            feeds = [i for i in node.input if i and i not in inits]
            if feeds and feeds[0] not in graph_inputs:
                return str(feeds[0])
            return ""
    return ""


def cuts_before(path: Path, tensor: str, count: int) -> list[str]:
    """``tensor`` and up to ``count - 1`` tensors before it, walking the graph back along each
    node's data input (over ops that only move data and over a bias or scale, which make no
    cut of their own): the cuts that put one more layer of the model's end on the CPU each."""
    model = intake.load(path, weights=False)
    made = {o: n for n in model.graph.node for o in n.output if o}
    inits = {i.name for i in model.graph.initializer}
    consts = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    out, t = [tensor], tensor
    while len(out) < count and t in made:
        stepped = made[t]
        data = [i for i in stepped.input if i and i not in inits and i not in consts]
        if not data or data[0] not in made:
            break  # a model input: no cut before it
        t = data[0]
        # a bias or scale (an elementwise op with a constant) is one layer with the op before
        # it on the TPU: the tensor between them is no cut of its own
        fused = stepped.op_type in _AFFINE and len(data) < len([i for i in stepped.input if i])
        if made[t].op_type not in _PLUMBING and not fused:
            out.append(t)
    return out


#: elementwise ops that, with a constant operand, the compiler fuses into the op before them
_AFFINE = {"Add", "Sub", "Mul", "Div"}


#: ops that only move or reshape data: a difference that first shows after one of them was made
#: by the op before it
_PLUMBING = {"Squeeze", "Unsqueeze", "Reshape", "Flatten", "Identity", "Transpose", "Concat"}


def first_differing_layer(path: Path, layer: str) -> tuple[str, str, str]:
    """The ONNX node where the compiler's fp32 translation first differs, from the first layer
    model_transform's comparison failed at (``<ONNX output>_<op>``), walking back over ops that
    only move data: (node name, op type, the tensor that feeds it — "" when that is a model
    input). ("", "", "") when the layer is not in the graph."""
    model = intake.load(path, weights=False)
    made = {o: n for n in model.graph.node for o in n.output if o}
    inits = {i.name for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    node = next(
        (n for n in model.graph.node if any(layer in (o, f"{o}_{n.op_type}") for o in n.output)),
        None,
    )
    if node is None:
        return "", "", ""
    for _ in range(20):
        data = [i for i in node.input if i and i not in inits]
        if node.op_type not in _PLUMBING or not data or data[0] not in made:
            break
        node = made[data[0]]
    data = [i for i in node.input if i and i not in inits]
    feed = data[0] if data and data[0] not in graph_inputs else ""
    return node.name or node.output[0], node.op_type, feed


def cut_graph(full: Path, head: Path, tail: Path, tensors: tuple[str, ...]) -> None:
    """Split the ONNX model ``full`` at ``tensors``: ``head`` (input → tensors) is what the TPU
    runs, ``tail`` (tensors → the model's outputs) runs on the CPU. Raises `ModelError`
    naming a tensor the graph does not have, or a tail that also reads something before the
    cut."""
    import difflib

    import onnx
    import onnx.utils

    model = intake.load(full)
    inits = {i.name for i in model.graph.initializer}
    produced = [o for n in model.graph.node for o in n.output if o]
    missing = [t for t in tensors if t not in produced]
    if missing:
        near = difflib.get_close_matches(missing[0], produced, n=5, cutoff=0.3) or produced[-5:]
        raise ModelError(
            f"--cut-at (model.outputs) names {', '.join(repr(m) for m in missing)}, which the "
            f"ONNX graph does not produce. Tensor names are the ONNX graph's (see it in Netron); "
            f"near ones: {', '.join(near)}."
        )
    graph_inputs = [i.name for i in intake.inputs_info(model)]
    outputs = [o.name for o in model.graph.output]
    model = onnx.shape_inference.infer_shapes(model)
    # the extractor looks tensors up in value_info only: a cut at a model output needs its entry
    known = {v.name for v in model.graph.value_info}
    model.graph.value_info.extend(o for o in model.graph.output if o.name not in known)
    try:
        extractor = onnx.utils.Extractor(model)
        head_model = extractor.extract_model(graph_inputs, list(tensors))
        read = {i for n in head_model.graph.node for i in n.input}
        if any(i not in read for i in graph_inputs):  # an input only the rest reads
            head_model = extractor.extract_model(
                [i for i in graph_inputs if i in read], list(tensors)
            )
        tail_model = extractor.extract_model(list(tensors), outputs)
    except (KeyError, ValueError) as e:
        raise ModelError(
            f"The ONNX graph cannot be cut at {', '.join(tensors)}: the shape of {e} is not "
            "known after shape inference. Cut at another tensor (the input of the next op)."
        ) from None
    made = set(tensors) | inits | {o for n in tail_model.graph.node for o in n.output}
    inits |= {i.name for i in tail_model.graph.initializer}
    reads = [i for n in tail_model.graph.node for i in n.input if i and i not in made | inits]
    # the model's own inputs (an LSTM's state) are at hand wherever the tail runs: it reads them
    given = [i for i in dict.fromkeys(reads) if i in graph_inputs]
    if given:
        tail_model = extractor.extract_model([*tensors, *given], outputs)
        reads = [i for i in reads if i not in given]
    if reads or not tail_model.graph.node:
        raise ModelError(
            f"The model after {', '.join(tensors)} also reads {', '.join(sorted(set(reads)))} "
            "(computed before the cut), so it cannot run on the CPU from the cut tensors and the "
            "model's inputs alone. Cut later, or add those tensors to --cut-at."
            if reads
            else f"Nothing of the model comes after {', '.join(tensors)}: there is no tail to cut."
        )
    for m in (head_model, tail_model):
        m.ir_version = model.ir_version
        del m.opset_import[:]
        m.opset_import.extend(model.opset_import)
    onnx.save(head_model, str(head))
    onnx.save(tail_model, str(tail))
