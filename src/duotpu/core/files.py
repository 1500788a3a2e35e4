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
    """A unique temporary path to write ``dst`` into, renamed to ``dst`` when the block ends
    and removed if it raises. It has ``dst``'s own name (writers that go by the suffix, such as
    ``np.savez`` and ``cv2.imwrite``, keep working) inside a hidden folder of its own beside
    ``dst``: two writers never share it, and no ``*.cvimodel`` glob of the folder sees a
    half-written file."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    box = Path(tempfile.mkdtemp(dir=dst.parent, prefix=".duotpu-tmp-"))
    tmp = box / dst.name
    try:
        tmp.touch(mode=0o666 & ~_UMASK)
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash leaves old or new
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(box, ignore_errors=True)


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


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Send what native code writes to file descriptors 1 and 2 (not only Python's
    ``sys.stdout`` / ``sys.stderr``) to a temporary file while the block runs; the list holds
    that text afterwards. For libraries that print diagnostics from C++ (torch's exporter dumps a
    whole graph on stdout when an export fails)."""
    import sys

    got: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as tmp:
        for fd in saved:
            os.dup2(tmp.fileno(), fd)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # Python's prints go the same way
                yield got
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, old in saved.items():
                os.dup2(old, fd)
                os.close(old)
            tmp.seek(0)
            got.append(tmp.read().decode(errors="replace"))
