"""YOLO detectors for the TPU: load them, and cut the graph before the box decode.

The decode of a YOLO head (DFL softmax, grid and anchor arithmetic, the concat of boxes with
sigmoid scores) quantizes badly in INT8 and tpu_mlir's ``--add_postprocess`` does not support
cv180x. duotpu therefore compiles the network up to the last convolutions of the head and does
the decode on the CPU (:mod:`duotpu.core.detect`).

Two head layouts are known, both found by the structure of the ONNX graph, not by layer names:

* ``anchor_free`` — Ultralytics YOLOv8 / YOLOv5u / YOLO11: per scale, a box map with
  ``4 * reg_max`` channels (a distribution per box side, decoded by the DFL) and a class map with
  ``nc`` channels.
* ``anchor`` — the original YOLOv5: per scale, one map with ``na * (5 + nc)`` channels
  (xywh, objectness, classes per anchor), decoded with the anchors.

The cut keeps every node that feeds those convolutions; the resulting ONNX file's outputs are the
head maps and :class:`YoloHead` says how to decode them.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from duotpu.config.errors import ModelError
from duotpu.core.files import atomic_path
from duotpu.core.head import COCO_NAMES, YoloHead  # noqa: F401  (what the cut produces)

if TYPE_CHECKING:
    import onnx
    import torch


# --------------------------------------------------------------------------------------------
# PyTorch side
# --------------------------------------------------------------------------------------------
def ultralytics_model(cfg: str, nc: int | None = None) -> torch.nn.Module:
    """An Ultralytics detection model built from its yaml (``yolov8n.yaml``, ``yolov5s.yaml``,
    ``yolo11n.yaml`` …, shipped in the package), with random weights."""
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as e:
        raise ModelError(f"The 'ultralytics' package is needed for {cfg!r}: {e}.") from None
    try:
        model: torch.nn.Module = DetectionModel(cfg, nc=nc, verbose=False)  # type: ignore[no-untyped-call]
        return model
    except FileNotFoundError:
        raise ModelError(
            f"Ultralytics has no model yaml {cfg!r}. Examples: yolov8n.yaml, "
            "yolov5n.yaml, yolo11n.yaml (the letter after the version is the "
            "size: n, s, m, l, x)."
        ) from None


def from_checkpoint(obj: object) -> torch.nn.Module | None:
    """The model inside a training checkpoint dict (Ultralytics and YOLOv5 save
    ``{"model": ..., "ema": ...}``), as float32; ``None`` if ``obj`` is not one."""
    import torch

    if not isinstance(obj, dict):
        return None
    model = obj.get("ema") or obj.get("model")
    if not isinstance(model, torch.nn.Module):
        return None
    return model.float()


def _detect_heads(model: torch.nn.Module) -> list[Any]:
    return [
        m
        for m in model.modules()
        if type(m).__name__ in ("Detect", "IDetect") and hasattr(m, "stride")
    ]


def prepare_for_export(model: torch.nn.Module) -> list[str]:
    """Put a YOLO model's detection head in export mode (one decoded output tensor) and return
    its class names ([] if the model has none)."""
    for m in _detect_heads(model):
        if hasattr(m, "export"):
            m.export = True
        if hasattr(m, "format"):
            m.format = "onnx"
        if hasattr(m, "dynamic"):
            m.dynamic = False
    names = getattr(model, "names", None)
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    return []


def is_detector(model: torch.nn.Module) -> bool:
    """Whether a PyTorch model has a YOLO detection head."""
    return bool(_detect_heads(model))


# --------------------------------------------------------------------------------------------
# ONNX side: find the head and cut
# --------------------------------------------------------------------------------------------
def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray[Any, Any]]:
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _is_dfl(node: onnx.NodeProto, consts: dict[str, np.ndarray[Any, Any]]) -> bool:
    """The DFL's 1x1 convolution: fixed weights 0, 1, …, reg_max-1."""
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
        return False
    return np.allclose(w.reshape(-1), np.arange(w.shape[1]))


def names_from_metadata(model: onnx.ModelProto) -> list[str]:
    """Class names an Ultralytics ONNX export keeps in its metadata (``names``)."""
    for p in model.metadata_props:
        if p.key == "names":
            try:
                d = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return []
            return [str(d[k]) for k in sorted(d)] if isinstance(d, dict) else list(map(str, d))
    return []


#: the way around for a detector head duotpu recognises but does not decode
_NOT_DECODED = (
    '{what}: duotpu does not decode that head yet. Build it with task = "generic" (its '
    "head maps are delivered and verified as tensors) and decode them on the CPU as the "
    "model's own package does."
)


def cut_head(
    full_onnx: Path,
    out: Path,
    names: list[str] | None = None,
    anchors: list[list[float]] | None = None,
) -> YoloHead:
    """Cut a YOLO ONNX model before its box decode: write the model whose outputs are the head
    maps to ``out`` and return how to decode them. Raises :class:`ModelError` when the graph
    has no recognisable YOLO head."""
    import onnx

    model = onnx.load(str(full_onnx))
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    in_shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    shapes = _conv_shapes(model, inp.name, in_shape)
    consts = _constants(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and not _is_dfl(n, consts)]
    dfl = [n for n in model.graph.node if n.op_type == "Conv" and _is_dfl(n, consts)]

    def feeds_conv(node: onnx.NodeProto) -> bool:
        seen, todo = set(), list(node.output)
        while todo:
            t = todo.pop()
            for c in consumers.get(t, []):
                if id(c) in seen:
                    continue
                seen.add(id(c))
                if c.op_type == "Conv" and not _is_dfl(c, consts):
                    return True
                todo.extend(c.output)
        return False

    last = [n for n in convs if not feeds_conv(n)]
    if (
        not last
        or len(in_shape) != 4
        or not all(len(shapes.get(n.output[0], [])) == 4 for n in last)
    ):
        raise ModelError(
            f"{full_onnx} does not look like a YOLO detector: no convolution head "
            "with 4-D outputs was found. duotpu's detect task supports Ultralytics "
            "YOLOv8 / YOLOv5u / YOLO11 and the original YOLOv5."
        )
    H, W = in_shape[2], in_shape[3]
    levels: dict[int, list[onnx.NodeProto]] = {}
    for n in last:
        h = shapes[n.output[0]][2]
        levels.setdefault(H // h, []).append(n)
    strides = sorted(levels)
    if len(strides) < 2:
        raise ModelError(
            f"{full_onnx} does not look like a YOLO detector: its last "
            "convolutions work at one scale only, a YOLO head at several. duotpu's "
            "detect task supports Ultralytics YOLOv8 / YOLOv5u / YOLO11 and the "
            'original YOLOv5; for a classifier use task = "classify".'
        )
    per_level = {len(v) for v in levels.values()}

    def seen() -> str:
        return "; ".join(
            f"stride {st}: {len(levels[st])} map(s) of "
            + "/".join(str(shapes[n.output[0]][1]) for n in levels[st])
            + " channels"
            for st in strides
        )

    if per_level == {2}:
        reg_max = int(consts[dfl[0].input[1]].shape[1]) if dfl else 1
        outputs, ncs = [], set()
        for s in strides:
            a, b = levels[s]
            ca, cb = shapes[a.output[0]][1], shapes[b.output[0]][1]
            box, cls = (
                (a, b)
                if ca == 4 * reg_max
                and cb != 4 * reg_max
                or (
                    ca == 4 * reg_max
                    and cb == 4 * reg_max
                    and model.graph.node.index(a) < model.graph.node.index(b)
                )
                else (b, a)
            )
            if shapes[box.output[0]][1] != 4 * reg_max:
                raise ModelError(
                    f"{full_onnx}: the head at stride {s} has no box map of "
                    f"{4 * reg_max} channels (duotpu saw {seen()}). "
                    + _NOT_DECODED.format(
                        what="Two maps per scale without YOLOv8's DFL convolution are a "
                        "PP-PicoDet / PP-YOLOE / NanoDet-style GFL head (a box map of "
                        "4 × (reg_max + 1) channels decoded with a softmax)"
                    )
                )
            outputs += [box.output[0], cls.output[0]]
            ncs.add(shapes[cls.output[0]][1])
        if len(ncs) != 1:
            raise ModelError(f"{full_onnx}: the class maps disagree on the class count {ncs}.")
        head = YoloHead("anchor_free", (H, W), strides, outputs, ncs.pop(), reg_max)
    elif per_level == {1}:
        anchors = anchors or _find_anchors(
            model, consumers, [levels[s][0] for s in strides], inp.name, in_shape
        )
        if not anchors:
            raise ModelError(
                f"{full_onnx} has one head map per scale (duotpu saw {seen()}) and no "
                "anchors in the graph. If it is an original YOLOv5, give its anchors in the "
                "recipe: detect.anchors = [[w, h, w, h, w, h], …] per scale, in input pixels. "
                + _NOT_DECODED.format(
                    what="One map of classes + 4 × (reg_max + 1) channels is a PP-PicoDet "
                    "head with shared class/box convolutions (e.g. 32 box channels for "
                    "reg_max 7)"
                )
            )
        na = len(anchors[0]) // 2
        ch = {shapes[levels[s][0].output[0]][1] for s in strides}
        if len(ch) != 1 or (ch_ := ch.pop()) % na or ch_ // na < 6:
            raise ModelError(
                f"{full_onnx}: head maps with {ch} channels do not fit {na} "
                "anchors × (5 + classes)."
            )
        head = YoloHead(
            "anchor",
            (H, W),
            strides,
            [levels[s][0].output[0] for s in strides],
            ch_ // na - 5,
            0,
            [list(map(float, a)) for a in anchors],
        )
    else:
        raise ModelError(
            f"{full_onnx}: found {sorted(per_level)} head convolutions per scale (duotpu saw "
            f"{seen()}); YOLO heads have 2 (YOLOv8-style box + class maps) or 1 (YOLOv5 with "
            "anchors). "
            + _NOT_DECODED.format(
                what="Three maps per scale (class, box, objectness) are a YOLOX / "
                "PP-YOLOE-style head; box + landmark + score maps a RetinaFace / SCRFD face "
                "detector"
            )
        )
    head.names = list(names or names_from_metadata(model) or [])
    if len(head.names) != head.nc or all(n == str(i) for i, n in enumerate(head.names)):
        head.names = list(COCO_NAMES) if head.nc == 80 else [f"class{i}" for i in range(head.nc)]
    d0 = inp.type.tensor_type.shape.dim[0]
    _extract(
        model,
        out,
        inp.name,
        head.outputs,
        shapes,
        d0.dim_param if d0.HasField("dim_param") else in_shape[0],
    )
    return head


def _probe(
    model: onnx.ModelProto,
    input_name: str,
    in_shape: list[int],
    names: list[str],
    fill: float = 0.0,
) -> list[np.ndarray[Any, Any]]:
    """The values of inner tensors ``names`` for a constant input, by running the model once
    in ONNX Runtime with them as extra outputs (ONNX's static shape inference and constant
    folding give up inside YOLO graphs)."""
    import onnx

    from duotpu.core.onnxrt import session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        onnx.helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names) if n not in have
    )
    sess = session(probe.SerializeToString())
    got: list[np.ndarray[Any, Any]] = sess.run(
        names, {input_name: np.full(in_shape, fill, np.float32)}
    )
    return got


def _conv_shapes(
    model: onnx.ModelProto, input_name: str, in_shape: list[int]
) -> dict[str, list[int]]:
    """The output shape of every Conv."""
    names = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    return {n: list(o.shape) for n, o in zip(names, _probe(model, input_name, in_shape, names))}


def _find_anchors(
    model: onnx.ModelProto,
    consumers: dict[str, list[onnx.NodeProto]],
    heads: list[onnx.NodeProto],
    input_name: str,
    in_shape: list[int],
) -> list[list[float]]:
    """YOLOv5 multiplies ``(2 * sigmoid(wh)) ** 2`` by an anchor grid of shape
    ``[1, na, ny, nx, 2]`` (pixels) that does not depend on the image and is the same in every
    cell; find it among the Mul inputs downstream of each head conv."""
    cands: list[list[str]] = []
    for head in heads:
        todo, seen, names = list(head.output), set(), []
        while todo:
            t = todo.pop(0)
            for c in consumers.get(t, []):
                if id(c) not in seen:
                    seen.add(id(c))
                    if c.op_type == "Mul":
                        names += list(c.input)
                    todo.extend(c.output)
        cands.append(names)
    flat = [n for names in cands for n in names]
    if not flat:
        return []
    v0 = dict(zip(flat, _probe(model, input_name, in_shape, flat, 0.0)))
    v1 = dict(zip(flat, _probe(model, input_name, in_shape, flat, 1.0)))
    found = []
    for names in cands:
        got = None
        for n in names:
            a = np.asarray(v0[n])
            if (
                a.ndim == 5
                and a.shape[-1] == 2
                and a.shape[1] > 1
                and np.array_equal(a, v1[n])
                and np.allclose(a, a[:, :, :1, :1, :])
            ):
                got = a[0, :, 0, 0, :].reshape(-1).tolist()
                break
        if got is None:
            return []
        found.append(got)
    return found


def _extract(
    model: onnx.ModelProto,
    out: Path,
    input_name: str,
    outputs: list[str],
    shapes: dict[str, list[int]],
    batch: str | int,
) -> None:
    """Write the part of ``model`` that computes ``outputs`` from the input to ``out``."""
    import onnx
    from onnx import TensorProto, helper

    ex = onnx.utils.Extractor(model)
    cut = ex.extract_model([input_name], outputs)
    del cut.graph.output[:]
    cut.graph.output.extend(
        helper.make_tensor_value_info(o, TensorProto.FLOAT, [batch, *shapes[o][1:]])
        for o in outputs
    )
    del cut.graph.value_info[:]  # shapes from the whole graph; the compiler infers its own
    cut.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(cut)
    with atomic_path(out) as tmp:
        onnx.save(cut, str(tmp))
