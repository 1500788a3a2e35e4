"""The cvimodel's flatbuffers classes: Python code that ``flatc`` generated from tpu_mlir's own
``cvimodel.fbs`` when duotpu was installed (``make install`` runs
``python -m duotpu.compiler.selfcheck``, which writes it; a wheel built afterwards carries it).

Reading a cvimodel never starts a process: when the code is missing, the reader says how to make
it instead of making it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from duotpu.config.errors import SetupError

#: where ``make install`` writes the code: inside the package, so that a wheel carries it
PACKAGED = Path(__file__).parent / "generated"
#: the stamp beside the code: the sha256 of the schema it was generated from
STAMP = "schema.sha256"


def cache_folder() -> Path:
    """Where the code goes when the package's own folder cannot be written (an installed wheel
    without it, in a read-only site-packages)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "duotpu" / "cvimodel-fbs"


def code_folders() -> list[Path]:
    """The folders the generated code is looked for in, first match wins."""
    return [PACKAGED, cache_folder()]


def generated_digest(folder: Path) -> str:
    """The schema digest the code in ``folder`` was generated from ('' when there is none)."""
    stamp = folder / STAMP
    if not (folder / "cvi" / "model" / "Model.py").is_file() or not stamp.is_file():
        return ""
    return stamp.read_text().strip()


def model_class() -> Any:
    """``cvi.model.Model.Model``, the root table of a cvimodel's flatbuffer."""
    for folder in code_folders():
        if generated_digest(folder):
            if str(folder) not in sys.path:
                # flatc's Python code imports its siblings as the top-level package `cvi`
                sys.path.insert(0, str(folder))
            return importlib.import_module("cvi.model.Model").Model
    raise SetupError(
        "duotpu's cvimodel reader is not set up: the Python code generated from tpu_mlir's "
        f"cvimodel.fbs is in neither {PACKAGED} nor {cache_folder()}. Run "
        "`python -m duotpu.compiler.selfcheck` once (`make install` does; it needs the "
        "FlatBuffers compiler: `apt-get install flatbuffers-compiler`)."
    )
