"""What ``duotpu eval`` finds, typed: one result per task (a classifier's, a detector's, a generic
model's), each with its per-model metrics. ``to_json()`` is ``report.json``; the CLI renders the
attributes and the HTML report renders ``report.json`` (each of its numbers linked to the JSON
path it shows)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from duotpu.core.metrics import ModeMetrics


@dataclass
class FastPathCheck:
    """The fast path (the quantized MLIR in tpu_mlir's interpreter) against the CV18xx simulator
    on the first images, and the backend the model was then evaluated on."""

    images: int
    max_abs_diff: float
    min_cosine: float
    backend: str


@dataclass
class DetectMetrics:
    """How one quantized detector compares with fp32 (and with labels) on the images."""

    mode: str
    n: int
    map50_vs_fp32: float
    fp32_objects: int
    detections_per_image: float
    cosine_mean: dict[str, float]  # per head map
    cosine_worst: dict[str, float]
    map50: float | None = None
    map50_95: float | None = None
    images_per_second: float = 0.0
    agreement_mean: float = 1.0  # mean per-image F1 of its boxes against fp32's (IoU 0.5)


@dataclass
class Disagreement:
    """An image where a quantized detector's boxes differ most from fp32's."""

    image: str
    agreement: float
    fp32: list[dict[str, Any]]
    quantized: list[dict[str, Any]]


@dataclass
class OutputRange:
    """One fp32 output of a generic model: its shape and value range over the images."""

    shape: list[int]
    min: float
    max: float


@dataclass
class GenericMetrics:
    """How one quantized model's outputs compare with fp32's, each output over the images."""

    n: int
    cosine_mean: dict[str, float]
    cosine_worst: dict[str, float]
    worst_image: dict[str, str]  # per output, the file name of its worst image
    worst_image_path: dict[str, str]
    images_per_second: float
    cosines: list[float] = field(default_factory=list)  # per image, its least similar output


@dataclass
class Evaluation:
    """What every evaluation has: the build or model evaluated, its name, the images and the
    backend, and (with ``--layers``) the per-layer cosines of each model."""

    model: str
    name: str
    image_folder: str
    images: int
    backend: str
    per_layer: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    task = "classify"

    def to_json(self) -> dict[str, Any]:
        """``report.json``: the fields, with the task first."""
        return {"task": self.task, **dataclasses.asdict(self)}


@dataclass
class ClassifyEval(Evaluation):
    """A classifier's evaluation: fp32's own numbers (decisive images; accuracy with labels),
    each model's agreement metrics, the fast-path checks, the images whose top-1 changed."""

    margin: float = 0.05
    fp32: dict[str, float] = field(default_factory=dict)
    modes: dict[str, ModeMetrics] = field(default_factory=dict)
    fast_path_check: dict[str, FastPathCheck] = field(default_factory=dict)
    changed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DetectEval(Evaluation):
    """A detector's evaluation: thresholds, each model's detection metrics, fp32's own mAP
    against labels (when the folder has them), each model's least agreeing images."""

    conf: float = 0.25
    iou: float = 0.45
    map_conf: float = 0.001
    modes: dict[str, DetectMetrics] = field(default_factory=dict)
    fp32: dict[str, float] = field(default_factory=dict)
    disagreement: dict[str, list[Disagreement]] = field(default_factory=dict)

    task = "detect"


@dataclass
class GenericEval(Evaluation):
    """A generic (or tensor-input) model's evaluation: each fp32 output's range, each model's
    per-output cosines."""

    fp32: dict[str, OutputRange] = field(default_factory=dict)
    modes: dict[str, GenericMetrics] = field(default_factory=dict)

    task = "generic"


#: the result of `duotpu.eval.evaluate.evaluate_build`
EvalResult = Union[ClassifyEval, DetectEval, GenericEval]
