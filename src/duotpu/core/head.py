"""How to decode a cut YOLO model's outputs (`YoloHead`, written by the build beside the
cvimodel as ``NAME.detect.json``), and the COCO class names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from duotpu.core.files import atomic_write

#: The 80 COCO class names, in the order Ultralytics and YOLOv5 train them.
_COCO = (
    "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant "
    "stop_sign parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat "
    "baseball_glove skateboard surfboard tennis_racket bottle wine_glass cup fork knife spoon "
    "bowl banana apple sandwich orange broccoli carrot hot_dog pizza donut cake chair couch "
    "potted_plant bed dining_table toilet tv laptop mouse remote keyboard cell_phone microwave "
    "oven toaster sink refrigerator book clock vase scissors teddy_bear hair_drier toothbrush"
).split()
COCO_NAMES: tuple[str, ...] = tuple(n.replace("_", " ") for n in _COCO)


@dataclass
class YoloHead:
    """How to decode the outputs of a cut detector (YOLO, PP-PicoDet, YOLOX, SCRFD).

    ``outputs`` are the cut model's output names in decode order: for ``anchor_free``
    ``[box_s8, cls_s8, box_s16, ...]``, or one map per scale when ``shared`` says how that map
    holds both (``cls_box``: the ``nc`` class channels first, as PP-PicoDet's shared head;
    ``box_cls``: the box channels first); for ``yolox`` ``[box_s8, obj_s8, cls_s8, ...]``; for
    ``scrfd`` ``[score_s8, box_s8, landmarks_s8, ...]`` (``per_cell`` anchors a cell,
    ``keypoints`` landmarks a face, 0 when the model has none); for ``anchor`` one map per
    scale. ``masks`` (an instance-segmentation head, YOLOv8-seg) is the number of mask
    coefficients a box has; ``outputs`` then end with one coefficient map per scale and the
    prototype map (``masks`` channels at the finest stride). ``reg_max`` is the number of
    bins per box side (16 for YOLOv8, 8 for PicoDet's reg_max 7, 1 when the map holds
    distances). ``multi_label``: NMS keeps a box for every class it scores above the
    threshold (PaddleDetection's multiclass NMS), not only its best. ``anchors`` (only
    ``anchor``) are per scale the anchor sizes in input pixels, ``[w0, h0, w1, h1, ...]``.
    """

    kind: str
    input_hw: tuple[int, int]
    strides: list[int]
    outputs: list[str]
    nc: int
    reg_max: int = 16
    anchors: list[list[float]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    shared: str = ""
    multi_label: bool = False
    per_cell: int = 1
    keypoints: int = 0
    masks: int = 0

    @property
    def num_boxes(self) -> int:
        """Candidate boxes per image (8400 for a 640 YOLOv8, 25200 for a 640 YOLOv5)."""
        h, w = self.input_hw
        per_cell = len(self.anchors[0]) // 2 if self.kind == "anchor" else self.per_cell
        return sum(per_cell * -(-h // s) * -(-w // s) for s in self.strides)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "YoloHead":
        data = dict(data)
        data["input_hw"] = tuple(data["input_hw"])
        data.setdefault("shared", "")
        data.setdefault("multi_label", False)
        data.setdefault("per_cell", 1)
        data.setdefault("keypoints", 0)
        data.setdefault("masks", 0)
        return cls(**data)

    def save(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: Path) -> "YoloHead":
        return cls.from_json(json.loads(Path(path).read_text()))
