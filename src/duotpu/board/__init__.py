"""Boards over SSH: profiles, the connection, doctor, pushing the SDK and models, running and
benchmarking models with the SDK's ``model_runner``. The CLI and the tests use the names here."""

from __future__ import annotations

from .apprun import AppPush, AppRun, push_app, run_app
from .checks import (
    Doctor,
    check_model_for_board,
    check_models,
    chip_of_soc,
    doctor,
    model_problems,
    runtime_version,
    sdk_usable,
)
from .compare import OutputComparison, compare
from .profiles import (
    DEFAULT_ION_PATH,
    PASSWORD_ENV,
    BoardProfile,
    config_dir,
    load_profiles,
    resolve_board,
    save_profile,
)
from .runner import (
    BenchResult,
    RunFolder,
    bench,
    explain_runtime_failure,
    parse_pmu,
    parse_timer,
    percentile,
    run_model,
    to_float_outputs,
)
from .ssh import Board, RemoteResult, known_hosts_file
from .sync import (
    PushReport,
    PushResult,
    push,
    push_files,
    push_model,
    remote_hashes,
    remote_model_path,
    sdk_files,
)
from .timing import calibrate, estimate_for, fitted

__all__ = [
    "AppPush",
    "AppRun",
    "push_app",
    "run_app",
    "OutputComparison",
    "compare",
    "calibrate",
    "estimate_for",
    "fitted",
    "DEFAULT_ION_PATH",
    "PASSWORD_ENV",
    "BoardProfile",
    "config_dir",
    "load_profiles",
    "save_profile",
    "resolve_board",
    "known_hosts_file",
    "RemoteResult",
    "Board",
    "Doctor",
    "chip_of_soc",
    "runtime_version",
    "doctor",
    "sdk_usable",
    "check_model_for_board",
    "check_models",
    "model_problems",
    "PushReport",
    "push",
    "remote_hashes",
    "PushResult",
    "push_files",
    "sdk_files",
    "remote_model_path",
    "push_model",
    "explain_runtime_failure",
    "BenchResult",
    "parse_timer",
    "parse_pmu",
    "percentile",
    "RunFolder",
    "to_float_outputs",
    "run_model",
    "bench",
]
