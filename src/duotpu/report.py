"""Human-readable summaries of a build (rich tables) — used by the CLI."""
from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from . import metrics
from .labels import class_name

#: ION memory commonly reserved for the TPU on each board's stock image (MB), for fit hints.
DUO_ION_MB = {"Duo (CV1800B, 64 MB RAM)": 18.0, "Duo 256M (SG2002)": 75.0,
              "Duo S (SG2000, 512 MB)": 70.0}


@dataclass
class Classified:
    """Top-k classes of one model's output on one image."""
    model: str
    top: list[tuple[int, float]]
    cosine: float | None
    size_bytes: int | None
    ion_mb: float | None


def classify_build(result, k: int = 5) -> list[Classified]:
    """fp32 (ONNX Runtime) and every cvimodel's top-k on the build's test image."""
    ref_name = next(iter(result.reference))
    rows = [Classified("fp32 ONNX", metrics.topk(metrics.as_probabilities(
        result.reference[ref_name])[0], k), 1.0, result.onnx.stat().st_size, None)]
    for mode, art in result.models.items():
        out = art.outputs[ref_name]
        rows.append(Classified(f"{mode.upper()} cvimodel",
                               metrics.topk(metrics.as_probabilities(out)[0], k),
                               art.cosine[ref_name], art.size_bytes, art.ion_mb))
    return rows


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def classification_table(rows: list[Classified], labels: list[str] | None, title: str) -> Table:
    """One table: a column per model with its top-k names and probabilities, then its cosine to
    fp32, file size and board (ION) memory need."""
    table = Table(title=title)
    table.add_column("", style="bold")
    for r in rows:
        table.add_column(r.model, justify="left")
    k = max(len(r.top) for r in rows)
    for rank in range(k):
        table.add_row(f"top-{rank + 1}", *[
            f"{class_name(labels, r.top[rank][0])}  {r.top[rank][1]:.3f}"
            if rank < len(r.top) else "" for r in rows], end_section=rank == k - 1)
    table.add_row("cosine vs fp32", *["—" if r.cosine is None else f"{r.cosine:.4f}"
                                      for r in rows])
    table.add_row("file size", *[_mb(r.size_bytes) for r in rows])
    table.add_row("board memory (ION)", *["—" if r.ion_mb is None else f"{r.ion_mb:.2f} MB"
                                          for r in rows])
    return table


def stage_table(result) -> Table:
    """Per stage: ran or cached, and its time."""
    table = Table(title="stages")
    table.add_column("stage")
    table.add_column("status")
    table.add_column("seconds", justify="right")
    for s in result.stages:
        table.add_row(s.name, "cached" if s.cached else "ran", f"{s.seconds:.1f}")
    return table


def top1_agrees(rows: list[Classified]) -> bool:
    """True when every model's top-1 class equals the fp32 model's."""
    return len({r.top[0][0] for r in rows}) == 1


def as_json(rows: list[Classified], labels: list[str] | None) -> list[dict]:
    """The rows as plain data."""
    return [{"model": r.model, "cosine_vs_fp32": r.cosine, "size_bytes": r.size_bytes,
             "ion_mb": r.ion_mb,
             "top": [{"class": i, "name": class_name(labels, i), "probability": round(p, 6)}
                     for i, p in r.top]} for r in rows]
