"""Similarity and classification metrics (numpy only)."""
from __future__ import annotations

import numpy as np


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


def as_probabilities(x: np.ndarray) -> np.ndarray:
    """Rows of class scores as probabilities: softmax, unless they already are probabilities."""
    x = np.asarray(x, np.float64).reshape(np.asarray(x).shape[0], -1)
    if np.all(x >= 0) and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def topk(probs: np.ndarray, k: int = 5) -> list[tuple[int, float]]:
    """The ``k`` best (class index, probability) pairs of one row."""
    p = np.asarray(probs).ravel()
    idx = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in idx]
