"""Reading a build's ``manifest.json`` (written by :func:`duotpu.builder.pipeline.build` beside
the cvimodels): which cvimodel is which model of the build, and the work-directory files it was
made from. Every other package learns about a build from here, never from the work directory's
layout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from duotpu import compiler

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ListedModel:
    """One cvimodel as its build's manifest lists it. ``onnx`` (the fp32 model its outputs are
    checked against: for a model cut with ``model.outputs``, the whole model),
    ``top_mlir`` (the fp32 MLIR) and ``tpu_mlir`` (the model's quantized MLIR: the fast path)
    are ``None`` when the file is gone (the work directory was deleted) or, for ``tpu_mlir``,
    when the cvimodel is not the file the build made."""

    mode: str
    cvimodel: Path
    onnx: Path | None
    top_mlir: Path | None
    tpu_mlir: Path | None
    tensor_info: Path | None = None  # model_deploy's layer id → tensor name table
    simulable: bool = True  # False: the CV18xx simulator cannot load it (checked on its MLIR)


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).is_file() else None


def listed_model(cvimodel: str | Path) -> ListedModel | None:
    """The manifest beside ``cvimodel``'s entry for it, or ``None`` when no build manifest there
    lists the file."""
    cvimodel = Path(cvimodel)
    try:
        data = json.loads((cvimodel.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    for mode, entry in (data.get("models") or {}).items():
        if isinstance(entry, dict) and entry.get("cvimodel") == cvimodel.name:
            tpu = _existing(entry.get("tpu_mlir"))
            if (
                tpu is not None
                and entry.get("sha256")
                and compiler.file_digest(cvimodel) != entry["sha256"]
            ):
                tpu = None  # not the file the build made: its MLIR says nothing about this one
            onnx = _existing(data.get("reference_onnx")) or _existing(data.get("onnx"))
            return ListedModel(
                mode,
                cvimodel,
                onnx,
                _existing(data.get("top_mlir")),
                tpu,
                _existing(entry.get("tensor_info")),
                not str(entry.get("verified_on", "CV18xx")).startswith("quantized"),
            )
    return None
