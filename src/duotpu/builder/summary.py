"""What a build's models say on its test image, as data: fp32 and every cvimodel side by side
(top-k classes for a classifier, boxes for a detector). The CLI's summary tables and the build
report are drawn from these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from duotpu.core import metrics
from duotpu.core.labels import class_name

if TYPE_CHECKING:
    import numpy as np

    from duotpu.builder.results import BuildResult
    from duotpu.core.detect import Detection


@dataclass
class Classified:
    """Top-k classes of one model's output on one image."""

    model: str
    top: list[tuple[int, float]]
    cosine: float | None
    size_bytes: int | None
    ion_mb: float | None
    est_ms: float | None = None  # the board-free latency estimate


@dataclass(frozen=True)
class BoardFit:
    """Whether a model fits one board of its chip: the ION heap its stock image reserves."""

    board: str  # "Duo", "Duo 256M", "Duo S"
    ion_mb: float
    fits: bool


def board_fits(chip: str, ion_mb: float) -> list[BoardFit]:
    """The Duo boards with the model's chip, and whether its memory need fits each one's ION."""
    from duotpu.config.chips import boards_of

    return [BoardFit(b.short, b.ion_mb, ion_mb <= b.ion_mb) for b in boards_of(chip)]


def fit_text(chip: str, ion_mb: float) -> str:
    """One line a person reads: the model's ION need and which boards of its chip hold it."""
    fits = board_fits(chip, ion_mb)
    if not fits:
        return f"ION {ion_mb:.2f} MB (no Duo board has {chip})"
    if not any(f.fits for f in fits):
        heaps = ", ".join(f"the {f.board} reserves {f.ion_mb:g} MB" for f in fits)
        return f"ION {ion_mb:.2f} MB: fits NO {chip} board ({heaps})"
    return f"ION {ion_mb:.2f} MB: " + ", ".join(
        f"{f.board} {'✓' if f.fits else f'✗ (reserves {f.ion_mb:g} MB)'}" for f in fits
    )


def classify_build(result: BuildResult, k: int = 5) -> list[Classified]:
    """fp32 (ONNX Runtime) and every cvimodel's top-k on the build's test image."""
    ref_name = next(iter(result.reference))
    rows = [
        Classified(
            "fp32 ONNX",
            metrics.topk(metrics.as_probabilities(result.reference[ref_name])[0], k),
            1.0,
            result.onnx.stat().st_size,
            None,
        )
    ]
    for mode, art in result.models.items():
        out = art.outputs[ref_name]
        rows.append(
            Classified(
                f"{mode.upper()} cvimodel",
                metrics.topk(metrics.as_probabilities(out)[0], k),
                art.cosine[ref_name],
                art.size_bytes,
                art.ion_mb,
                art.estimate.ms if art.estimate is not None else None,
            )
        )
    return rows


def top1_agrees(rows: list[Classified]) -> bool:
    """True when every model's top-1 class equals the fp32 model's."""
    return len({r.top[0][0] for r in rows}) == 1


def as_json(rows: list[Classified], labels: list[str] | None) -> list[dict[str, Any]]:
    """The rows as plain data."""
    return [
        {
            "model": r.model,
            "cosine_vs_fp32": r.cosine,
            "size_bytes": r.size_bytes,
            "ion_mb": r.ion_mb,
            "top": [
                {"class": i, "name": class_name(labels, i), "probability": round(p, 6)}
                for i, p in r.top
            ],
        }
        for r in rows
    ]


@dataclass
class Detected:
    """One model's detections on the build's test image."""

    model: str
    detections: list[Detection]
    cosine_min: float | None
    size_bytes: int | None
    ion_mb: float | None
    est_ms: float | None = None  # the board-free latency estimate


def detect_build(result: BuildResult) -> list[Detected]:
    """fp32 (ONNX Runtime) and every cvimodel's detections on the build's test image, decoded
    and NMS-ed on the CPU with the recipe's detect options."""
    from duotpu.core.detect import input_frame, per_image

    head, r = result.head, result.recipe
    if head is None or result.test_image_path is None:
        raise ValueError(f"{r.name} is not a detector built on a test image")
    pre, hw = input_frame(result.test_image_path, r.preprocess, head)

    def dets(outs: dict[str, np.ndarray[Any, Any]]) -> list[Detection]:
        return per_image(head, [[outs[n] for n in head.outputs]], pre, [hw], r.detect)[0]

    rows = [Detected("fp32 ONNX", dets(result.reference), 1.0, result.onnx.stat().st_size, None)]
    for mode, art in result.models.items():
        rows.append(
            Detected(
                f"{mode.upper()} cvimodel",
                dets(art.outputs),
                min(art.cosine.values()),
                art.size_bytes,
                art.ion_mb,
                art.estimate.ms if art.estimate is not None else None,
            )
        )
    return rows
