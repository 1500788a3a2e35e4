"""What a build produces, as types: each stage's result (stored in its ``stage.json`` and read
back typed when the stage is cached), one delivered model (`ModelArtifact`) and the whole
build (`BuildResult`). The pipeline makes them; the report, the summary, the replay
archive and every caller read them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from numpy.typing import NDArray

from duotpu import compiler
from duotpu.config.recipe import Recipe

from .manifest import Manifest
from .mixprec import TABLE_HEADER, Candidate, failed_notes, table_cells
from .workdir import Stage, StageResult

if TYPE_CHECKING:
    from duotpu.core.head import YoloHead

__all__ = [
    "Exported",
    "Transformed",
    "Referenced",
    "Calibrated",
    "RoundedModel",
    "Deployed",
    "Verified",
    "Mixed",
    "ModelArtifact",
    "BuildResult",
]


# --------------------------------------------------------------------------------------------
# What each stage produces
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Exported(StageResult):
    """The model as ONNX (a detector: cut before its box decode, ``head`` says how to decode)."""

    onnx: Path
    input_name: str
    output_names: tuple[str, ...]
    head: Path | None = None
    notes: tuple[str, ...] = ()  # what intake changed in a user's ONNX file
    tail: Path | None = None  # cut with model.outputs: the rest of the model, run on the CPU
    whole: Path | None = None  # cut: the whole model (the fp32 reference)

    @property
    def reference_onnx(self) -> Path:
        """The ONNX model whose outputs a build's models are checked against."""
        return self.whole or self.onnx


@dataclass(frozen=True)
class Transformed(StageResult):
    """model_transform's fp32 MLIR with its weights, the test input and the MLIR's outputs on it;
    the ONNX file and test image it was made from."""

    mlir: Path
    weights: Path
    test_input: Path
    top_outputs: Path
    onnx: Path
    test_image: Path
    # the compiled model's inputs in order (a cut model's TPU part may read fewer than the model)
    input_names: tuple[str, ...] = ()

    @property
    def files(self) -> compiler.TransformFiles:
        """The same files as the compiler layer names them."""
        return compiler.TransformFiles(self.mlir.parent, self.mlir.stem)


@dataclass(frozen=True)
class Referenced(StageResult):
    """The fp32 ONNX model's outputs on the test input (ONNX Runtime)."""

    reference: Path


@dataclass(frozen=True)
class Calibrated(StageResult):
    """The INT8 calibration table and the images it was made from."""

    table: Path
    images: Path
    count: int
    skipped: int


@dataclass(frozen=True)
class RoundedModel(StageResult):
    """The transformed model with its INT8 weight rounding chosen (``calibration.rounding =
    "optimized"``) and the calibration table with its tuned thresholds."""

    transformed: Transformed
    calibrated: Calibrated
    #: the weights before rounding, and each rounded layer's weight by name: a layer kept in BF16
    #: by a mixed-precision search takes its original weight, not the INT8-rounded one
    original_weights: Path
    rounded: dict[str, str]


@dataclass(frozen=True)
class Deployed(StageResult):
    """One cvimodel, its outputs on the test input from the simulator, its quantized MLIR."""

    cvimodel: Path
    size_bytes: int
    ion_mb: float
    cvimodel_version: str
    model_outputs: Path
    tpu_mlir: Path
    # False: the simulator could not load it; its outputs are the quantized MLIR's
    simulated: bool = True
    # the quantized MLIR's tensors on the test input, which the verify stage checks against
    # fp32 at the recipe's tolerance (None: tpu_mlir cannot run the test input, self-checked)
    tpu_outputs: Path | None = None


@dataclass(frozen=True)
class Verified(StageResult):
    """Cosine of each output to fp32 (by ONNX output name), and which compiled output it is."""

    cosine: dict[str, float]  # per output, the mean over the images verified on
    required: float
    outputs: dict[str, str]
    similarity: Path
    per_image: tuple[float, ...] = ()  # per image, its least similar output
    whole_outputs: Path | None = None  # a cut model: the TPU's outputs run through the tail

    @property
    def worst(self) -> float:
        """The cosine of the least similar output on the least similar image."""
        return min(self.per_image) if self.per_image else min(self.cosine.values())


@dataclass(frozen=True)
class Mixed(StageResult):
    """The mixed-precision trade-off: every candidate built, and the row chosen."""

    rows: tuple[Candidate, ...]
    chosen: int
    target: str
    met: bool
    bf16_meets: bool
    fast_search_seconds: float
    picked: bool = False
    failed: tuple[Candidate, ...] = ()  # candidates the compiler could not make (not rows)

    @property
    def best(self) -> Candidate:
        return self.rows[self.chosen]

    def table(self) -> tuple[tuple[str, ...], list[list[str]]]:
        """The trade-off table as text cells: its header and one row per candidate (``#`` is
        the number ``mix.pick`` takes; candidates the compiler could not make follow,
        unnumbered)."""
        return TABLE_HEADER, table_cells(self.rows, self.chosen, self.failed)

    def failed_notes(self) -> list[str]:
        """One line per candidate the compiler could not make: its label and why."""
        return failed_notes(self.failed)


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclass
class ModelArtifact:
    """One deployed cvimodel and what was measured about it."""

    mode: str
    cvimodel: Path
    size_bytes: int
    ion_mb: float
    cosine: dict[str, float]
    outputs: dict[str, NDArray[Any]] = field(repr=False, default_factory=dict)
    tpu_mlir: Path | None = None  # its quantized MLIR in the work directory (the fast path)
    per_image: tuple[float, ...] = ()  # verified on several images: each one's worst cosine
    estimate: Any = None  # latency.Estimate: the board-free latency estimate
    simulated: bool = True  # False: the simulator could not load it; checked on its MLIR

    @property
    def worst(self) -> float:
        """The cosine of the least similar output on the least similar test image."""
        return min(self.per_image) if self.per_image else min(self.cosine.values())


@dataclass
class BuildResult:
    """What `build` produced: final files, the fp32 reference and the per-mode models."""

    recipe: Recipe
    out_dir: Path
    work_dir: Path
    onnx: Path
    test_input: dict[str, NDArray[Any]] = field(repr=False)
    reference: dict[str, NDArray[Any]] = field(repr=False)
    models: dict[str, ModelArtifact]
    stages: list[Stage[Any]]
    manifest: Path
    recipe_path: Path
    mix: Mixed | None = None
    head: "YoloHead | None" = None
    test_image_path: Path | None = None
    inputs_archive: Path | None = None
    failed: dict[str, str] = field(default_factory=dict)  # mode → why it was not delivered
    failed_stages: dict[str, float] = field(default_factory=dict)  # stage → seconds it ran
    report: Path | None = None  # report.html beside the cvimodels
    listing: Manifest | None = None  # what ``manifest`` holds, as written
    tried_cuts: list[str] = field(default_factory=list)  # the cuts the build tried itself

    @property
    def ok(self) -> bool:
        """True when every requested mode was built and verified."""
        return set(self.recipe.quantize) <= set(self.models) and (self.mix is None or self.mix.met)

    def unverified(self, mode: str) -> str:
        """Why a delivered model is not verified ("" when it is). INT8 and BF16 are delivered
        only when verified; the mixed model is delivered as the search's best even when it
        misses its target or the INT8 tolerance on the test image."""
        art, mix = self.models.get(mode), self.mix
        if mode != "mix" or art is None or mix is None:
            return ""
        if mix.target and not mix.met:
            return f"target {mix.target} not met (best {mix.best.metric:.4f})"
        need = self.recipe.tolerance.verify_int8
        if art.worst < need:
            return f"cosine vs fp32 {art.worst:.4f} < {need} (tolerance.verify_int8)"
        return ""
