"""Detectors for the TPU (YOLO, PP-PicoDet, YOLOX): load them, and cut the graph before the
box decode.

The decode of a detector head (DFL softmax, grid and anchor arithmetic, the concat of boxes with
sigmoid scores) quantizes badly in INT8 and tpu_mlir's ``--add_postprocess`` does not support
cv180x. duotpu therefore compiles the network up to the last convolutions of the head and does
the decode on the CPU (`duotpu.core.detect`).

The head layouts it knows, all found by the structure of the ONNX graph, not by layer names:

* ``anchor_free`` — Ultralytics YOLOv8 / YOLOv5u / YOLO11: per scale, a box map with
  ``4 * reg_max`` channels (a distribution per box side, decoded by the DFL) and a class map with
  ``nc`` channels. PP-PicoDet / NanoDet (GFL) heads decode the same way with 8 bins a side: two
  maps per scale without the DFL convolution (the class map is the one that reaches a Sigmoid),
  or PicoDet's one shared map that a Split divides into classes and boxes; their NMS is
  PaddleDetection's multi-label one.
* ``yolox`` — YOLOX: per scale a box map (4), an objectness map (1) and a class map.
* ``scrfd`` — insightface's SCRFD face detectors: per scale a score map (one channel per
  anchor), box distances (4 per anchor) and landmarks (10 per anchor), decoded around each
  cell's corner × stride.
* ``anchor`` — the original YOLOv5: per scale, one map with ``na * (5 + nc)`` channels
  (xywh, objectness, classes per anchor), decoded with the anchors.

The cut keeps every node that feeds those convolutions; the resulting ONNX file's outputs are the
head maps and `YoloHead` says how to decode them.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from duotpu.builder.intake import constant_values
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
        if type(m).__name__ in ("Detect", "IDetect", "Segment") and hasattr(m, "stride")
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
def _is_dfl(node: onnx.NodeProto, consts: dict[str, np.ndarray[Any, Any]]) -> bool:
    """The DFL's 1x1 convolution: fixed weights 0, 1, …, reg_max-1."""
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim != 4 or w.shape[0] != 1 or w.shape[2:] != (1, 1):
        return False
    return np.allclose(w.reshape(-1), np.arange(w.shape[1]))


def names_from_metadata(model: onnx.ModelProto) -> list[str]:
    """Class names an ONNX export keeps in its metadata: Ultralytics' ``names`` (a dict) or
    RapidAI's / PaddleOCR's ``character`` (one per line)."""
    for p in model.metadata_props:
        if p.key == "character":  # PaddleOCR / RapidAI exports: one name per line
            return [n for n in p.value.splitlines() if n.strip()]
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
    maps to ``out`` and return how to decode them. Raises `ModelError` when the graph
    has no recognisable YOLO head."""
    import onnx

    model = onnx.load(str(full_onnx))
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    in_shape = [d.dim_value or 1 for d in inp.type.tensor_type.shape.dim]
    shapes = _conv_shapes(model, inp.name, in_shape)
    consts = constant_values(model)
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
        levels.setdefault(_stride(H, shapes[n.output[0]][2]), []).append(n)
    strides = sorted(levels)
    if len(strides) < 2:
        raise ModelError(
            f"{full_onnx} does not look like a YOLO detector: its last "
            "convolutions work at one scale only, a YOLO head at several. duotpu's "
            "detect task supports Ultralytics YOLOv8 / YOLOv5u / YOLO11 and the "
            'original YOLOv5; for a classifier use task = "classify".'
        )
    masks = _segment(levels, strides, consumers, shapes, model, bool(dfl))
    if masks:  # the mask branch is decoded apart: the box + class maps remain
        strides = strides[1:]
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
        outputs, ncs, bins = [], set(), set()
        gfl = False
        for s in strides:
            a, b = levels[s]
            ca, cb = shapes[a.output[0]][1], shapes[b.output[0]][1]
            scored = [n for n in (a, b) if _reaches(n.output[0], "Sigmoid", consumers)]
            if not dfl and len(scored) == 1:
                # a GFL head (PicoDet / NanoDet with separate convolutions): the class map is
                # the one the graph turns into scores, the other holds 4 × bins distributions
                cls = scored[0]
                box = b if cls is a else a
                gfl = True
                if shapes[box.output[0]][1] % 4 == 0:
                    bins.add(shapes[box.output[0]][1] // 4)
                    reg_max = shapes[box.output[0]][1] // 4
            else:
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
        if len(ncs) != 1 or len(bins) > 1:
            raise ModelError(
                f"{full_onnx}: the head's scales disagree on the class count {ncs} or the "
                f"box bins {bins} (duotpu saw {seen()})."
            )
        head = YoloHead(
            "anchor_free",
            (H, W),
            strides,
            outputs + (masks[0] if masks else []),
            ncs.pop(),
            reg_max,
            multi_label=gfl,
            masks=masks[1] if masks else 0,
        )
    elif (
        per_level == {1}
        and not anchors
        and (picodet := _shared_gfl(levels, strides, consumers, consts, shapes))
    ):
        layout, nc, reg_max = picodet
        head = YoloHead(
            "anchor_free",
            (H, W),
            strides,
            [levels[s][0].output[0] for s in strides],
            nc,
            reg_max,
            shared=layout,
            multi_label=True,  # PaddleDetection's multiclass NMS
        )
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
                    what="A map of classes + box distributions that the graph does not split "
                    "into a Sigmoid and a box part is no head duotpu knows"
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
    elif per_level == {3} and (yolox := _yolox(levels, strides, consumers, shapes, model)):
        outputs, nc = yolox
        head = YoloHead("yolox", (H, W), strides, outputs, nc, 0)
    elif per_level == {3} and (scrfd := _scrfd(levels, strides, consumers, shapes)):
        outputs, na, points = scrfd
        head = YoloHead("scrfd", (H, W), strides, outputs, 1, 0, per_cell=na, keypoints=points)
    else:
        raise ModelError(
            f"{full_onnx}: found {sorted(per_level)} head convolutions per scale (duotpu saw "
            f"{seen()}); the heads duotpu decodes have 2 (YOLOv8 / PicoDet box + class maps), "
            "1 (YOLOv5 with anchors, PicoDet's shared map) or 3 (YOLOX: 4 box, 1 objectness "
            "and class channels; SCRFD: scores, 4 box and 10 landmark channels per anchor). "
            + _NOT_DECODED.format(
                what="Other layouts (RetinaFace's anchor boxes, SCRFD without landmarks) are "
                "face detectors duotpu does not know yet"
            )
        )
    head.names = list(names or names_from_metadata(model) or [])
    if len(head.names) != head.nc or all(n == str(i) for i, n in enumerate(head.names)):
        head.names = (
            list(COCO_NAMES)
            if head.nc == 80
            else ["face"]
            if head.kind == "scrfd"
            else [f"class{i}" for i in range(head.nc)]
        )
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


def _stride(size: int, cells: int) -> int:
    """A head map's stride, a power of two (an 800-pixel side has 13 cells at stride 64)."""
    return int(2 ** round(math.log2(size / cells)))


def _reaches(
    tensor: str, op_type: str, consumers: dict[str, list[onnx.NodeProto]], depth: int = 6
) -> bool:
    """Whether ``tensor`` flows into an ``op_type`` node within ``depth`` nodes, through no
    convolution and no node that merges it with other maps (Concat)."""
    todo, seen = [(tensor, 0)], set()
    while todo:
        t, d = todo.pop()
        for c in consumers.get(t, []):
            if c.op_type == op_type:
                return True
            if c.op_type in ("Conv", "Concat") or d >= depth or id(c) in seen:
                continue
            seen.add(id(c))
            todo.extend((o, d + 1) for o in c.output)
    return False


def _segment(
    levels: dict[int, list[onnx.NodeProto]],
    strides: list[int],
    consumers: dict[str, list[onnx.NodeProto]],
    shapes: dict[str, list[int]],
    model: onnx.ModelProto,
    has_dfl: bool,
) -> tuple[list[str], int] | None:
    """Ultralytics' segmentation head (YOLOv8-seg / YOLO11-seg): at the finest stride one
    prototype map of ``nm`` channels, and at every detection scale, beside the box and class
    maps, a map of ``nm`` mask coefficients. Takes the coefficient maps and the prototypes out
    of ``levels`` and returns ``([coef_s8, coef_s16, …, protos], nm)``; None (``levels``
    untouched) when the head is not that."""
    if not has_dfl or len(strides) < 3 or len(levels[strides[0]]) != 1:
        return None
    if {len(levels[s]) for s in strides[1:]} != {3}:
        return None
    proto = levels[strides[0]][0]
    nm = shapes[proto.output[0]][1]
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    coefs = []
    for s in strides[1:]:
        plain = [
            n
            for n in levels[s]
            if shapes[n.output[0]][1] == nm and not _reaches(n.output[0], "Sigmoid", consumers)
        ]
        if not plain:
            return None
        # with 64 prototypes the box map has nm channels too: the coefficients come first
        coefs.append(min(plain, key=lambda n: order[id(n)]))
    for s, c in zip(strides[1:], coefs):
        levels[s] = [n for n in levels[s] if n is not c]
    del levels[strides[0]]
    protos = _activated(proto.output[0], consumers)
    shapes[protos] = shapes[proto.output[0]]
    return [c.output[0] for c in coefs] + [protos], nm


def _activated(tensor: str, consumers: dict[str, list[onnx.NodeProto]]) -> str:
    """The tensor after the activation that follows a convolution (SiLU as ``x *
    sigmoid(x)``, ReLU), or ``tensor`` itself when none does: the prototypes are a
    convolution block's output, its activation included."""
    users = consumers.get(tensor, [])
    if len(users) == 1 and users[0].op_type in ("Relu", "LeakyRelu", "Sigmoid", "HardSwish"):
        return str(users[0].output[0])
    sig = [u for u in users if u.op_type == "Sigmoid"]
    mul = [
        u
        for u in users
        if u.op_type == "Mul" and sig and set(u.input) == {tensor, sig[0].output[0]}
    ]
    return str(mul[0].output[0]) if len(users) == 2 and mul else tensor


def _shared_gfl(
    levels: dict[int, list[onnx.NodeProto]],
    strides: list[int],
    consumers: dict[str, list[onnx.NodeProto]],
    consts: dict[str, np.ndarray[Any, Any]],
    shapes: dict[str, list[int]],
) -> tuple[str, int, int] | None:
    """PP-PicoDet's shared head: per scale one convolution whose channels a Split on the
    channel axis divides into class scores (then a Sigmoid) and 4 × bins box distributions.
    Returns (``cls_box`` | ``box_cls``, classes, bins), or None when the head is not that."""
    found = set()
    for s in strides:
        conv = levels[s][0]
        users = consumers.get(conv.output[0], [])
        if len(users) != 1 or users[0].op_type != "Split" or len(users[0].output) != 2:
            return None
        split = users[0]
        attrs = {a.name: a for a in split.attribute}
        if attrs.get("axis") is None or attrs["axis"].i != 1:
            return None
        if "split" in attrs:
            sizes = list(attrs["split"].ints)
        elif len(split.input) > 1 and split.input[1] in consts:
            sizes = [int(v) for v in consts[split.input[1]].reshape(-1)]
        else:
            half = shapes[conv.output[0]][1] // 2
            sizes = [half, half]
        scored = [_reaches(o, "Sigmoid", consumers) for o in split.output]
        if scored.count(True) != 1:
            return None
        first_cls = scored[0]
        nc, box = (sizes[0], sizes[1]) if first_cls else (sizes[1], sizes[0])
        if box % 4:
            return None
        found.add(("cls_box" if first_cls else "box_cls", nc, box // 4))
    return found.pop() if len(found) == 1 else None


def _yolox(
    levels: dict[int, list[onnx.NodeProto]],
    strides: list[int],
    consumers: dict[str, list[onnx.NodeProto]],
    shapes: dict[str, list[int]],
    model: onnx.ModelProto,
) -> tuple[list[str], int] | None:
    """YOLOX's decoupled head: per scale a box map of 4 channels that goes on as it is, an
    objectness map of 1 channel and a class map that the graph turns into scores (Sigmoid).
    Returns the maps in decode order ``[box, objectness, classes]`` per scale and the class
    count, or None when the head is not that."""
    outputs, ncs = [], set()
    order = {id(n): i for i, n in enumerate(model.graph.node)}
    for s in strides:
        convs = sorted(levels[s], key=lambda n: order[id(n)])
        ch = {id(n): shapes[n.output[0]][1] for n in convs}
        boxes = [
            n for n in convs if ch[id(n)] == 4 and not _reaches(n.output[0], "Sigmoid", consumers)
        ]
        scored = [n for n in convs if _reaches(n.output[0], "Sigmoid", consumers)]
        if len(boxes) != 1 or len(scored) != 2:
            return None
        ones = [n for n in scored if ch[id(n)] == 1]
        if not ones:
            return None
        obj = ones[-1]  # with one class both maps have 1 channel: YOLOX computes classes first
        cls = scored[0] if scored[1] is obj else scored[1]
        outputs += [boxes[0].output[0], obj.output[0], cls.output[0]]
        ncs.add(ch[id(cls)])
    return (outputs, ncs.pop()) if len(ncs) == 1 else None


def _scrfd(
    levels: dict[int, list[onnx.NodeProto]],
    strides: list[int],
    consumers: dict[str, list[onnx.NodeProto]],
    shapes: dict[str, list[int]],
) -> tuple[list[str], int, int] | None:
    """SCRFD's face head (insightface): per scale a score map of ``na`` channels (one per
    anchor, then a Sigmoid), a box map of ``4·na`` distances and a landmark map of ``2·K·na``.
    Returns the maps in decode order ``[score, box, landmarks]`` per scale, ``na`` and ``K``,
    or None when the head is not that."""
    outputs, found = [], set()
    for s in strides:
        score, box, kps = sorted(levels[s], key=lambda n: shapes[n.output[0]][1])
        na = shapes[score.output[0]][1]
        if (
            shapes[box.output[0]][1] != 4 * na
            or shapes[kps.output[0]][1] % (2 * na)
            or shapes[kps.output[0]][1] <= 4 * na
            or not _reaches(score.output[0], "Sigmoid", consumers)
        ):
            return None
        outputs += [score.output[0], box.output[0], kps.output[0]]
        found.add((na, shapes[kps.output[0]][1] // (2 * na)))
    if len(found) != 1:
        return None
    na, points = found.pop()
    return outputs, na, points


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
