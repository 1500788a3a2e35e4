"""Detections on the CPU: decode the raw YOLO head maps, NMS, boxes back on the image, drawing
and detection-level accuracy (mAP with pycocotools).

The TPU runs the network up to the head convolutions (see `duotpu.builder.yolo`);
`decode` does in numpy what the original model's last layers do, in the same order, so its
result equals the original model's full output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from duotpu.config.recipe import DetectOptions, Preprocess
from duotpu.core.files import atomic_path
from duotpu.core.head import YoloHead
from duotpu.onboard import heads

#: Detections scored for mAP are kept down to this score (the usual mAP protocol); the
#: detections taken as fp32 "ground truth" use the recipe's detect.conf.
MAP_CONF = 0.001


def decode(head: YoloHead, maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Raw head maps (in ``head.outputs`` order, each ``[B, C, h, w]``) → candidate boxes
    ``[B, N, 4]`` (center x, center y, width, height in input pixels) and class scores
    ``[B, N, nc]`` (for YOLOv5: objectness × class probability); the board app's own code
    (`duotpu.onboard.heads.decode`)."""
    return heads.decode(head.to_json(), maps)


@dataclass
class Detection:
    """One detected object: box corners in image pixels, score, class index and name,
    landmarks (image pixels) when the detector gives them, and an instance-segmentation
    model's mask (COCO run-lengths over the image, `duotpu.onboard.heads.rle`)."""

    box: tuple[float, float, float, float]
    score: float
    cls: int
    name: str
    keypoints: tuple[tuple[float, float], ...] = ()  # a face detector's landmarks
    mask: dict[str, Any] | None = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "box": [round(v, 1) for v in self.box],
            "score": round(self.score, 4),
            "class": self.cls,
            "name": self.name,
        }
        if self.keypoints:
            out["keypoints"] = [[round(x, 1), round(y, 1)] for x, y in self.keypoints]
        if self.mask is not None:
            out["mask"] = self.mask
        return out

    def mask_array(self) -> np.ndarray | None:
        """The mask as a boolean image (``[h, w]``), or None without one."""
        return None if self.mask is None else heads.rle_decode(self.mask)


#: per-class NMS, as OpenCV's ``NMSBoxesBatched`` (the board app's own code)
nms = heads.nms


def to_image(
    box: np.ndarray, pre: Preprocess, net_hw: tuple[int, int], image_hw: tuple[int, int]
) -> tuple[float, float, float, float]:
    """A box in network-input pixels → the original image's pixels, undoing the recipe's
    resize (letterbox, stretch or short-side + center crop, as tpu_mlir preprocesses)."""
    resize_hw = tuple(pre.resize) if pre.resize else net_hw
    return heads.to_image(box, pre.resize_mode, resize_hw, net_hw, image_hw)


def detections(
    head: YoloHead,
    maps: Sequence[np.ndarray],
    pre: Preprocess,
    image_hws: Sequence[tuple[int, int]],
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 300,
) -> list[list[Detection]]:
    """Raw head maps of a batch → the detections of each image, in image pixels (the board
    app's own decode, `duotpu.onboard.heads.detect`)."""
    resize_hw = tuple(pre.resize) if pre.resize else head.input_hw
    found = heads.detect(
        head.to_json(), maps, pre.resize_mode, resize_hw, image_hws, conf, iou, max_det
    )
    return [
        [
            Detection(
                tuple(o["box"]),
                o["score"],
                o["class"],
                o["name"],
                tuple(tuple(p) for p in o.get("keypoints", ())),
                o.get("mask"),
            )
            for o in objs
        ]
        for objs in found
    ]


def per_image(
    head: YoloHead,
    maps_list: Sequence[Sequence[np.ndarray]],
    pre: Preprocess,
    image_hws: Sequence[tuple[int, int]],
    opt: DetectOptions,
    conf: float | None = None,
) -> list[list[Detection]]:
    """The detections of each image, given one list of head maps per image, with the recipe's
    detect options (``conf`` replaces ``opt.conf``)."""
    c = opt.conf if conf is None else conf
    return [
        detections(head, maps, pre, [hw], c, opt.iou, opt.max_det)[0]
        for maps, hw in zip(maps_list, image_hws)
    ]


def as_truth(dets: list[list[Detection]]) -> list[list[tuple[tuple, int]]]:
    """Detections (e.g. the fp32 model's) as ground truth for `coco_map`."""
    return [[(d.box, d.cls) for d in ds] for ds in dets]


def input_frame(
    item: str | Path, pre: Preprocess, head: YoloHead
) -> tuple[Preprocess, tuple[int, int]]:
    """How boxes map back for one input: an image → the recipe's resize and the image's size;
    a tensor file (``.npz`` / ``.npy``) → boxes stay in network-input pixels."""
    from duotpu.core.preprocess import load_bgr

    if Path(item).suffix.lower() in (".npz", ".npy"):
        return Preprocess(resize_mode="stretch"), head.input_hw
    h, w = load_bgr(item, False).shape[:2]
    return pre, (h, w)


def maps_in_order(head: YoloHead, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """A simulator / board result (by the compiler's output names) → maps in decode order."""
    return heads.maps_in_order(head.to_json(), outputs)


def agreement(a: list[Detection], b: list[Detection], iou: float = 0.5) -> float:
    """How alike two detection sets of one image are: F1 of matching boxes of the same class
    at IoU ≥ ``iou`` (greedy, best score first); 1.0 when both are empty."""
    if not a and not b:
        return 1.0
    used: set[int] = set()
    matched = 0
    for d in sorted(a, key=lambda d: -d.score):
        best, best_iou = -1, iou
        for j, e in enumerate(b):
            if j in used or e.cls != d.cls:
                continue
            v = _iou(d.box, e.box)
            if v >= best_iou:
                best, best_iou = j, v
        if best >= 0:
            used.add(best)
            matched += 1
    return 2 * matched / (len(a) + len(b))


def _iou(p: Sequence[float], q: Sequence[float]) -> float:
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = w * h
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def draw(image: str | Path | np.ndarray, dets: list[Detection], out: Path) -> Path:
    """Draw boxes with class name and score on the image; written atomically to ``out``."""
    img = draw_boxes(image, dets)
    out = Path(out)
    with atomic_path(out) as tmp:
        img.save(tmp)
    return out


_PALETTE = [
    (255, 56, 56),
    (72, 249, 10),
    (0, 194, 255),
    (255, 157, 151),
    (146, 204, 23),
    (255, 178, 29),
    (52, 69, 147),
    (207, 210, 49),
    (132, 56, 255),
    (255, 55, 199),
]


def draw_boxes(image: str | Path | np.ndarray, dets: list[Detection], min_side: int = 0) -> Any:
    """The image (path or RGB array) as a PIL image with boxes, class names and scores (and
    instance masks, tinted in the class colour); an image smaller than ``min_side`` is
    enlarged first, so small inputs stay legible."""
    from PIL import Image, ImageDraw, ImageFont

    img = (
        Image.open(image).convert("RGB")
        if not isinstance(image, np.ndarray)
        else Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    )
    if any(d.mask is not None for d in dets):
        pixels = np.asarray(img, np.float32).copy()
        for det in dets:
            m = det.mask_array()
            if m is not None and m.shape == pixels.shape[:2]:
                tint = np.asarray(_PALETTE[det.cls % len(_PALETTE)], np.float32)
                pixels[m] = pixels[m] * 0.55 + tint * 0.45
        img = Image.fromarray(pixels.round().astype(np.uint8))
    scale = max(1.0, min_side / max(img.size)) if min_side else 1.0
    if scale > 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.NEAREST)
        dets = [
            Detection(
                tuple(v * scale for v in d.box),  # type: ignore[arg-type]
                d.score,
                d.cls,
                d.name,
                tuple((x * scale, y * scale) for x, y in d.keypoints),
                d.mask,
            )
            for d in dets
        ]
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    width = max(2, round(sum(img.size) / 600))
    for det in dets:
        color = _PALETTE[det.cls % len(_PALETTE)]
        d.rectangle(det.box, outline=color, width=width)
        for x, y in det.keypoints:  # landmarks as dots
            d.ellipse((x - width, y - width, x + width, y + width), fill=color)
        label = f"{det.name} {det.score:.2f}"
        x0, y0 = det.box[0], max(det.box[1] - 12, 0)
        tb = d.textbbox((x0, y0), label, font=font)
        d.rectangle(tb, fill=color)
        d.text((x0, y0), label, fill=(255, 255, 255), font=font)
    return img


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------
def read_yolo_labels(path: Path, image_hw: tuple[int, int]) -> list[tuple[tuple, int]]:
    """A YOLO-format label file (``class cx cy w h`` normalised, a line per object) → (xyxy box
    in pixels, class) pairs. A missing file means no objects."""
    h, w = image_hw
    objs: list[tuple[tuple, int]] = []
    if not Path(path).is_file():
        return objs
    for ln, line in enumerate(Path(path).read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            c, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, TypeError):
            from duotpu.config.errors import DataError

            raise DataError(
                f"{path}, line {ln}: expected 'class cx cy w h' (YOLO format, "
                f"coordinates 0–1); got {line!r}."
            ) from None
        objs.append(
            (((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h), c)
        )
    return objs


def coco_map(
    truth: list[list[tuple[tuple, int]]], found: list[list[Detection]], nc: int
) -> dict[str, float]:
    """mAP@0.5 and mAP@0.5:0.95 (COCO's definitions, computed by pycocotools) of ``found``
    against ``truth``, per image lists of (xyxy, class) and detections."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt: dict[str, list[dict[str, Any]]] = {
        "images": [{"id": i} for i in range(len(truth))],
        "categories": [{"id": c} for c in range(nc)],
        "annotations": [],
    }
    for i, objs in enumerate(truth):
        for box, c in objs:
            w, h = box[2] - box[0], box[3] - box[1]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i,
                    "category_id": int(c),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    dets = [
        {
            "image_id": i,
            "category_id": d.cls,
            "score": d.score,
            "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]],
        }
        for i, ds in enumerate(found)
        for d in ds
    ]
    if not gt["annotations"]:
        return {
            "map50": float("nan"),
            "map50_95": float("nan"),
            "objects": 0,
            "detections": len(dets),
        }
    if not dets:
        return {"map50": 0.0, "map50_95": 0.0, "objects": len(gt["annotations"]), "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        res = coco.loadRes(dets)
        ev = COCOeval(coco, res, "bbox")
        ev.params.maxDets = [1, 10, max(100, max(len(ds) for ds in found))]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        "map50": float(max(ev.stats[1], 0.0)),
        "map50_95": float(max(ev.stats[0], 0.0)),
        "objects": len(gt["annotations"]),
        "detections": len(dets),
    }
