"""Shared by the benchmarks: print a result table and save it."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: str | Path) -> str:
    """Print the lines and write them to ``out``."""
    text = "\n".join(lines) + "\n"
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return text
