"""duotpu: PyTorch / ONNX models to verified, quantized cvimodels for the Milk-V Duo TPU.

The Python API mirrors the CLI::

    import duotpu
    result = duotpu.build("recipes/efficientnet_lite0.toml", quantize=["int8"])
    result.models["int8"].cvimodel, result.models["int8"].cosine
    model = duotpu.open_model(result.models["int8"].cvimodel)
    outputs = duotpu.infer(model, duotpu.tensors_for(model, ["cat.jpg"]))
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from importlib import metadata as _metadata
from os import PathLike
from typing import TYPE_CHECKING, Any

from duotpu.config.errors import (
    BoardError,
    BuildFailed,
    CompilerFailure,
    ConfigError,
    DataError,
    DuoTpuError,
    Interrupted,
    ModelError,
    PartialBuild,
    SetupError,
    ToleranceError,
    ToolchainError,
)
from duotpu.config.recipe import (
    Calibration,
    Deploy,
    DetectOptions,
    InputSpec,
    Mix,
    ModelSource,
    Preprocess,
    Recipe,
    Target,
    Tolerance,
    load_recipe,
    parse_target,
    recipe_from_dict,
)

if TYPE_CHECKING:
    from duotpu.builder.calibdata import CalibrationData, CalibrationDataReader
    from duotpu.builder.many import build_many
    from duotpu.builder.pipeline import EventSink, StageEvent
    from duotpu.builder.results import BuildResult, ModelArtifact
    from duotpu.compiler.executor import Executor, executor
    from duotpu.cvimodel import CviModelInfo, read_cvimodel
    from duotpu.eval.results import EvalResult
    from duotpu.infer.runtime import BuiltModel, detect, infer, open_model, tensors_for, top_k

# Loaded on first use: `import duotpu` (and the compiler's worker processes, which import the
# package) stays light; the build and inference modules pull in numpy, onnx and torch.
_LAZY = {
    "CalibrationDataReader": "duotpu.builder.calibdata",
    "CalibrationData": "duotpu.builder.calibdata",
    "BuildResult": "duotpu.builder.results",
    "EventSink": "duotpu.builder.pipeline",
    "ModelArtifact": "duotpu.builder.results",
    "StageEvent": "duotpu.builder.pipeline",
    "CviModelInfo": "duotpu.cvimodel",
    "top_k": "duotpu.infer.runtime",
    "detect": "duotpu.infer.runtime",
    "Executor": "duotpu.compiler.executor",
    "executor": "duotpu.compiler.executor",
    "build_many": "duotpu.builder.many",
    "make_app": "duotpu.board.app",
    "AppFolder": "duotpu.board.app",
    "read_cvimodel": "duotpu.cvimodel",
    "BuiltModel": "duotpu.infer.runtime",
    "infer": "duotpu.infer.runtime",
    "open_model": "duotpu.infer.runtime",
    "tensors_for": "duotpu.infer.runtime",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'duotpu' has no attribute {name!r}")


try:
    __version__ = _metadata.version("duotpu")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "build",
    "BuildResult",
    "ModelArtifact",
    "StageEvent",
    "EventSink",
    "Recipe",
    "ModelSource",
    "InputSpec",
    "Preprocess",
    "Calibration",
    "Tolerance",
    "Deploy",
    "Mix",
    "Target",
    "parse_target",
    "DetectOptions",
    "CalibrationData",
    "CalibrationDataReader",
    "evaluate",
    "load_recipe",
    "recipe_from_dict",
    "open_model",
    "BuiltModel",
    "tensors_for",
    "infer",
    "top_k",
    "detect",
    "read_cvimodel",
    "CviModelInfo",
    "Executor",
    "executor",
    "build_many",
    "make_app",
    "AppFolder",
    "DuoTpuError",
    "ConfigError",
    "ModelError",
    "DataError",
    "SetupError",
    "ToolchainError",
    "ToleranceError",
    "BuildFailed",
    "PartialBuild",
    "CompilerFailure",
    "BoardError",
    "Interrupted",
]


def build(
    recipe: Recipe | str | PathLike[str],
    *,
    out_dir: str | PathLike[str] | None = None,
    work_dir: str | PathLike[str] | None = None,
    events: EventSink | None = None,
    executor: Executor | None = None,
    calibration_data: CalibrationData | None = None,
    set: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> BuildResult:
    """Build ``recipe`` (a :class:`Recipe` or a TOML path) into verified cvimodels.

    ``set`` changes recipe keys by their dotted names, as ``--set`` does on the command line:
    ``build("r.toml", set={"calibration.count": 20, "quantize": ["int8"]})`` (each value is
    checked against the recipe's types). Other keyword arguments are the older form of the same
    (``calibration__count=20``, ``__`` for the dots). ``events`` receives a :class:`StageEvent` as
    each stage starts, finishes or is found in the cache. ``executor``
    (``duotpu.compiler.executor.executor(workers=N)``) builds the mixed-precision search's
    sensitivity candidates as parallel tasks. ``calibration_data``: calibrate on these
    preprocessed inputs instead of ``calibration.images`` — an iterable of NCHW float32 arrays
    (or ``{input_name: array}`` dicts, one entry per input for a model of several inputs), or
    an object with ONNX Runtime's one-method ``CalibrationDataReader`` protocol
    (``get_next()``, ``None`` when done); without a ``test_image`` the build is verified on the
    first of them (a model of tensor inputs: on a few of them). Raises a :class:`DuoTpuError`
    subclass on failure.
    """
    from pathlib import Path

    from duotpu.builder import pipeline

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(Path(recipe))
    changes = {k.replace("__", "."): v for k, v in overrides.items()}
    changes.update(set or {})
    if changes:
        recipe = recipe.with_overrides(changes, "build() arguments")
    return pipeline.build(
        recipe,
        Path(out_dir) if out_dir else None,
        Path(work_dir) if work_dir else None,
        events or (lambda e: None),
        executor=executor,
        calibration_data=calibration_data,
    )


def evaluate(
    build: str | PathLike[str],
    images: str | PathLike[str],
    *,
    recipe: str | PathLike[str] | None = None,
    backend: str = "mlir",
    margin: float = 0.05,
    class_names: list[str] | None = None,
    limit: int = 0,
    check: int = 2,
    layers: int = 0,
    executor: Executor | None = None,
) -> EvalResult:
    """Evaluate every cvimodel of a build folder (or one cvimodel) against the fp32 model on a
    folder of images — what ``duotpu eval`` prints and writes to ``report.json``: classifiers by
    agreement (and accuracy with labelled subfolders), detectors by mAP against the fp32
    detections, other models by output cosine. ``backend``: ``mlir`` (the quantized MLIR, fast;
    checked against the simulator on ``check`` images first) or ``cvimodel`` (the CV18xx
    simulator); ``margin``: fp32's top-1 lead that makes an image decisive; ``limit``: at most
    that many images; ``layers``: per-layer cosines on that many images; ``executor``: a
    :mod:`duotpu.compiler.executor` executor (Ray) to spread the images. Returns a
    :class:`~duotpu.eval.results.ClassifyEval`, :class:`~duotpu.eval.results.DetectEval` or
    :class:`~duotpu.eval.results.GenericEval`; write its HTML report with
    ``duotpu.eval.report.write_eval_report(folder, result)``."""
    from pathlib import Path

    from duotpu.eval.evaluate import evaluate_build

    return evaluate_build(
        Path(build),
        Path(images),
        recipe=Path(recipe) if recipe else None,
        backend=backend,
        margin=margin,
        class_names=class_names,
        limit=limit,
        check=check,
        layers=layers,
        executor=executor,
    )
