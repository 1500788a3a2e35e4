"""Files written so that a reader never sees one half-written (a temporary name, then a rename)."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(dst: Path, content: str | bytes) -> Path:
    """Write ``content`` (text or bytes) to ``dst`` through a temporary name beside it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content)
    os.replace(tmp, dst)
    return dst
