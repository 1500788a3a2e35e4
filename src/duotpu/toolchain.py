"""The only module that knows how tpu_mlir is invoked: processes, environment, file names.

Every compiler call goes through :func:`run_tool`, which starts the tool as a child process with
:func:`tool_env`, writes its output to a log file and raises :class:`ToolchainError` with the log's
tail when it fails. Nothing here imports ``tpu_mlir`` into the calling process: its ``__init__``
rewrites ``os.environ`` (PATH, LD_LIBRARY_PATH...) of whoever imports it.

The glibc trap: the wheel ships Ubuntu 22.04's ``libc.so.6``/``libm.so.6``/``libpthread.so.0`` in
``lib/third_party``, which it puts on LD_LIBRARY_PATH (and its binaries carry a RUNPATH to it). On a
newer system that loads a libc older than the system's own libraries need (``GLIBC_2.36 not
found``) or mixes two libcs (``stack smashing detected``). We start every tool with the system's
own three libraries in LD_PRELOAD, so the loader never picks the bundled ones. Nothing inside
site-packages is edited; the fix is idempotent because it is computed afresh for every process.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Sequence

from .errors import (Interrupted, Mismatch, ModelError, SetupError, ToleranceError,
                     ToolchainError)
from .recipe import Preprocess

TPU_MLIR_VERSION = "1.30.2"
_GLIBC_LIBS = ("libc.so.6", "libm.so.6", "libpthread.so.0")


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
            f"Python 3.10 and tpu_mlir=={TPU_MLIR_VERSION}) and use .venv/bin/duotpu.")
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
    candidates += [Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu"),
                   Path("/lib/aarch64-linux-gnu"), Path("/lib64"), Path("/usr/lib64")]
    for d in candidates:
        if d and all((d / name).exists() for name in _GLIBC_LIBS):
            return [str(d / name) for name in _GLIBC_LIBS]
    raise SetupError("Could not find the system's libc.so.6, libm.so.6 and libpthread.so.0, "
                     "which duotpu preloads so that tpu_mlir's bundled glibc is not used.")


def tool_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a tpu_mlir child process: what ``import tpu_mlir`` would set, plus the
    system glibc in LD_PRELOAD (see the module docstring)."""
    root = tpu_mlir_root()
    env = dict(os.environ)
    join = os.pathsep.join
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = join([str(root / "bin"), str(root / "python/tools"), str(root / "python/utils"),
                        str(root / "python/test"), str(root / "python/samples"), venv_bin,
                        env.get("PATH", "")])
    env["PYTHONPATH"] = join([str(root), str(root / "python"), str(root / "regression"),
                              str(root / "customlayer/python"), env.get("PYTHONPATH", "")])
    env["LD_LIBRARY_PATH"] = join([str(root / "lib"), str(root / "lib/capi"),
                                   str(root / "lib/third_party"), env.get("LD_LIBRARY_PATH", "")])
    preload = [p for p in env.get("LD_PRELOAD", "").split() if p]
    for lib in system_glibc_libs():
        if lib not in preload:
            preload.append(lib)
    env["LD_PRELOAD"] = " ".join(preload)
    env["TPUC_ROOT"] = str(root)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 2))
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


# --------------------------------------------------------------------------------------------
# Running a tool
# --------------------------------------------------------------------------------------------
def log_tail(log_path: Path, lines: int = 25) -> str:
    """The last lines of a log, with progress-bar carriage returns folded away."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines():
        line = line.rsplit("\r", 1)[-1].rstrip()
        if line:
            out.append(line)
    return "\n".join(out[-lines:])


def _diagnose(step: str, log_text: str) -> str:
    """A plain-words hint for failures we recognise in a tool's log."""
    if "GLIBC_" in log_text and "not found" in log_text or "stack smashing" in log_text:
        return ("The compiler loaded tpu_mlir's bundled glibc instead of the system's: "
                "LD_PRELOAD of the system libc was lost. Run the tool through duotpu.")
    m = re.search(r"(?:not support|unsupported|Unsupported|not supported)[^\n]*?op[^\n]*", log_text)
    m = m or re.search(r"[^\n]*(?:op_type|OpType|operator)[^\n]*not (?:support|implement)[^\n]*",
                       log_text)
    if m:
        return f"The compiler rejected an operator: {m.group(0).strip()}."
    return ""


_COMPARE_FAIL = re.compile(
    r"\[(?P<name>[^\]]+?)\s*\]\s+NOT_\w+\s+\[FAILED\].*?cosine_similarity\s*=\s*(?P<cos>[-\d.e]+)"
    r"\s+euclidean_similarity\s*=\s*(?P<euc>[-\d.e]+)", re.S)
_COMPARE_FILES = re.compile(r"Target\s+(\S+)\s+Reference\s+(\S+)\s+npz compare FAILED")


def compare_failures(log_path: Path, tolerance: tuple[float, float]) -> list[Mismatch]:
    """Tensors a failed ``npz_tool compare`` in a tool's log reports below ``tolerance``."""
    text = "\n".join(ln.rsplit("\r", 1)[-1] for ln in
                     Path(log_path).read_text(errors="replace").splitlines())
    if "npz compare FAILED" not in text:
        return []
    out = []
    for m in _COMPARE_FAIL.finditer(text):
        cos, euc = float(m.group("cos")), float(m.group("euc"))
        if cos < tolerance[0]:
            out.append(Mismatch(m.group("name").strip(), "cosine", cos, tolerance[0]))
        if euc < tolerance[1]:
            out.append(Mismatch(m.group("name").strip(), "euclidean similarity", euc,
                                tolerance[1]))
    return out


def failed_comparison(log_path: Path) -> tuple[str, str] | None:
    """(target, reference) file names of the failed comparison in a tool's log, if any."""
    text = Path(log_path).read_text(errors="replace")
    m = _COMPARE_FILES.search(text)
    return (m.group(1), m.group(2)) if m else None


# --------------------------------------------------------------------------------------------
# Child processes: every one is started by :func:`spawn`, in its own process group, and known
# here, so that a signal to duotpu alone (a supervisor, `timeout`, `kill PID`) stops them all.
# --------------------------------------------------------------------------------------------
_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()
_cancelled = threading.Event()
_cancel_signal = [signal.SIGINT]


def spawn(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
          stdout: IO[Any] | int | None = None, stderr: IO[Any] | int | None = None,
          background: bool = False, text: bool = False) -> subprocess.Popen:
    """Start a child process in its own process group, registered for :func:`stop_children`.
    Refuses (raises :class:`Interrupted`) once the run was cancelled, so no stage starts after
    Ctrl-C or SIGTERM. ``background`` runs it at a lower CPU priority (``nice 10``)."""
    if _cancelled.is_set():
        raise Interrupted(_cancel_signal[0])
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=stdout, stderr=stderr,
                            stdin=subprocess.DEVNULL, start_new_session=True, text=text,
                            preexec_fn=(lambda: os.nice(10)) if background else None)
    with _children_lock:
        _children[proc.pid] = proc
    if _cancelled.is_set():  # cancelled while it started
        _kill_group(proc, signal.SIGKILL)
    return proc


def finish(proc: subprocess.Popen, timeout: float | None = None) -> int:
    """Wait for a child from :func:`spawn`; kill its whole group if the wait is interrupted
    (Ctrl-C in this thread) or times out (returns -9 then). Raises :class:`Interrupted` when the
    run was cancelled while it ran."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        rc = -9
    except BaseException:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        with _children_lock:
            _children.pop(proc.pid, None)
    if _cancelled.is_set():
        raise Interrupted(_cancel_signal[0])
    return rc


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_children(signum: int = signal.SIGINT, grace: float = 1.0) -> None:
    """Cancel the run: no new child starts, every running one (and its own children) gets
    SIGTERM, then SIGKILL after ``grace`` seconds. Safe to call from a signal handler."""
    _cancel_signal[0] = signum
    _cancelled.set()
    with _children_lock:
        procs = list(_children.values())
    for p in procs:
        _kill_group(p, signal.SIGTERM)

    def reap() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGKILL)
    if procs:
        threading.Thread(target=reap, daemon=True).start()


def clear_cancel() -> None:
    """Allow children again (a new run after a cancelled one in the same Python process)."""
    _cancelled.clear()


def live_children() -> int:
    """How many children from :func:`spawn` are running."""
    with _children_lock:
        return sum(p.poll() is None for p in _children.values())


@dataclass
class ToolRun:
    """What one finished tool call left behind."""
    step: str
    argv: list[str]
    log_path: Path
    seconds: float


def run_tool(step: str, tool: str, args: Sequence[str], cwd: Path, log_path: Path,
             env_extra: dict[str, str] | None = None, timeout: float | None = None,
             background: bool = False) -> ToolRun:
    """Run one tpu_mlir tool in ``cwd`` with its output in ``log_path``.

    ``background`` runs it at a lower CPU priority (``nice 10``), for work off the critical path
    of a build (``deploy`` also gives such a run one OpenMP thread). Raises
    :class:`ToolchainError` (with the tail of the log) when the tool exits non-zero.
    """
    return run_argv(step, tool_argv(tool, args), cwd, log_path, tool_env(env_extra), timeout,
                    background)


def run_argv(step: str, argv: list[str], cwd: Path, log_path: Path, env: dict[str, str],
             timeout: float | None = None, background: bool = False,
             append: bool = False) -> ToolRun:
    """Run a command line in tpu_mlir's environment ``env`` with its output in ``log_path``
    (first line: the command; ``append`` keeps what the log held); :class:`ToolchainError`
    when it fails."""
    cwd, log_path = Path(cwd), Path(log_path)
    cwd.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "a" if append else "w") as log:
        log.write("$ (cd " + str(cwd) + " && " + " ".join(_quote(a) for a in argv) + ")\n")
        log.flush()
        rc = finish(spawn(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                          background=background), timeout)
        if rc == -9 and timeout is not None:
            log.write(f"\n[duotpu] {Path(argv[0]).name} timed out after {timeout} s\n")
    seconds = time.monotonic() - t0
    if rc != 0:
        text = log_path.read_text(errors="replace")
        raise ToolchainError(step, argv, rc, log_path, log_tail(log_path), _diagnose(step, text))
    return ToolRun(step, argv, log_path, seconds)


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./\[\]-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


# --------------------------------------------------------------------------------------------
# The compiler steps. File names are tpu_mlir's, derived from the model name.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformFiles:
    """Files model_transform leaves in its folder for model ``name``."""
    folder: Path
    name: str

    @property
    def mlir(self) -> Path: return self.folder / f"{self.name}.mlir"
    @property
    def weights(self) -> Path: return self.folder / f"{self.name}_top_f32_all_weight.npz"
    @property
    def test_input(self) -> Path: return self.folder / f"{self.name}_in_f32.npz"
    @property
    def top_outputs(self) -> Path: return self.folder / f"{self.name}_top_outputs.npz"


def preprocess_args(pre: Preprocess, shape: tuple[int, ...]) -> list[str]:
    """model_transform's preprocessing flags for a recipe's preprocessing."""
    from .preprocess import resize_dims, tpu_mean_scale
    mean, scale = tpu_mean_scale(pre, shape[1])
    h, w = resize_dims(pre, shape)
    args = ["--resize_dims", f"{h},{w}", "--mean", mean, "--scale", scale,
            "--pixel_format", pre.pixel_format]
    if pre.resize_mode == "short_side":
        args += ["--keep_aspect_ratio", "--keep_ratio_mode", "short_side_scale"]
    elif pre.resize_mode == "letterbox":
        args += ["--keep_aspect_ratio", "--keep_ratio_mode", "letterbox", "--pad_value",
                 str(pre.pad_value)]
    return args


def transform(name: str, onnx_path: Path, input_shapes: list[list[int]], folder: Path,
              log_path: Path, *, preprocess: Preprocess, test_input: Path | None,
              tolerance: tuple[float, float], excepts: list[str] = (),
              output_names: list[str] = ()) -> TransformFiles:
    """``model_transform``: ONNX → fp32 top MLIR, with preprocessing and, given a test input,
    a per-layer similarity check against the ONNX model at ``tolerance`` (cos, euclid)."""
    files = TransformFiles(Path(folder), name)
    shapes = "[" + ",".join("[" + ",".join(map(str, s)) + "]" for s in input_shapes) + "]"
    args = ["--model_name", name, "--model_def", str(Path(onnx_path).resolve()),
            "--input_shapes", shapes, *preprocess_args(preprocess, tuple(input_shapes[0])),
            "--mlir", files.mlir.name]
    if output_names:
        args += ["--output_names", ",".join(output_names)]
    if test_input is not None:
        args += ["--test_input", str(Path(test_input).resolve()),
                 "--test_result", files.top_outputs.name,
                 "--tolerance", f"{tolerance[0]},{tolerance[1]}"]
        if excepts:
            args += ["--excepts", ",".join(excepts)]
    try:
        run_tool("transform", "model_transform", args, folder, log_path)
    except ToolchainError as err:
        ops = [m for m in re.findall(r"Op not support:\s*\{([^}]*)\}",
                                     log_path.read_text(errors="replace")) if m.strip()]
        if ops:
            raise _unsupported_ops(onnx_path, ops[-1], log_path) from err
        bad = compare_failures(log_path, tolerance)
        if bad:
            raise ToleranceError(
                "the fp32 MLIR against the ONNX model (model_transform)", bad,
                f"The compiler's fp32 translation differs from the ONNX model; lower "
                f"tolerance.transform only if you accept that, or exclude the tensor with "
                f"excepts. Log: {log_path}", log_path) from None
        raise
    return files


def _unsupported_ops(onnx_path: Path, ops_text: str, log_path: Path) -> ModelError:
    import onnx
    ops = [o.strip().strip("'\"") for o in ops_text.split(",") if o.strip()]
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    layers = [f"{n.name or '(unnamed)'} ({n.op_type})" for n in graph.node if n.op_type in ops]
    return ModelError(
        f"The compiler (tpu_mlir) does not support the ONNX operator(s) {', '.join(ops)}, used "
        f"by layer(s) {', '.join(layers[:8])}{' …' if len(layers) > 8 else ''}. Replace them in "
        f"the model (or cut the graph before them and do that part on the CPU). Log: {log_path}")


def fast_search(transformed: "TransformFiles", dataset: Path, count: int, folder: Path, *,
                chip: str, expected_cos: float, inference_num: int = 10) -> list[str]:
    """tpu_mlir's own mixed-precision search (``run_calibration --search fast_search``):
    the layers it keeps in float to reach ``expected_cos`` at the outputs. Runs on copies of the
    transform outputs (the search writes next to the MLIR)."""
    import shutil
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for src in (transformed.mlir, transformed.weights):
        shutil.copyfile(src, folder / src.name)
    args = [transformed.mlir.name, "--dataset", str(Path(dataset).resolve()), "--input_num",
            str(count), "--search", "fast_search", "--chip", chip, "--expected_cos",
            str(expected_cos), "--inference_num", str(inference_num), "-o",
            str((folder / "fast_search_cali").resolve()), "--quantize_table",
            str((folder / "fast_search.qtable").resolve())]
    run_tool("fast_search", "run_calibration", args, folder, folder / "fast_search.log")
    out = []
    for line in (folder / "fast_search.qtable").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.split()[0])
    return out


def calibrate(mlir: Path, dataset: Path, count: int, table: Path, log_path: Path, *,
              method: str = "kl", histogram_bins: int = 2048, tune_num: int = 5) -> Path:
    """``run_calibration``: INT8 calibration table from a folder of images."""
    mlir = Path(mlir)
    args = [mlir.name, "--dataset", str(Path(dataset).resolve()), "--input_num", str(count),
            "--cali_method", method, "--histogram_bin_num", str(histogram_bins),
            "--tune_num", str(tune_num), "-o", str(Path(table).resolve())]
    run_tool("calibrate", "run_calibration", args, mlir.parent, log_path)
    return Path(table)


@dataclass(frozen=True)
class DeployFiles:
    """Files model_deploy leaves in its folder (with --debug, nothing is cleaned up)."""
    folder: Path
    name: str
    quantize: str
    chip: str
    cvimodel: Path

    @property
    def _prefix(self) -> str:
        q = self.quantize.lower()
        return f"{self.name}_{self.chip}_{q}" + ("_sym" if q == "int8" else "")
    @property
    def tpu_outputs(self) -> Path: return self.folder / f"{self._prefix}_tpu_outputs.npz"
    @property
    def model_outputs(self) -> Path: return self.folder / f"{self._prefix}_model_outputs.npz"
    @property
    def tpu_mlir(self) -> Path: return self.folder / f"{self._prefix}_tpu.mlir"


#: Fused-preprocess formats tpu_mlir 1.30.2 cannot validate itself: they imply VPSS-aligned
#: input rows, and its interpreter's Csc op rejects the aligned input its own preprocessing makes
#: ("wrong shape size", abort); aligned RGB inputs hit a floating point exception on some sizes.
SELF_VALIDATED_FORMATS = ("YUV420_PLANAR", "YUV_NV21", "YUV_NV12")


@dataclass(frozen=True)
class DeployOptions:
    """Everything model_deploy takes that comes from the recipe, for one quantize mode.
    Built in exactly one place (:func:`duotpu.pipeline.deploy_options`) for every caller: the
    deploy stage, the mixed-precision candidates and the old command lines."""
    quantize: str
    chip: str
    tolerance: tuple[float, ...]
    correctness: tuple[float, ...]
    excepts: tuple[str, ...] = ()
    fuse_preprocess: str = ""
    aligned_input: bool = False
    test_image: Path | None = None
    model_version: str = ""
    inputs_type: str = "AUTO"
    outputs_type: str = "AUTO"

    @property
    def self_checked(self) -> bool:
        """tpu_mlir cannot validate aligned / YUV inputs (SELF_VALIDATED_FORMATS): such models
        are built without its check and run on the simulator with the raw test input by
        :func:`deploy` itself."""
        return self.aligned_input or self.fuse_preprocess in SELF_VALIDATED_FORMATS

    def flags(self) -> list[str]:
        """model_deploy flags for the format version and quantized inputs / outputs."""
        args = ["--model_version", self.model_version] if self.model_version else []
        if self.inputs_type in ("INT8", "BF16"):
            args += ["--quant_input"]
        if self.outputs_type in ("INT8", "BF16"):
            same = (self.outputs_type == "INT8") == (self.quantize.lower() == "int8")
            args += ["--quant_output" if same else
                     f"--quant_output_{self.outputs_type.lower()}"]
        return args


def deploy(transformed: TransformFiles, folder: Path, log_path: Path, opts: DeployOptions, *,
           cvimodel_name: str, calibration_table: Path | None = None,
           quantize_table: Path | None = None, background: bool = False,
           mlir_name: str | None = None, test_input: Path | None = None,
           test_reference: Path | None = None, merge_weight: bool = False,
           copy_inputs: bool = True) -> DeployFiles:
    """``model_deploy``: top MLIR → cvimodel for ``opts.chip``, validated on the test input: the
    quantized MLIR against the fp32 outputs (``opts.tolerance``) and the cvimodel on the CV18xx
    simulator against the quantized MLIR (``opts.correctness``).

    model_deploy must run where ``<name>_top_f32_all_weight.npz`` is (the MLIR names it by a
    relative path) and its intermediate files are named after the model, so every variant gets
    its own ``folder`` with copies of the transform outputs.
    """
    import shutil
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    quantize, tolerance, correctness = opts.quantize, opts.tolerance, opts.correctness
    # Copies, not links: model_deploy rewrites <name>_in_f32.npz in its folder, and two deploys
    # run at once; a shared file would be read half-written by the other.
    if copy_inputs:
        for src in (transformed.mlir, transformed.weights, transformed.test_input,
                    transformed.top_outputs):
            dst = folder / src.name
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            shutil.copyfile(src, dst)
    files = DeployFiles(folder, transformed.name, quantize, opts.chip, folder / cvimodel_name)
    self_check = opts.self_checked
    args = ["--mlir", mlir_name or transformed.mlir.name, "--quantize", quantize.upper(),
            "--chip", opts.chip, "--model", cvimodel_name, "--debug"]
    if not self_check:
        if opts.fuse_preprocess:  # model_deploy then wants the test image itself
            test = str(Path(opts.test_image or "").resolve())
        else:
            test = str(test_input) if test_input else transformed.test_input.name
        args += ["--test_input", test,
                 "--test_reference", str(test_reference or transformed.top_outputs.name),
                 "--tolerance", f"{tolerance[0]},{tolerance[1]}",
                 "--correctness", f"{correctness[0]},{correctness[1]}"]
    if opts.fuse_preprocess:
        args += ["--fuse_preprocess", "--customization_format", opts.fuse_preprocess]
    if opts.aligned_input:
        args += ["--aligned_input"]
    if merge_weight:
        args += ["--merge_weight"]
    args += opts.flags()
    if calibration_table is not None:
        args += ["--calibration_table", str(Path(calibration_table).resolve())]
    if quantize_table is not None:
        args += ["--quantize_table", str(Path(quantize_table).resolve())]
    if opts.excepts and not self_check:
        args += ["--excepts", ",".join(opts.excepts)]
    try:
        run_tool(f"deploy {quantize.lower()}", "model_deploy", args, folder, log_path,
                 env_extra={"OMP_NUM_THREADS": "1"} if background else None,
                 background=background)
    except ToolchainError:
        pair = failed_comparison(log_path) or ("", "")
        if "_model_outputs" in pair[0]:
            bad = compare_failures(log_path, correctness)
            what = (f"the {quantize.upper()} cvimodel on the simulator against the quantized "
                    "MLIR (model_deploy --correctness)")
            advice = "The simulator and the quantized MLIR disagree: this points to a compiler " \
                     "problem; try another tpu_mlir version or report it to Sophgo."
        else:
            bad = compare_failures(log_path, tolerance)
            what = f"the {quantize.upper()} model against fp32 (model_deploy --tolerance)"
            advice = tolerance_advice(quantize, f"tolerance.{quantize.lower()}")
        if bad:
            raise ToleranceError(what, bad, advice + f" Log: {log_path}", log_path) from None
        raise
    if self_check:
        raw = fused_input_file(transformed.mlir, Path(opts.test_image or ""),
                               opts.fuse_preprocess, True, opts.chip,
                               folder / f"{files.name}_in_raw.npz", log_path)
        run_cvimodel(files.cvimodel, raw, files.model_outputs, log_path.with_name("simulate.log"))
    return files


def tolerance_advice(mode: str, key: str) -> str:
    """What to do when a ``mode`` model is less similar to fp32 than ``key`` requires. Only
    INT8 depends on calibration; BF16 does not."""
    if mode.lower() == "int8":
        return ("Try more or more typical calibration images (calibration.images / "
                "calibration.count), another calibration.method, mixed precision (--target) "
                f"or BF16; or lower {key} if the accuracy is acceptable.")
    return ("BF16 keeps 8 bits of mantissa and needs no calibration, so calibration settings "
            "cannot change this. Look for layers with a very large dynamic range or values "
            "that cancel (a large sum followed by a subtraction, a LayerNorm over wide "
            f"values); leave such tensors out of the comparison with excepts, or lower {key} "
            "if the accuracy is acceptable.")


def fused_input_file(top_mlir: Path, image: Path, fmt: str, aligned: bool, chip: str,
                     out: Path, log_path: Path) -> Path:
    """The raw input of a fused-preprocess model for ``image`` (an npz), made by tpu_mlir's own
    preprocessing from the settings stored in the top MLIR: resize and crop, then ``fmt``
    (YUV420_PLANAR, YUV_NV21, … included), rows aligned as the VPSS delivers them if
    ``aligned``."""
    cmd, env = _worker(["--backend", "mlir", "--model", str(Path(top_mlir).resolve()),
                        "--fused-input", str(Path(image).resolve()), fmt,
                        "1" if aligned else "0", chip, str(Path(out).resolve())])
    with open(log_path, "a") as log:
        log.write(f"\n[duotpu] raw {fmt} input for {image} by tpu_mlir's preprocessing\n")
    run_argv(f"make the {fmt} input", cmd, Path(out).parent, log_path, env, append=True)
    return Path(out)


def deploy_batches(transformed: TransformFiles, onnx_path: Path, input_shape: tuple[int, ...],
                   preprocess: Preprocess, batch_sizes: tuple[int, ...], folder: Path,
                   opts: DeployOptions, *, cvimodel_name: str,
                   transform_tolerance: tuple[float, ...], **deploy_kw: Any) -> DeployFiles:
    """One cvimodel with a program per batch size, sharing one copy of the weights.

    Each extra batch size gets its own fp32 MLIR (``model_transform`` of the dynamic-batch ONNX,
    validated on the test input repeated to that batch); all variants are deployed in one folder
    with ``--merge_weight`` (batch 1 last, so the folder's debug files are batch 1's), then joined
    by ``model_tool --combine`` in the order of ``batch_sizes``.
    """
    import shutil
    import numpy as np
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = transformed.name
    quantize, chip = opts.quantize, opts.chip
    mlirs = {1: transformed}
    for b in sorted(x for x in batch_sizes if x != 1):
        sub = folder / f"transform-bs{b}"
        sub.mkdir(exist_ok=True)
        with np.load(transformed.test_input) as z:
            np.savez(sub / f"{name}_bs{b}_in_f32.npz", **{k: np.repeat(z[k], b, axis=0)
                                                         for k in z.files})
        mlirs[b] = transform(name, onnx_path, [[b, *input_shape[1:]]], sub,
                             folder / f"transform-bs{b}.log", preprocess=preprocess,
                             test_input=sub / f"{name}_bs{b}_in_f32.npz",
                             tolerance=transform_tolerance)
    for src in (transformed.weights, transformed.test_input, transformed.top_outputs):
        shutil.copyfile(src, folder / src.name)
    parts = {}
    for b in sorted(batch_sizes, reverse=True):  # batch 1 last
        t = mlirs[b]
        shutil.copyfile(t.mlir, folder / f"{name}_bs{b}.mlir")
        part = f"{name}_{chip}_{quantize.lower()}_bs{b}.cvimodel"
        # model_deploy rewrites <name>_in_f32.npz in its folder with each variant's input, so
        # every variant reads its test input and reference from its own transform folder.
        extra = {"test_input": t.test_input.resolve(), "test_reference": t.top_outputs.resolve()}
        deploy(transformed, folder, folder / f"deploy-bs{b}.log", opts, cvimodel_name=part, mlir_name=f"{name}_bs{b}.mlir", merge_weight=True,
               copy_inputs=False, **extra, **deploy_kw)
        parts[b] = part
    combine = [parts[b] for b in batch_sizes] + ["-o", cvimodel_name]
    run_tool("model_tool --combine", "model_tool", ["--combine", *combine], folder,
             folder / "combine.log")
    return DeployFiles(folder, name, quantize, chip, folder / cvimodel_name)


def mlir_weight_files(mlir: Path) -> list[Path]:
    """The weight files an MLIR file names (``module.weight_file``), beside it."""
    head = Path(mlir).read_text(errors="replace")[:20000]
    return [Path(mlir).parent / m for m in re.findall(r'module\.weight_file\s*=\s*"([^"]+)"', head)]


def run_cvimodel(cvimodel: Path, inputs_npz: Path, outputs_npz: Path, log_path: Path) -> Path:
    """Run a cvimodel on the CV18xx cmodel simulator (``model_runner``)."""
    args = ["--model", str(Path(cvimodel).resolve()), "--input", str(Path(inputs_npz).resolve()),
            "--output", str(Path(outputs_npz).resolve())]
    run_tool("simulate", "model_runner", args, Path(outputs_npz).parent, log_path)
    return Path(outputs_npz)


def _worker(args: list[str], env_extra: dict[str, str] | None = None) -> \
        tuple[list[str], dict[str, str]]:
    """Command line and environment of duotpu's worker inside tpu_mlir's environment."""
    env = tool_env(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env["PYTHONPATH"]])
    return [sys.executable, "-m", "duotpu._tpu_worker", *args], env


def run_many(backend: str, model: Path, jobs: list[tuple[Path, Path]], folder: Path,
             output_names: list[str], workers: int = 1,
             progress: "callable | None" = None, program: int = 0) -> list[Path]:
    """Run many input npz files through one model, in ``workers`` parallel processes.

    ``backend``: ``cvimodel`` (the CV18xx simulator) or ``mlir`` (tpu_mlir's interpreter on a
    quantized ``*_tpu.mlir``, run in that file's folder since it names its weights relatively).
    Each job is (input npz, output npz); outputs keep only ``output_names``. ``progress(n)`` is
    called with the number of finished jobs.
    """
    import math
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers, len(jobs)))
    per = math.ceil(len(jobs) / workers) if jobs else 0
    procs = []
    model = Path(model).resolve()
    cwd = model.parent
    for w in range(workers):
        chunk = jobs[w * per:(w + 1) * per]
        if not chunk:
            continue
        jobfile = folder / f"jobs-{program}-{w}.txt"
        jobfile.write_text("".join(f"{Path(a).resolve()}\t{Path(b).resolve()}\n"
                                   for a, b in chunk))
        log = folder / f"{backend}-{program}-worker-{w}.log"
        argv, env = _worker(["--backend", backend, "--model", str(model), "--jobs",
                             str(jobfile), "--outputs", ",".join(output_names),
                             "--program", str(program)],
                            {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // workers))})
        fh = open(log, "w")
        procs.append((spawn(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT),
                      fh, log, argv))
    outs = [Path(b) for _, b in jobs]
    codes = []
    try:
        while any(p.poll() is None for p, *_ in procs):
            if progress:
                progress(sum(o.exists() for o in outs))
            time.sleep(0.2)
    finally:
        for p, fh, *_ in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGKILL)
            codes.append(finish(p))
            fh.close()
    if progress:
        progress(sum(o.exists() for o in outs))
    for rc, (_, _, log, argv) in zip(codes, procs):
        if rc:
            raise ToolchainError(f"{backend} inference", argv, rc, log, log_tail(log))
    return outs


def mlir_graph(mlir: Path, log_path: Path) -> dict[str, dict]:
    """The ops of an MLIR file with their types and input ops (tpu_mlir's MlirParser)."""
    import json
    argv, env = _worker(["--backend", "mlir", "--model", str(Path(mlir).resolve()), "--graph"])
    out = Path(log_path).with_name(Path(log_path).name + ".json")
    run_argv("read the MLIR graph", [*argv, "--graph-out", str(out.resolve())],
             Path(mlir).parent, log_path, env)
    return json.loads(out.read_text())


@dataclass
class ModelToolInfo:
    """The parts of ``model_tool --info`` that duotpu uses."""
    ion_mb: float
    version: str
    chip: str
    text: str


def model_tool_info(cvimodel: Path, log_path: Path) -> ModelToolInfo:
    """``model_tool --info``: the compiler's own summary of a cvimodel."""
    run = run_tool("model_tool --info", "model_tool", ["--info", str(Path(cvimodel).resolve())],
                   Path(log_path).parent, log_path)
    text = run.log_path.read_text(errors="replace")
    ion = re.search(r"Need ION Memory Size:\s*\(([\d.]+)\s*MB\)", text)
    ver = re.search(r"Cvimodel Version:\s*(\S+)", text)
    chip = re.search(r"For (\S+) chip ONLY", text)
    return ModelToolInfo(float(ion.group(1)) if ion else float("nan"),
                         ver.group(1) if ver else "", chip.group(1) if chip else "", text)


def cvimodel_schema() -> Path:
    """The flatbuffers schema of the cvimodel format, as shipped in tpu_mlir."""
    path = tpu_mlir_root() / "include/tpu_mlir/Builder/CV18xx/proto/cvimodel.fbs"
    if not path.exists():
        raise SetupError(f"tpu_mlir's cvimodel schema is missing ({path}); reinstall tpu_mlir "
                         f"{TPU_MLIR_VERSION} with `make install`.")
    return path


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of the tools that shape the compiled output (part of every cache key)."""
    from importlib import metadata
    out = {}
    for dist in ("tpu_mlir", "torch", "onnx", "onnxruntime", "onnxsim"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def file_digest(path: Path) -> str:
    """sha256 of a file, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
