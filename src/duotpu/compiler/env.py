"""tpu_mlir's environment: where it is installed, the environment its tools need (with the glibc
fix), the versions that shape compiled output, and file digests for cache keys.

The glibc trap: the wheel ships Ubuntu 22.04's ``libc.so.6``/``libm.so.6``/``libpthread.so.0`` in
``lib/third_party``, which it puts on LD_LIBRARY_PATH (and its binaries carry a RUNPATH to it). On a
newer system that loads a libc older than the system's own libraries need (``GLIBC_2.36 not
found``) or mixes two libcs (``stack smashing detected``). We start every tool with the system's
own three libraries in LD_PRELOAD, so the loader never picks the bundled ones. Nothing inside
site-packages is edited; the fix is idempotent because it is computed afresh for every process.
Nothing here imports ``tpu_mlir`` into the calling process: its ``__init__`` rewrites
``os.environ`` (PATH, LD_LIBRARY_PATH...) of whoever imports it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Sequence

from duotpu.config.errors import SetupError

TPU_MLIR_VERSION = "1.30.2"
_GLIBC_LIBS = ("libc.so.6", "libm.so.6", "libpthread.so.0")
#: OpenMP's idle threads sleep instead of spinning on a core another process needs
OMP_WAIT_POLICY = "PASSIVE"


def passive_openmp() -> None:
    """Let the OpenMP runtimes this process loads later (torch's, for an export) put idle
    threads to sleep: a spinning thread took the core the fork server imported on, and the
    export took twice as long (NOTES.md, session 30). The user's own setting wins; a runtime
    already loaded keeps what it read."""
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)


# --------------------------------------------------------------------------------------------
# Locating the toolchain and building its environment
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def tpu_mlir_root() -> Path:
    """The installed ``tpu_mlir`` package folder (TPUC_ROOT), without importing it."""
    spec = importlib.util.find_spec("tpu_mlir")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(
            "The compiler package tpu_mlir is not installed in this Python "
            f"({sys.executable}). Run `make install` in the duotpu checkout (it creates .venv with "
            f"Python 3.10 and tpu_mlir=={TPU_MLIR_VERSION}) and use .venv/bin/duotpu."
        )
    return Path(list(spec.submodule_search_locations)[0])


def system_glibc_libs() -> list[str]:
    """Paths of the system's libc/libm/libpthread, as loaded into this very process."""
    libdir = None
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split()[-1] if line.split() else ""
            if path.endswith("/libc.so.6") and "tpu_mlir" not in path:
                libdir = Path(path).parent
                break
    except OSError:
        pass
    candidates = [libdir] if libdir else []
    candidates += [
        Path("/lib/x86_64-linux-gnu"),
        Path("/usr/lib/x86_64-linux-gnu"),
        Path("/lib/aarch64-linux-gnu"),
        Path("/lib64"),
        Path("/usr/lib64"),
    ]
    for d in candidates:
        if d and all((d / name).exists() for name in _GLIBC_LIBS):
            return [str(d / name) for name in _GLIBC_LIBS]
    raise SetupError(
        "Could not find the system's libc.so.6, libm.so.6 and libpthread.so.0, "
        "which duotpu preloads so that tpu_mlir's bundled glibc is not used."
    )


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a tpu_mlir child process: what ``import tpu_mlir`` would set, plus the
    system glibc in LD_PRELOAD (see the module docstring)."""
    root = tpu_mlir_root()
    env = dict(os.environ)

    def join(parts: list[str]) -> str:
        # an empty entry would mean the working folder; several entries may hold many folders
        out: list[str] = []
        for part in parts:
            out += [p for p in part.split(os.pathsep) if p and p not in out]
        return os.pathsep.join(out)

    # importing cv2 in this process prepends its own folder to our LD_LIBRARY_PATH: that is for
    # this process, and it would make the tools' environment depend on what duotpu imported
    inherited = [
        p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if "/cv2/" not in p + "/"
    ]
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = join(
        [
            str(root / "bin"),
            str(root / "python/tools"),
            str(root / "python/utils"),
            str(root / "python/test"),
            str(root / "python/samples"),
            venv_bin,
            env.get("PATH", ""),
        ]
    )
    env["PYTHONPATH"] = join(
        [
            str(root),
            str(root / "python"),
            str(root / "regression"),
            str(root / "customlayer/python"),
            env.get("PYTHONPATH", ""),
        ]
    )
    env["LD_LIBRARY_PATH"] = join(
        [
            str(root / "lib"),
            str(root / "lib/capi"),
            str(root / "lib/third_party"),
            *inherited,
        ]
    )
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p]
    for lib in system_glibc_libs():
        if lib not in preload:
            preload.append(lib)
    env["LD_PRELOAD"] = " ".join(preload)
    env["TPUC_ROOT"] = str(root)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
    # idle OpenMP threads sleep instead of spinning: on 2 cores, calibration's second thread
    # spun against the BF16 branch beside it (bench/build.py, NOTES: session 30)
    env.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONHOME", None)
    if extra:
        env.update(extra)
    return env


# Tools by kind: Python scripts run with this interpreter, binaries run directly.
_PY_TOOLS = {"model_transform", "run_calibration", "model_deploy", "model_runner", "npz_tool"}
_BIN_TOOLS = {"model_tool", "tpuc-opt", "cvimodel_debug"}


def tool_argv(tool: str, args: Sequence[str]) -> list[str]:
    """Command line of a tpu_mlir tool (``model_transform``, ``model_tool``...)."""
    root = tpu_mlir_root()
    if tool in _PY_TOOLS:
        return [sys.executable, str(root / "python/tools" / f"{tool}.py"), *map(str, args)]
    if tool in _BIN_TOOLS:
        return [str(root / "bin" / tool), *map(str, args)]
    raise ValueError(f"unknown tpu_mlir tool {tool!r}")


# the tools whose own imports take seconds (transformers, torch, sklearn through the ONNX front
# end and the calibrator): worth starting or waiting for the fork server
_SLOW_TO_START = {"model_transform", "run_calibration", "model_deploy"}


def slow_to_start(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs one of tpu_mlir's tools that spend seconds importing."""
    return len(argv) > 1 and Path(argv[1]).stem in _SLOW_TO_START and argv[1].endswith(".py")


def preload_scripts() -> list[Path]:
    """tpu_mlir's Python tools whose top-level imports the fork server loads once."""
    root = tpu_mlir_root()
    return [root / "python/tools" / f"{tool}.py" for tool in sorted(_PY_TOOLS)]


def preload_modules() -> list[str]:
    """Modules the tools (and duotpu's worker) import inside their functions, loaded by the fork
    server too: the ONNX front end (onnxruntime_extensions imports transformers, torch and
    sklearn: 1.6 s) and the simulator's bindings."""
    return ["transform.OnnxConverter", "tpu_mlir.python.utils.lowering"]


def cvimodel_schema() -> Path:
    """The flatbuffers schema of the cvimodel format, as shipped in tpu_mlir."""
    path = tpu_mlir_root() / "include/tpu_mlir/Builder/CV18xx/proto/cvimodel.fbs"
    if not path.exists():
        raise SetupError(
            f"tpu_mlir's cvimodel schema is missing ({path}); reinstall tpu_mlir "
            f"{TPU_MLIR_VERSION} with `make install`."
        )
    return path


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of duotpu and of the tools that shape the compiled output (part of every
    cache key)."""
    from importlib import metadata

    required = ("duotpu", "tpu_mlir", "torch", "onnx", "onnxruntime", "onnxsim")
    # the model libraries whose code builds a source (timm:, ultralytics:), when installed
    optional = ("timm", "ultralytics", "torchvision")
    out = {}
    for dist in required + optional:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            if dist in required:
                out[dist] = "missing"
    return out


def file_digest(path: Path) -> str:
    """sha256 of a file, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
