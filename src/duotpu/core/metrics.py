"""Similarity and classification metrics (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from duotpu.onboard import heads


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened (1.0 when both are all zeros)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare tensors of {a.size} and {b.size} values")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


#: rows of class scores as probabilities (the board app's own code)
as_probabilities = heads.probabilities
#: the k best (class index, probability) pairs of one row
topk = heads.top_k


@dataclass
class ModeMetrics:
    """How one quantized model compares with fp32 on the evaluated images."""

    mode: str
    n: int
    top1_agree: float
    decisive_n: int
    decisive_top1_agree: float
    top5_contains_fp32_top1: float
    cosine_mean: float
    cosine_worst: float
    kl_mean: float
    top1_acc: float | None = None
    top5_acc: float | None = None
    images_per_second: float = 0.0
    cosines: list[float] = field(default_factory=list, repr=False)


def decisive_mask(p_fp32: np.ndarray, margin: float) -> np.ndarray:
    """Rows whose fp32 top-1 probability exceeds the top-2 by at least ``margin``."""
    top2 = np.sort(p_fp32, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) >= margin


def compare(
    mode: str,
    logits_fp32: np.ndarray,
    logits_q: np.ndarray,
    margin: float,
    labels: list[int] | None,
    seconds: float,
) -> ModeMetrics:
    """The metrics of one quantized model's outputs against fp32's (rows are images)."""
    pf = as_probabilities(logits_fp32)
    pq = as_probabilities(logits_q)
    t1f, t1q = pf.argmax(1), pq.argmax(1)
    top5q = np.argsort(-pq, axis=1)[:, :5]
    dec = decisive_mask(pf, margin)
    cos = [cosine(a, b) for a, b in zip(logits_fp32, logits_q)]
    eps = 1e-12
    kl = np.sum(pf * (np.log(pf + eps) - np.log(pq + eps)), axis=1)
    m = ModeMetrics(
        mode,
        len(pf),
        float(np.mean(t1f == t1q)),
        int(dec.sum()),
        float(np.mean((t1f == t1q)[dec])) if dec.any() else float("nan"),
        float(np.mean([t1f[i] in top5q[i] for i in range(len(pf))])),
        float(np.mean(cos)),
        float(np.min(cos)),
        float(np.mean(kl)),
        images_per_second=len(pf) / seconds if seconds > 0 else 0.0,
        cosines=cos,
    )
    if labels is not None:
        y = np.array(labels)
        m.top1_acc = float(np.mean(t1q == y))
        m.top5_acc = float(np.mean([y[i] in top5q[i] for i in range(len(y))]))
    return m


def fp32_metrics(logits: np.ndarray, labels: list[int] | None, margin: float) -> dict:
    """Accuracy of the fp32 model itself (with labels) and how many images are decisive."""
    p = as_probabilities(logits)
    out: dict[str, float] = {"n": len(p), "decisive_n": int(decisive_mask(p, margin).sum())}
    if labels is not None:
        y = np.array(labels)
        top5 = np.argsort(-p, axis=1)[:, :5]
        out["top1_acc"] = float(np.mean(p.argmax(1) == y))
        out["top5_acc"] = float(np.mean([y[i] in top5[i] for i in range(len(y))]))
    return out
