"""The compiler layer: the only code that starts tpu_mlir (or any other) processes.

``env`` finds tpu_mlir and builds its environment (with the glibc fix); ``runner`` starts and
stops every child process (Python tools as forks of ``forkserver``, which imported what they
import once; ``forkclient`` talks to it); ``steps`` are the compiler steps (transform,
calibrate, deploy, …); ``inference`` runs models on the simulator or the fast path;
``diagnose`` turns compiler failures into advice; ``fbsgen`` generates the cvimodel reader's
code at install time. Reading cvimodel files (`duotpu.cvimodel`) and the latency estimate
(`duotpu.latency`) live below this layer.
The layers above use the names exported here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from . import diagnose
from .env import (
    TPU_MLIR_VERSION,
    cvimodel_schema,
    file_digest,
    passive_openmp,
    system_glibc_libs,
    tool_argv,
    tool_env,
    tpu_mlir_root,
    versions,
)
from .inference import fused_input_file, mlir_graph, run_cvimodel, run_many, run_tensors
from .runner import (
    ToolRun,
    check_cancelled,
    clear_cancel,
    log_tail,
    run_argv,
    run_tool,
    spawn,
    start_fork_server,
    stop_children,
)
from .steps import (
    NO_TOLERANCE,
    SELF_VALIDATED_FORMATS,
    DeployFiles,
    DeployOptions,
    ModelToolInfo,
    TransformFiles,
    calibrate,
    check_tolerance,
    compare_failures,
    deploy,
    deploy_batches,
    failed_comparison,
    fast_search,
    mlir_weight_files,
    model_tool_info,
    outputs_without_simulator,
    preprocess_args,
    tolerance_advice,
    transform,
    tuning_failure,
)

__all__ = [
    "diagnose",
    "TPU_MLIR_VERSION",
    "cvimodel_schema",
    "file_digest",
    "passive_openmp",
    "system_glibc_libs",
    "tool_argv",
    "tool_env",
    "tpu_mlir_root",
    "versions",
    "fused_input_file",
    "mlir_graph",
    "run_cvimodel",
    "run_many",
    "run_tensors",
    "ToolRun",
    "check_cancelled",
    "clear_cancel",
    "log_tail",
    "run_argv",
    "run_tool",
    "spawn",
    "start_fork_server",
    "stop_children",
    "NO_TOLERANCE",
    "SELF_VALIDATED_FORMATS",
    "DeployFiles",
    "DeployOptions",
    "ModelToolInfo",
    "TransformFiles",
    "calibrate",
    "check_tolerance",
    "compare_failures",
    "deploy",
    "deploy_batches",
    "failed_comparison",
    "fast_search",
    "mlir_weight_files",
    "model_tool_info",
    "outputs_without_simulator",
    "preprocess_args",
    "tolerance_advice",
    "transform",
    "tuning_failure",
    "code_digest",
]


def code_digest() -> str:
    """sha256 of the compiler layer's code: part of the cache key of every stage that calls the
    compiler, so a change in how a tool is called reruns the stages it affects."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
