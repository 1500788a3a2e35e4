"""The build's rich tables: a column per delivered model, its answers on the test image and
what it costs on the board."""

from __future__ import annotations

from rich.table import Table

import duotpu


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def classification_table(
    rows: list[duotpu.Classified], labels: list[str] | None, title: str
) -> Table:
    """One table: a column per model with its top-k names and probabilities, then its cosine to
    fp32, file size and board (ION) memory need."""
    table = Table(title=title)
    table.add_column("", style="bold")
    for r in rows:
        table.add_column(r.model, justify="left")
    k = max(len(r.top) for r in rows)
    for rank in range(k):
        table.add_row(
            f"top-{rank + 1}",
            *[
                f"{duotpu.class_name(labels, r.top[rank][0])}  {r.top[rank][1]:.3f}"
                if rank < len(r.top)
                else ""
                for r in rows
            ],
            end_section=rank == k - 1,
        )
    table.add_row("cosine vs fp32", *["—" if r.cosine is None else f"{r.cosine:.4f}" for r in rows])
    _cost_rows(table, rows)
    return table


def detection_table(rows: list[duotpu.Detected], title: str, k: int = 5) -> Table:
    """A column per model: its count of detections, the best ``k`` (name, score, box), the
    lowest cosine of its head maps to fp32, size and board memory."""
    table = Table(title=title)
    table.add_column("", style="bold")
    for r in rows:
        table.add_column(r.model, justify="left")
    table.add_row("detections", *[str(len(r.detections)) for r in rows])
    for rank in range(k):
        table.add_row(
            f"#{rank + 1}",
            *[
                f"{r.detections[rank].name} {r.detections[rank].score:.2f} "
                f"[{', '.join(f'{v:.0f}' for v in r.detections[rank].box)}]"
                if rank < len(r.detections)
                else ""
                for r in rows
            ],
            end_section=rank == k - 1,
        )
    table.add_row(
        "head maps: lowest cosine vs fp32",
        *["—" if r.cosine_min is None else f"{r.cosine_min:.4f}" for r in rows],
    )
    _cost_rows(table, rows)
    return table


def _cost_rows(table: Table, rows: list) -> None:
    """What each model costs on the board: file size, ION need and the estimated time."""
    table.add_row("file size", *[_mb(r.size_bytes) for r in rows])
    table.add_row(
        "board memory (ION)", *["—" if r.ion_mb is None else f"{r.ion_mb:.2f} MB" for r in rows]
    )
    table.add_row(
        "est. board time",
        *[
            "—" if r.est_ms is None else f"{r.est_ms:.1f} ms ({1000 / r.est_ms:.0f} fps)"
            for r in rows
        ],
    )
