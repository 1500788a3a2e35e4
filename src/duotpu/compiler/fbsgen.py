"""Generate the cvimodel reader's flatbuffers code with ``flatc`` (at install time).

``make install`` runs this through `duotpu.compiler.selfcheck`; the reader
(`duotpu.cvimodel.schema`) only imports what it wrote.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from duotpu.config.errors import SetupError, ToolchainError
from duotpu.cvimodel import schema

from .env import cvimodel_schema
from .runner import run_argv


def _writable(folder: Path) -> bool:
    parent = folder.parent
    return os.access(parent, os.W_OK) and (not folder.exists() or os.access(folder, os.W_OK))


def generate_cvimodel_code() -> Path:
    """Make sure the reader's code matches tpu_mlir's ``cvimodel.fbs``: generate it with
    ``flatc`` into the package (or, when that cannot be written, duotpu's cache folder) unless
    code of the same schema is already there. Returns the folder."""
    fbs = cvimodel_schema()
    digest = hashlib.sha256(fbs.read_bytes()).hexdigest()
    for folder in schema.code_folders():
        if schema.generated_digest(folder) == digest:
            return folder
    target = schema.PACKAGED if _writable(schema.PACKAGED) else schema.cache_folder()
    flatc = shutil.which("flatc")
    if flatc is None:
        raise SetupError(
            "Reading cvimodel files needs Python code generated once by the FlatBuffers "
            "compiler 'flatc' from tpu_mlir's cvimodel.fbs, and flatc is not installed. Run "
            "`make install` (it installs Debian's flatbuffers-compiler) or `apt-get install "
            "flatbuffers-compiler`, then `python -m duotpu.compiler.selfcheck`."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # generated beside the target, then swapped in whole: a reader never sees half of it
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        try:
            run_argv(
                "flatc",
                [flatc, "--python", "-o", str(tmp), str(fbs)],
                tmp,
                tmp / "flatc.log",
                dict(os.environ),
            )
        except ToolchainError as e:
            raise SetupError(f"flatc could not compile {fbs}: {e.tail[-300:]}") from None
        (tmp / "flatc.log").unlink(missing_ok=True)
        (tmp / schema.STAMP).write_text(digest + "\n")
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
