"""A build's ``manifest.json`` (written by `duotpu.builder.pipeline.build` beside the
cvimodels), typed: `Manifest` is the one schema the build writes and every reader reads —
which cvimodel is which model of the build, what was measured about it, and the work-directory
files it was made from. Every other package learns about a build from here, never from the work
directory's layout."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from duotpu import compiler
from duotpu.config.errors import ConfigError
from duotpu.core.files import atomic_write

MANIFEST = "manifest.json"
#: the manifest's schema version: raised when a key changes meaning or goes away (new keys
#: with defaults keep it); ``versions.duotpu`` says which duotpu wrote the file
SCHEMA = 1


@dataclass
class ManifestModel:
    """One delivered cvimodel: its file (beside the manifest), size, ION need, each output's
    cosine to fp32, its digest, its work files (the quantized MLIR: the fast path; the layer
    table), the latency estimate, where it was verified, the boards it fits and on how many
    images."""

    cvimodel: str
    size_bytes: int = 0
    ion_mb: float = 0.0
    cosine_vs_fp32: dict[str, float] = field(default_factory=dict)
    sha256: str = ""
    tpu_mlir: Optional[str] = None
    tensor_info: Optional[str] = None  # model_deploy's layer id → tensor name table
    estimate: Optional[dict[str, Any]] = None
    verified_on: str = "CV18xx simulator"
    fits: dict[str, bool] = field(default_factory=dict)
    verified_images: int = 1
    worst_image_cosine: Optional[float] = None

    @property
    def simulable(self) -> bool:
        """False when the CV18xx simulator cannot load it (it was checked on its MLIR)."""
        return not self.verified_on.startswith("quantized")


@dataclass
class Manifest:
    """What a build delivered and how (``manifest.json``). ``failed`` / ``failed_stages`` are
    set for a partial build: the modes not delivered (why) and the stages that failed (s)."""

    name: str
    chip: str
    recipe: dict[str, Any]
    versions: dict[str, str]
    work_dir: Optional[str]
    input_name: str
    onnx: Optional[str]  # the compiled ONNX file
    reference_onnx: Optional[str]  # the model the outputs are checked against (cut: the whole)
    tail: Optional[str]  # a cut model's CPU part, beside the manifest
    task: str
    top_mlir: Optional[str]
    models: dict[str, ManifestModel]
    stages: list[dict[str, Any]]
    failed: Optional[dict[str, str]] = None
    failed_stages: Optional[dict[str, float]] = None
    schema: int = SCHEMA

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data (a complete build has no ``failed`` keys)."""
        data = dataclasses.asdict(self)
        for key in ("failed", "failed_stages"):
            if data[key] is None:
                del data[key]
        return data

    def write(self, path: Path) -> Path:
        """Write it to ``path`` atomically."""
        return atomic_write(path, json.dumps(self.to_json(), indent=2, default=str))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        """Read manifest data, of this schema or an earlier one (missing keys: defaults;
        unknown keys: ignored). Raises `ConfigError` for a newer schema."""
        if int(data.get("schema", 1)) > SCHEMA:
            raise ConfigError(
                f"This build's {MANIFEST} has schema {data['schema']}, newer than this duotpu "
                f"reads ({SCHEMA}; duotpu {data.get('versions', {}).get('duotpu', '?')} wrote "
                "it): upgrade duotpu, or rebuild with this one."
            )
        known = {f.name for f in dataclasses.fields(ManifestModel)}
        models = {
            mode: ManifestModel(**{k: v for k, v in entry.items() if k in known})
            for mode, entry in (data.get("models") or {}).items()
            if isinstance(entry, dict) and entry.get("cvimodel")
        }
        return cls(
            name=str(data.get("name", "")),
            chip=str(data.get("chip", "")),
            recipe=dict(data.get("recipe") or {}),
            versions=dict(data.get("versions") or {}),
            work_dir=data.get("work_dir"),
            input_name=str(data.get("input_name", "")),
            onnx=data.get("onnx"),
            reference_onnx=data.get("reference_onnx"),
            tail=data.get("tail"),
            task=str(data.get("task", "")),
            top_mlir=data.get("top_mlir"),
            models=models,
            stages=list(data.get("stages") or []),
            failed=data.get("failed"),
            failed_stages=data.get("failed_stages"),
            schema=int(data.get("schema", 1)),
        )

    @classmethod
    def read(cls, build: Path) -> "Manifest":
        """The manifest of build folder ``build``. Raises `ConfigError` for a folder
        that is not a build."""
        try:
            return cls.from_json(json.loads((Path(build) / MANIFEST).read_text()))
        except (OSError, ValueError, TypeError):
            raise ConfigError(
                f"{build} is not a build folder (no readable {MANIFEST}): give the folder "
                "`duotpu build` wrote (build/NAME)."
            ) from None


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
    name: str = ""  # the build's name: the files beside the cvimodel are named for it


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).is_file() else None


def listed_model(cvimodel: str | Path) -> ListedModel | None:
    """The manifest beside ``cvimodel``'s entry for it, or ``None`` when no build manifest there
    lists the file."""
    cvimodel = Path(cvimodel)
    try:
        manifest = Manifest.read(cvimodel.parent)
    except ConfigError:
        return None
    for mode, entry in manifest.models.items():
        if entry.cvimodel == cvimodel.name:
            tpu = _existing(entry.tpu_mlir)
            if tpu is not None and entry.sha256 and compiler.file_digest(cvimodel) != entry.sha256:
                tpu = None  # not the file the build made: its MLIR says nothing about this one
            onnx = _existing(manifest.reference_onnx) or _existing(manifest.onnx)
            return ListedModel(
                mode,
                cvimodel,
                onnx,
                _existing(manifest.top_mlir),
                tpu,
                _existing(entry.tensor_info),
                entry.simulable,
                manifest.name,
            )
    return None
