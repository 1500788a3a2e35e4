"""duotpu: PyTorch / ONNX models to verified, quantized cvimodels for the Milk-V Duo TPU.

The Python API mirrors the CLI::

    import duotpu
    result = duotpu.build("recipes/efficientnet_lite0.toml", quantize=["int8"])
    result.models["int8"].cvimodel, result.models["int8"].cosine
    model = duotpu.open_model(result.models["int8"].cvimodel)
    outputs = duotpu.infer(model, duotpu.tensors_for(model, ["cat.jpg"]))

The command line calls nothing else: every name it uses is exported here (a unit test reads
the CLI's source and checks it), so the API is what ``duotpu`` itself runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from importlib import metadata as _metadata
from os import PathLike
from typing import TYPE_CHECKING, Any

from duotpu.config.chips import BOARDS
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
    command_line_overrides,
    load_recipe,
    parse_target,
    recipe_fields,
    recipe_flags,
    recipe_for_command,
    recipe_from_dict,
)

if TYPE_CHECKING:
    from types import ModuleType

    from duotpu.builder.calibdata import CalibrationData, CalibrationDataReader
    from duotpu.builder.legacy import LegacyResult, run_legacy
    from duotpu.builder.many import build_many
    from duotpu.builder.pipeline import EventSink, StageEvent
    from duotpu.builder.results import BuildResult, ModelArtifact
    from duotpu.builder.summary import (
        Classified,
        Detected,
        board_fits,
        classify_build,
        detect_build,
        fit_text,
        top1_agrees,
    )
    from duotpu.builder.summary import as_json as classified_json
    from duotpu.compiler import stop_children
    from duotpu.compiler.executor import Executor, executor
    from duotpu.core.detect import draw as draw_detections
    from duotpu.core.images import builtin_photo
    from duotpu.core.images import list_files as list_images
    from duotpu.core.labels import class_name, imagenet_classes, read_labels
    from duotpu.cvimodel import CviModelInfo, read_cvimodel
    from duotpu.eval.evaluate import least_similar
    from duotpu.eval.report import write_eval_report
    from duotpu.eval.results import ClassifyEval, DetectEval, EvalResult, GenericEval
    from duotpu.inference.inspect import Inspection, inspect_cvimodel, latency_estimate
    from duotpu.inference.runtime import (
        BuiltModel,
        apply_tail,
        describe_generic,
        describe_outputs,
        detect,
        infer,
        infer_batched,
        open_model,
        save_outputs,
        tensors_for,
        top_k,
    )

    board: ModuleType

# Loaded on first use: `import duotpu` (and the compiler's worker processes, which import the
# package) stays light; the build and inference modules pull in numpy, onnx and torch.
# name → "module" (the same name there) or "module:name"; a bare module is a public sub-API.
_LAZY = {
    # building
    "CalibrationDataReader": "duotpu.builder.calibdata",
    "CalibrationData": "duotpu.builder.calibdata",
    "BuildResult": "duotpu.builder.results",
    "ModelArtifact": "duotpu.builder.results",
    "EventSink": "duotpu.builder.pipeline",
    "StageEvent": "duotpu.builder.pipeline",
    "build_many": "duotpu.builder.many",
    "run_legacy": "duotpu.builder.legacy",
    "LegacyResult": "duotpu.builder.legacy",
    "Classified": "duotpu.builder.summary",
    "Detected": "duotpu.builder.summary",
    "classify_build": "duotpu.builder.summary",
    "classified_json": "duotpu.builder.summary:as_json",
    "detect_build": "duotpu.builder.summary",
    "top1_agrees": "duotpu.builder.summary",
    "board_fits": "duotpu.builder.summary",
    "fit_text": "duotpu.builder.summary",
    "Executor": "duotpu.compiler.executor",
    "executor": "duotpu.compiler.executor",
    "stop_children": "duotpu.compiler",
    # models and images
    "CviModelInfo": "duotpu.cvimodel",
    "read_cvimodel": "duotpu.cvimodel",
    "Inspection": "duotpu.inference.inspect",
    "inspect_cvimodel": "duotpu.inference.inspect",
    "latency_estimate": "duotpu.inference.inspect",
    "read_labels": "duotpu.core.labels",
    "class_name": "duotpu.core.labels",
    "imagenet_classes": "duotpu.core.labels",
    "list_images": "duotpu.core.images:list_files",
    "builtin_photo": "duotpu.core.images",
    "draw_detections": "duotpu.core.detect:draw",
    # inference
    "BuiltModel": "duotpu.inference.runtime",
    "open_model": "duotpu.inference.runtime",
    "tensors_for": "duotpu.inference.runtime",
    "infer": "duotpu.inference.runtime",
    "infer_batched": "duotpu.inference.runtime",
    "apply_tail": "duotpu.inference.runtime",
    "top_k": "duotpu.inference.runtime",
    "detect": "duotpu.inference.runtime",
    "describe_outputs": "duotpu.inference.runtime",
    "describe_generic": "duotpu.inference.runtime",
    "save_outputs": "duotpu.inference.runtime",
    # evaluation
    "EvalResult": "duotpu.eval.results",
    "ClassifyEval": "duotpu.eval.results",
    "DetectEval": "duotpu.eval.results",
    "GenericEval": "duotpu.eval.results",
    "least_similar": "duotpu.eval.evaluate",
    "write_eval_report": "duotpu.eval.report",
    # the board: apps, and boards over SSH (a sub-API: duotpu.board.push, .run_model, …)
    "make_app": "duotpu.board.app",
    "AppFolder": "duotpu.board.app",
    "board": "duotpu.board",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, _, attr = _LAZY[name].partition(":")
        if module == f"{__name__}.{name}":
            return import_module(module)
        return getattr(import_module(module), attr or name)
    raise AttributeError(f"module 'duotpu' has no attribute {name!r}")


try:
    __version__ = _metadata.version("duotpu")
except _metadata.PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "__version__",
    "build",
    "evaluate",
    "Recipe",
    "ModelSource",
    "InputSpec",
    "Preprocess",
    "Calibration",
    "Tolerance",
    "Deploy",
    "Mix",
    "Target",
    "DetectOptions",
    "parse_target",
    "load_recipe",
    "recipe_from_dict",
    "recipe_for_command",
    "command_line_overrides",
    "recipe_flags",
    "recipe_fields",
    "BOARDS",
    "CalibrationDataReader",
    "CalibrationData",
    "BuildResult",
    "ModelArtifact",
    "EventSink",
    "StageEvent",
    "build_many",
    "run_legacy",
    "LegacyResult",
    "Classified",
    "Detected",
    "classify_build",
    "classified_json",
    "detect_build",
    "top1_agrees",
    "board_fits",
    "fit_text",
    "Executor",
    "executor",
    "stop_children",
    "CviModelInfo",
    "read_cvimodel",
    "Inspection",
    "inspect_cvimodel",
    "latency_estimate",
    "read_labels",
    "class_name",
    "imagenet_classes",
    "list_images",
    "builtin_photo",
    "draw_detections",
    "BuiltModel",
    "open_model",
    "tensors_for",
    "infer",
    "infer_batched",
    "apply_tail",
    "top_k",
    "detect",
    "describe_outputs",
    "describe_generic",
    "save_outputs",
    "EvalResult",
    "ClassifyEval",
    "DetectEval",
    "GenericEval",
    "least_similar",
    "write_eval_report",
    "make_app",
    "AppFolder",
    "board",
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
    """Build ``recipe`` (a `Recipe` or a TOML path) into verified cvimodels.

    ``set`` changes recipe keys by their dotted names, as ``--set`` does on the command line:
    ``build("r.toml", set={"calibration.count": 20, "quantize": ["int8"]})`` (each value is
    checked against the recipe's types). Other keyword arguments are the older form of the same
    (``calibration__count=20``, ``__`` for the dots). ``events`` receives a `StageEvent` as
    each stage starts, finishes or is found in the cache. ``executor``
    (``duotpu.compiler.executor.executor(workers=N)``) builds the mixed-precision search's
    sensitivity candidates as parallel tasks. ``calibration_data``: calibrate on these
    preprocessed inputs instead of ``calibration.images`` — an iterable of NCHW float32 arrays
    (or ``{input_name: array}`` dicts, one entry per input for a model of several inputs), or
    an object with ONNX Runtime's one-method ``CalibrationDataReader`` protocol
    (``get_next()``, ``None`` when done); without a ``test_image`` the build is verified on the
    first of them (a model of tensor inputs: on a few of them). Raises a `DuoTpuError`
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
    check: int | None = None,
    layers: int = 0,
    executor: Executor | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> EvalResult:
    """Evaluate every cvimodel of a build folder (or one cvimodel) against the fp32 model on a
    folder of images — what ``duotpu eval`` prints and writes to ``report.json``: classifiers by
    agreement (and accuracy with labelled subfolders), detectors by mAP against the fp32
    detections, other models by output cosine. ``backend``: ``mlir`` (the quantized MLIR, fast;
    checked against the simulator on ``check`` images first) or ``cvimodel`` (the CV18xx
    simulator); ``margin``: fp32's top-1 lead that makes an image decisive; ``limit``: at most
    that many images; ``layers``: per-layer cosines on that many images; ``check``:
    None for the default (2); ``executor``: a `duotpu.compiler.executor` executor (Ray) to
    spread the images; ``progress(mode, done, total)`` and ``log(line)`` report as it goes.
    Returns a `ClassifyEval`,
    `DetectEval` or `GenericEval`;
    write its HTML report with ``duotpu.write_eval_report(folder, result)``."""
    from pathlib import Path

    from duotpu.eval.evaluate import FAST_PATH_CHECK, evaluate_build

    return evaluate_build(
        Path(build),
        Path(images),
        recipe=Path(recipe) if recipe else None,
        backend=backend,
        margin=margin,
        class_names=class_names,
        limit=limit,
        check=FAST_PATH_CHECK if check is None else check,
        layers=layers,
        executor=executor,
        progress=progress or _quiet,
        log=log or _quiet,
    )


def _quiet(*_: Any) -> None:
    """Reports nothing (``evaluate`` without ``progress`` / ``log``)."""
