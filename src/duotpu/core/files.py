"""Files written so that a reader never sees one half-written: a unique temporary name beside the
final one, flushed to disk, then renamed over it. The one implementation every layer uses."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# mkstemp makes files 0600; the final file gets what open() would have given it (read once: the
# umask can only be read by setting it)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """A unique temporary path beside ``dst`` (with its suffix, so writers that go by the
    suffix keep working) to write into; renamed to ``dst`` when the block ends, removed if it
    raises. Two writers of one file never share the temporary name."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=f".part{dst.suffix}")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash leaves old or new
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(dst: Path, content: str | bytes) -> Path:
    """Write ``content`` (text or bytes) to ``dst`` atomically."""
    with atomic_path(Path(dst)) as tmp:
        if isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            tmp.write_text(content)
    return Path(dst)


def atomic_copy(src: Path, dst: Path) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)
