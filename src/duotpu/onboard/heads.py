"""The CPU tail of a task, in numpy only: class probabilities and top-k, the detector decode
(anchor-free YOLOv8/11 and PP-PicoDet with DFL, YOLOv8-seg's instance masks, YOLOX, SCRFD
with landmarks, anchor-based YOLOv5), per-class NMS, and boxes mapped back onto the image. The host
(`duotpu.core.detect`) uses these same functions, so the board and the PC give the same
answers by construction.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows of class scores as probabilities: softmax, unless they already are probabilities
    (non-negative, each row summing to 1)."""
    s = np.asarray(scores, np.float64).reshape(np.asarray(scores).shape[0], -1)
    if np.all(s >= 0) and np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        return s
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> List[Tuple[int, float]]:
    """The ``k`` best (index, value) pairs of one row, best first (ties: the lower index)."""
    p = np.asarray(probs).ravel()
    order = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in order]


def class_name(names: Sequence[str] | None, i: int) -> str:
    """The name of class ``i`` (its number when there is no name)."""
    return names[i] if names and 0 <= i < len(names) else f"class {i}"


def classify(
    scores: np.ndarray, k: int = 5, names: Sequence[str] | None = None
) -> List[List[Dict[str, Any]]]:
    """Per batch row, the ``k`` best classes: ``{"class", "name", "probability"}``."""
    rows = probabilities(np.asarray(scores).reshape(np.asarray(scores).shape[0], -1))
    return [
        [
            {"class": i, "name": class_name(names, i), "probability": round(p, 6)}
            for i, p in top_k(row, k)
        ]
        for row in rows
    ]


def decode(head: Mapping[str, Any], maps: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Raw head maps (in ``head["outputs"]`` order, each ``[B, C, h, w]``) → candidate boxes
    ``[B, N, 4]`` (centre x, centre y, width, height in input pixels) and class scores
    ``[B, N, nc]`` (YOLOv5: objectness × class probability). ``head`` holds ``kind``
    (``anchor_free`` | ``anchor`` | ``yolox`` | ``scrfd``), ``strides``, ``nc``, ``reg_max``,
    ``shared``, ``per_cell``, ``keypoints`` and ``anchors``. Anchor-free boxes are the GFL /
    DFL decode of YOLOv8 and PP-PicoDet: per cell centre (x + 0.5, y + 0.5), per side the
    expectation of a softmax over ``reg_max`` bins, times the stride."""
    nc, strides = int(head["nc"]), list(head["strides"])
    boxes, scores = [], []
    if head["kind"] == "anchor_free":
        reg_max = int(head.get("reg_max", 16))
        shared = head.get("shared") or ""
        for i, s in enumerate(strides):
            if shared:  # one map per scale holding both (PP-PicoDet's shared convolution)
                m = np.asarray(maps[i], np.float32)
                cut = nc if shared == "cls_box" else 4 * reg_max
                first, second = m[:, :cut], m[:, cut:]
                box, cls = (second, first) if shared == "cls_box" else (first, second)
            else:
                box, cls = (np.asarray(m, np.float32) for m in maps[2 * i : 2 * i + 2])
            b, _, h, w = box.shape
            dist = box.reshape(b, 4, reg_max, h * w)
            if reg_max > 1:  # DFL: the expectation of a softmax over reg_max bins
                e = np.exp(dist - dist.max(axis=2, keepdims=True))
                dist = (
                    e / e.sum(axis=2, keepdims=True) * np.arange(reg_max, dtype=np.float32)[:, None]
                ).sum(axis=2)
            else:
                dist = dist[:, :, 0]
            ys, xs = np.meshgrid(
                np.arange(h, dtype=np.float32) + 0.5,
                np.arange(w, dtype=np.float32) + 0.5,
                indexing="ij",
            )
            ax, ay = xs.reshape(-1), ys.reshape(-1)
            x1, y1 = ax - dist[:, 0], ay - dist[:, 1]
            x2, y2 = ax + dist[:, 2], ay + dist[:, 3]
            xywh = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=2) * s
            boxes.append(xywh)
            scores.append(sigmoid(cls.reshape(b, nc, h * w)).transpose(0, 2, 1))
    elif head["kind"] == "scrfd":  # SCRFD: per scale scores, box distances (+ landmarks)
        na = int(head.get("per_cell", 1))
        step = 3 if head.get("keypoints") else 2
        for i, s in enumerate(strides):
            score, box = (np.asarray(m, np.float32) for m in maps[step * i : step * i + 2])
            b, _, h, w = score.shape
            cx, cy = _centres(h, w, na, s)
            d = _per_anchor(box, na) * s
            x1, y1, x2, y2 = cx - d[..., 0], cy - d[..., 1], cx + d[..., 2], cy + d[..., 3]
            boxes.append(np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=2))
            scores.append(sigmoid(_per_anchor(score, na)))
    elif head["kind"] == "yolox":  # YOLOX: per scale box (4), objectness (1), classes
        for i, s in enumerate(strides):
            box, obj, cls = (np.asarray(m, np.float32) for m in maps[3 * i : 3 * i + 3])
            b, _, h, w = box.shape
            ys, xs = np.meshgrid(
                np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
            )
            r = box.reshape(b, 4, h * w)
            cx, cy = (r[:, 0] + xs.reshape(-1)) * s, (r[:, 1] + ys.reshape(-1)) * s
            bw, bh = np.exp(r[:, 2]) * s, np.exp(r[:, 3]) * s
            boxes.append(np.stack([cx, cy, bw, bh], axis=2))
            p = sigmoid(cls.reshape(b, nc, h * w)) * sigmoid(obj.reshape(b, 1, h * w))
            scores.append(p.transpose(0, 2, 1))
    else:
        anchors = head["anchors"]
        na = len(anchors[0]) // 2
        for i, s in enumerate(strides):
            m = np.asarray(maps[i], np.float32)
            b, _, h, w = m.shape
            p = sigmoid(m.reshape(b, na, 5 + nc, h, w).transpose(0, 1, 3, 4, 2))
            ys, xs = np.meshgrid(
                np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
            )
            grid = np.stack([xs, ys], axis=-1)[None, None] - 0.5
            anchor = np.asarray(anchors[i], np.float32).reshape(1, na, 1, 1, 2)
            xy = (p[..., :2] * 2 + grid) * s
            wh = (p[..., 2:4] * 2) ** 2 * anchor
            boxes.append(np.concatenate([xy, wh], -1).reshape(b, -1, 4))
            scores.append((p[..., 5:] * p[..., 4:5]).reshape(b, -1, nc))
    return np.concatenate(boxes, 1), np.concatenate(scores, 1)


def _centres(h: int, w: int, na: int, stride: int) -> Tuple[np.ndarray, np.ndarray]:
    """SCRFD's anchor centres: each cell's top-left corner × stride, ``na`` times per cell
    (cell-major), as insightface decodes them."""
    ys, xs = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    return np.repeat(xs.reshape(-1), na) * stride, np.repeat(ys.reshape(-1), na) * stride


def _per_anchor(m: np.ndarray, na: int) -> np.ndarray:
    """A ``[B, na·k, h, w]`` map → ``[B, h·w·na, k]``, cell-major then anchor (the order of
    insightface's ``permute(0, 2, 3, 1).reshape(-1, k)``)."""
    b, c, h, w = m.shape
    return m.reshape(b, na, c // na, h * w).transpose(0, 3, 1, 2).reshape(b, h * w * na, c // na)


def keypoints(head: Mapping[str, Any], maps: Sequence[np.ndarray]) -> Optional[np.ndarray]:
    """A face detector's landmarks (SCRFD: ``keypoints`` points per box) in input pixels,
    ``[B, N, K, 2]`` in the order of `decode`'s boxes; None for heads without them."""
    k = int(head.get("keypoints") or 0)
    if head["kind"] != "scrfd" or not k:
        return None
    na, out = int(head.get("per_cell", 1)), []
    for i, s in enumerate(head["strides"]):
        kps = np.asarray(maps[3 * i + 2], np.float32)
        b, _, h, w = kps.shape
        cx, cy = _centres(h, w, na, s)
        p = _per_anchor(kps, na).reshape(b, h * w * na, k, 2) * s
        out.append(np.stack([cx[:, None] + p[..., 0], cy[:, None] + p[..., 1]], axis=-1))
    return np.concatenate(out, 1)


def mask_coefficients(head: Mapping[str, Any], maps: Sequence[np.ndarray]) -> Optional[np.ndarray]:
    """An instance-segmentation head's mask coefficients ``[B, N, nm]`` in the order of
    `decode`'s boxes (the coefficient maps follow the box and class maps); None for heads
    without masks."""
    nm = int(head.get("masks") or 0)
    if not nm:
        return None
    k = len(head["strides"])
    first = len(maps) - k - 1
    out = [
        np.asarray(m, np.float32).reshape(np.asarray(m).shape[0], nm, -1).transpose(0, 2, 1)
        for m in maps[first : first + k]
    ]
    return np.concatenate(out, 1)


def instance_mask(
    coef: np.ndarray,
    protos: np.ndarray,
    box: Sequence[float],
    mode: str,
    resize_hw: Sequence[int],
    net_hw: Sequence[int],
    image_hw: Sequence[int],
) -> Tuple[int, int, np.ndarray]:
    """One object's mask in the image's pixels, as Ultralytics computes it: the coefficients
    times the prototypes (``[nm, mh, mw]``) give mask logits, sampled bilinearly (half-pixel
    centres) at each image pixel, kept above 0 inside the box (``box``: x1, y1, x2, y2 in the
    image's pixels). Returns (x0, y0, mask) with the mask covering the box's pixels."""
    nm, mh, mw = protos.shape
    logits = (np.asarray(coef, np.float32) @ protos.reshape(nm, -1)).reshape(mh, mw)
    ih, iw = image_hw
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), iw), min(int(np.ceil(box[3])), ih)
    if x1 <= x0 or y1 <= y0:
        return x0, y0, np.zeros((0, 0), bool)
    sx, sy, ox, oy = placement(mode, resize_hw, net_hw, image_hw)
    # image pixel centre → network-input pixels → prototype cells (align_corners=False)
    u = ((np.arange(x0, x1) + 0.5) * sx + ox) * mw / net_hw[1] - 0.5
    v = ((np.arange(y0, y1) + 0.5) * sy + oy) * mh / net_hw[0] - 0.5
    u, v = np.clip(u, 0, mw - 1), np.clip(v, 0, mh - 1)
    u0, v0 = np.minimum(u.astype(int), mw - 2), np.minimum(v.astype(int), mh - 2)
    fu, fv = (u - u0)[None, :], (v - v0)[:, None]
    top = logits[v0][:, u0] * (1 - fu) + logits[v0][:, u0 + 1] * fu
    bottom = logits[v0 + 1][:, u0] * (1 - fu) + logits[v0 + 1][:, u0 + 1] * fu
    cols, rows = np.arange(x0, x1), np.arange(y0, y1)  # cropped as Ultralytics' crop_mask
    inside = ((cols >= box[0]) & (cols < box[2]))[None, :] & ((rows >= box[1]) & (rows < box[3]))[
        :, None
    ]
    return x0, y0, ((top * (1 - fv) + bottom * fv) > 0) & inside


def rle(x0: int, y0: int, mask: np.ndarray, image_hw: Sequence[int]) -> Dict[str, Any]:
    """A mask placed at (x0, y0) in an image as COCO's uncompressed run-length encoding
    ``{"size": [h, w], "counts": [...]}`` (column-major runs, starting with background), what
    pycocotools and COCO's tools read."""
    h, w = int(image_hw[0]), int(image_hw[1])
    full = np.zeros((h, w), bool)
    full[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]] = mask
    flat = full.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": [int(c) for c in counts]}


def rle_decode(mask: Mapping[str, Any]) -> np.ndarray:
    """COCO's uncompressed run-length encoding (`rle`) back to a boolean ``[h, w]`` mask."""
    h, w = (int(v) for v in mask["size"])
    counts = np.asarray(mask["counts"], np.int64)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate, background first
    return np.repeat(values, counts)[: h * w].reshape((w, h)).T.copy()


def nms(
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    multi_label: bool = False,
) -> List[Tuple[np.ndarray, float, int]]:
    """`nms_kept` without the candidates' indices: (xyxy, score, class), best first."""
    return [
        (x, s, c) for _, x, s, c in nms_kept(boxes_xywh, scores, conf, iou, max_det, multi_label)
    ]


def nms_kept(
    boxes_xywh: np.ndarray,
    scores: np.ndarray,
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
    multi_label: bool = False,
) -> List[Tuple[int, np.ndarray, float, int]]:
    """Per-class non-maximum suppression of one image's candidates (``[N, 4]`` xywh,
    ``[N, nc]`` scores), as OpenCV's ``NMSBoxesBatched``: each box's best class (with
    ``multi_label``, every class it scores above ``conf`` for, as PaddleDetection's
    multiclass NMS), scores above ``conf``, highest first (stable), a box dropped when it
    overlaps a kept box of its class by more than ``iou``. Returns (candidate index, xyxy,
    score, class), best first."""
    if multi_label:  # one candidate per (box, class) above conf
        keep, cl = np.nonzero(scores > conf)
    else:  # one candidate per box: its best class
        best_cls = scores.argmax(1)
        keep = np.flatnonzero(scores[np.arange(len(best_cls)), best_cls] > conf)
        cl = best_cls[keep]
    if keep.size == 0:
        return []
    sc = scores[keep, cl]
    b = boxes_xywh[keep].astype(np.float32)
    tl32 = b[:, :2] - b[:, 2:] / 2
    br32 = tl32 + b[:, 2:]  # the corners returned, in float32
    tl, wh = tl32.astype(np.float64), b[:, 2:].astype(np.float64)
    br = tl + wh  # the overlap, in double as OpenCV computes it
    area = wh[:, 0] * wh[:, 1]
    order = np.argsort(-sc, kind="stable")
    kept: List[int] = []
    by_class: Dict[int, List[int]] = {}
    for k in order:
        mine = by_class.setdefault(int(cl[k]), [])
        if mine:
            j = np.asarray(mine)
            iw = np.minimum(br[k, 0], br[j, 0]) - np.maximum(tl[k, 0], tl[j, 0])
            ih = np.minimum(br[k, 1], br[j, 1]) - np.maximum(tl[k, 1], tl[j, 1])
            inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
            union = area[k] + area[j] - inter
            overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            if (overlap > iou).any():
                continue
        mine.append(int(k))
        kept.append(int(k))
        if len(kept) >= max_det:
            break
    return [(int(keep[k]), np.array([*tl32[k], *br32[k]]), float(sc[k]), int(cl[k])) for k in kept]


def placement(
    mode: str, resize_hw: Sequence[int], net_hw: Sequence[int], image_hw: Sequence[int]
) -> Tuple[float, float, float, float]:
    """How an image lands in the network input: (scale x, scale y, offset x, offset y), for
    the recipe's resize (letterbox, stretch or short side) followed by the centre crop."""
    ih, iw = image_hw
    nh, nw = net_hw
    rh, rw = resize_hw
    if mode in ("letterbox", "text_line"):
        s = min(rw / iw, rh / ih)
        sx = sy = s
        ox, oy = (rw - int(iw * s)) // 2, (rh - int(ih * s)) // 2
        if mode == "text_line":  # the image at the top left
            ox = oy = 0
    elif mode == "stretch":
        sx, sy, ox, oy = rw / iw, rh / ih, 0, 0
    else:
        s = max(rw / iw, rh / ih)
        w2 = int(iw * s) if iw * s >= rw else rw
        h2 = int(ih * s) if ih * s >= rh else rh
        sx, sy = w2 / iw, h2 / ih
        ox, oy = -max((w2 - rw) // 2, 0), -max((h2 - rh) // 2, 0)
    ox -= rw // 2 - nw // 2  # the centre crop from the resize size to the input size
    oy -= rh // 2 - nh // 2
    return sx, sy, float(ox), float(oy)


def to_image(
    box: Union[Sequence[float], np.ndarray],
    mode: str,
    resize_hw: Sequence[int],
    net_hw: Sequence[int],
    image_hw: Sequence[int],
) -> Tuple[float, float, float, float]:
    """A box (x1, y1, x2, y2) in network-input pixels → the original image's pixels."""
    sx, sy, ox, oy = placement(mode, resize_hw, net_hw, image_hw)
    ih, iw = image_hw
    x1, y1, x2, y2 = box
    return (
        float(np.clip((x1 - ox) / sx, 0, iw)),
        float(np.clip((y1 - oy) / sy, 0, ih)),
        float(np.clip((x2 - ox) / sx, 0, iw)),
        float(np.clip((y2 - oy) / sy, 0, ih)),
    )


def point_to_image(
    point: Union[Sequence[float], np.ndarray],
    mode: str,
    resize_hw: Sequence[int],
    net_hw: Sequence[int],
    image_hw: Sequence[int],
) -> Tuple[float, float]:
    """A point (x, y) in network-input pixels → the original image's pixels."""
    sx, sy, ox, oy = placement(mode, resize_hw, net_hw, image_hw)
    return float((point[0] - ox) / sx), float((point[1] - oy) / sy)


def match_names(wanted: Sequence[str], produced: Sequence[str]) -> Dict[str, Optional[str]]:
    """Each wanted (ONNX) name → the compiler's name for it: the produced name equal to it or
    made from it (the compiler appends the op: ``logits`` → ``logits_Gemm_f32``), else the one at
    its position if no other wanted name took it, else the first one left; None when none is left.
    The one rule the host, the board app and the detector heads share."""
    free, out = list(produced), {}
    for i, name in enumerate(wanted):
        hit = next((k for k in free if k == name or k.startswith(name + "_")), None)
        if hit is None and i < len(produced) and produced[i] in free:
            hit = produced[i]
        if hit is None and free:
            hit = free[0]
        out[name] = hit
        if hit is not None:
            free.remove(hit)
    return out


def maps_in_order(head: Mapping[str, Any], outputs: Mapping[str, np.ndarray]) -> List[np.ndarray]:
    """Outputs by the compiler's names → the head maps in decode order (`match_names`)."""
    names = match_names(list(head["outputs"]), list(outputs))
    return [outputs[names[n] or list(outputs)[k]] for k, n in enumerate(head["outputs"])]


def detect(
    head: Mapping[str, Any],
    maps: Sequence[np.ndarray],
    mode: str,
    resize_hw: Sequence[int],
    image_hws: Sequence[Sequence[int]],
    conf: float,
    iou: float,
    max_det: int,
) -> List[List[Dict[str, Any]]]:
    """Raw head maps of a batch → per image its objects ``{"box", "score", "class", "name"}``
    (and ``"keypoints"`` of a face detector, ``"mask"`` as COCO run-lengths of an instance
    segmentation model) with the box in the image's pixels."""
    boxes, scores = decode(head, maps)
    points = keypoints(head, maps)
    coefs = mask_coefficients(head, maps)
    names = head.get("names") or []
    net_hw = head["input_hw"]
    out = []
    for b, hw in enumerate(image_hws):
        found = []
        for k, xyxy, s, c in nms_kept(
            boxes[b], scores[b], conf, iou, max_det, bool(head.get("multi_label"))
        ):
            obj: Dict[str, Any] = {
                "box": to_image(xyxy, mode, resize_hw, net_hw, hw),
                "score": s,
                "class": c,
                "name": names[c] if c < len(names) else str(c),
            }
            if points is not None:
                obj["keypoints"] = [
                    point_to_image(p, mode, resize_hw, net_hw, hw) for p in points[b, k]
                ]
            if coefs is not None:
                protos = np.asarray(maps[-1][b], np.float32)
                obj["mask"] = rle(
                    *instance_mask(coefs[b, k], protos, obj["box"], mode, resize_hw, net_hw, hw),
                    hw,
                )
            found.append(obj)
        out.append(found)
    return out
