"""The compiler steps: model_transform, run_calibration (and its fast_search), model_deploy
(one or several batch sizes), model_tool --info. File names here are tpu_mlir's, derived from the
model name; failures are turned into typed errors (a failed comparison into a ToleranceError that
names the tensor, an unsupported operator into a ModelError that names the layers).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from duotpu.config.errors import (
    CompilerFailure,
    Mismatch,
    ModelError,
    ToleranceError,
    ToolchainError,
)
from duotpu.config.recipe import Preprocess

from . import diagnose
from .inference import fused_input_file, run_cvimodel
from .runner import run_tool

_COMPARE_FAIL = re.compile(
    r"\[(?P<name>[^\]]+?)\s*\]\s+NOT_\w+\s+\[FAILED\].*?cosine_similarity\s*=\s*(?P<cos>[-\d.e]+)"
    r"\s+euclidean_similarity\s*=\s*(?P<euc>[-\d.e]+)",
    re.S,
)
_COMPARE_FILES = re.compile(r"Target\s+(\S+)\s+Reference\s+(\S+)\s+npz compare FAILED")


def compare_failures(log_path: Path, tolerance: tuple[float, ...]) -> list[Mismatch]:
    """Tensors a failed ``npz_tool compare`` in a tool's log reports below ``tolerance``."""
    text = "\n".join(
        ln.rsplit("\r", 1)[-1] for ln in Path(log_path).read_text(errors="replace").splitlines()
    )
    if "npz compare FAILED" not in text:
        return []
    out = []
    for m in _COMPARE_FAIL.finditer(text):
        cos, euc = float(m.group("cos")), float(m.group("euc"))
        if cos < tolerance[0]:
            out.append(Mismatch(m.group("name").strip(), "cosine", cos, tolerance[0]))
        if euc < tolerance[1]:
            out.append(Mismatch(m.group("name").strip(), "euclidean similarity", euc, tolerance[1]))
    return out


def failed_comparison(log_path: Path) -> tuple[str, str] | None:
    """(target, reference) file names of the failed comparison in a tool's log, if any."""
    text = Path(log_path).read_text(errors="replace")
    m = _COMPARE_FILES.search(text)
    return (m.group(1), m.group(2)) if m else None


# --------------------------------------------------------------------------------------------
# The compiler steps. File names are tpu_mlir's, derived from the model name.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransformFiles:
    """Files model_transform leaves in its folder for model ``name``."""

    folder: Path
    name: str

    @property
    def mlir(self) -> Path:
        return self.folder / f"{self.name}.mlir"

    @property
    def weights(self) -> Path:
        return self.folder / f"{self.name}_top_f32_all_weight.npz"

    @property
    def test_input(self) -> Path:
        return self.folder / f"{self.name}_in_f32.npz"

    @property
    def top_outputs(self) -> Path:
        return self.folder / f"{self.name}_top_outputs.npz"


def preprocess_args(pre: Preprocess, shape: tuple[int, ...]) -> list[str]:
    """model_transform's preprocessing flags for a recipe's preprocessing."""
    from duotpu.core.preprocess import resize_dims, tpu_mean_scale

    mean, scale = tpu_mean_scale(pre, shape[1])
    h, w = resize_dims(pre, shape)
    args = [
        "--resize_dims",
        f"{h},{w}",
        "--mean",
        mean,
        "--scale",
        scale,
        "--pixel_format",
        pre.pixel_format,
    ]
    if pre.resize_mode == "short_side":
        args += ["--keep_aspect_ratio", "--keep_ratio_mode", "short_side_scale"]
    elif pre.resize_mode in ("letterbox", "text_line"):
        args += [
            "--keep_aspect_ratio",
            "--keep_ratio_mode",
            "letterbox",
            "--pad_value",
            str(pre.pad_value),
        ]
        if pre.resize_mode == "text_line":  # the image at the top left: padded right / below
            args += ["--pad_type", "normal"]
    return args


def transform(
    name: str,
    onnx_path: Path,
    input_shapes: list[list[int]],
    folder: Path,
    log_path: Path,
    *,
    preprocess: Preprocess | None,
    test_input: Path | None,
    tolerance: tuple[float, ...],
    excepts: Sequence[str] = (),
    output_names: Sequence[str] = (),
) -> TransformFiles:
    """``model_transform``: ONNX → fp32 top MLIR, with preprocessing (``None``: inputs that are
    tensors, taken as they are) and, given a test input, a per-layer similarity check against
    the ONNX model at ``tolerance`` (cos, euclid)."""
    files = TransformFiles(Path(folder), name)
    shapes = "[" + ",".join("[" + ",".join(map(str, s)) + "]" for s in input_shapes) + "]"
    args = [
        "--model_name",
        name,
        "--model_def",
        str(Path(onnx_path).resolve()),
        "--input_shapes",
        shapes,
        *(preprocess_args(preprocess, tuple(input_shapes[0])) if preprocess else []),
        "--mlir",
        files.mlir.name,
    ]
    if output_names:
        args += ["--output_names", ",".join(output_names)]
    if test_input is not None:
        args += [
            "--test_input",
            str(Path(test_input).resolve()),
            "--test_result",
            files.top_outputs.name,
            "--tolerance",
            f"{tolerance[0]},{tolerance[1]}",
        ]
        if excepts:
            args += ["--excepts", ",".join(excepts)]
    try:
        run_tool("transform", "model_transform", args, folder, log_path)
    except ToolchainError as err:
        ops = [
            m
            for m in re.findall(
                r"Op not support:\s*\{([^}]*)\}", log_path.read_text(errors="replace")
            )
            if m.strip()
        ]
        if ops:
            raise _unsupported_ops(onnx_path, ops[-1], log_path) from err
        bad = compare_failures(log_path, tolerance)
        if bad:
            peak = empty_reference(
                files.folder / f"{name}_ref_outputs.npz", [m.tensor for m in bad]
            )
            advice = (
                f"The ONNX model's own output on the test image is empty (peak |value| "
                f"{peak:.2g}), so the comparison measures rounding noise, not the compiler: give "
                "a test image the model responds to (--test-image, a file or a folder; e.g. "
                "one with the objects it detects)."
                if peak is not None
                else "The compiler's fp32 translation differs from the ONNX model; lower "
                "tolerance.transform only if you accept that, or exclude the tensor with "
                "excepts."
            )
            raise ToleranceError(
                "the fp32 MLIR against the ONNX model (model_transform)",
                bad,
                f"{advice} Log: {log_path}",
                log_path,
            ) from None
        raise
    return files


#: a reference tensor whose largest magnitude is below this is empty: nothing to compare
EMPTY_PEAK = 1e-4


def empty_reference(reference: Path, tensors: Sequence[str]) -> float | None:
    """The largest magnitude among ``tensors`` of a reference npz when every one of them is
    empty (all below `EMPTY_PEAK`: the model did not respond to the test input), else
    None."""
    import numpy as np

    if not Path(reference).is_file() or not tensors:
        return None
    with np.load(reference) as z:
        peaks = [float(np.max(np.abs(z[t]))) if z[t].size else 0.0 for t in tensors if t in z]
    if len(peaks) != len(tensors) or max(peaks) >= EMPTY_PEAK:
        return None
    return max(peaks)


def _unsupported_ops(onnx_path: Path, ops_text: str, log_path: Path) -> ModelError:
    import onnx

    ops = [o.strip().strip("'\"") for o in ops_text.split(",") if o.strip()]
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    layers = [f"{n.name or '(unnamed)'} ({n.op_type})" for n in graph.node if n.op_type in ops]
    return ModelError(
        f"The compiler (tpu_mlir) does not support the ONNX operator(s) {', '.join(ops)}, used "
        f"by layer(s) {', '.join(layers[:8])}{' …' if len(layers) > 8 else ''}. Replace them in "
        f"the model (or cut the graph before them and do that part on the CPU). Log: {log_path}"
    )


def fast_search(
    transformed: "TransformFiles",
    dataset: Path,
    count: int,
    folder: Path,
    *,
    chip: str,
    expected_cos: float,
    inference_num: int = 10,
) -> list[str]:
    """tpu_mlir's own mixed-precision search (``run_calibration --search fast_search``):
    the layers it keeps in float to reach ``expected_cos`` at the outputs. Runs on copies of the
    transform outputs (the search writes next to the MLIR)."""
    import shutil

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for src in (transformed.mlir, transformed.weights):
        shutil.copyfile(src, folder / src.name)
    args = [
        transformed.mlir.name,
        "--dataset",
        str(Path(dataset).resolve()),
        "--input_num",
        str(count),
        "--search",
        "fast_search",
        "--chip",
        chip,
        "--expected_cos",
        str(expected_cos),
        "--inference_num",
        str(inference_num),
        "-o",
        str((folder / "fast_search_cali").resolve()),
        "--quantize_table",
        str((folder / "fast_search.qtable").resolve()),
    ]
    run_tool("fast_search", "run_calibration", args, folder, folder / "fast_search.log")
    out = []
    for line in (folder / "fast_search.qtable").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.split()[0])
    return out


def calibrate(
    mlir: Path,
    dataset: Path,
    count: int,
    table: Path,
    log_path: Path,
    *,
    method: str = "kl",
    histogram_bins: int = 2048,
    tune_num: int = 5,
) -> Path:
    """``run_calibration``: INT8 calibration table from a folder of images (or ``.npz``
    inputs), or from a list file whose lines name one ``.npy`` file per model input, in the
    model's input order (``--data_list``: tpu_mlir's reader of several inputs, which takes each
    line as one sample whatever the inputs' first dims are)."""
    mlir = Path(mlir)
    args = [
        mlir.name,
        "--data_list" if Path(dataset).is_file() else "--dataset",
        str(Path(dataset).resolve()),
        "--input_num",
        str(count),
        "--cali_method",
        method,
        "--histogram_bin_num",
        str(histogram_bins),
        "--tune_num",
        str(tune_num),
        "-o",
        str(Path(table).resolve()),
    ]
    run_tool("calibrate", "run_calibration", args, mlir.parent, log_path)
    return Path(table)


def tuning_failure(log_path: Path) -> str:
    """The layer run_calibration's threshold tuning (``--tune_num``) was at when it stopped,
    with the tool's last words ("" when the log shows no tuning). tpu_mlir 1.30.2's tuner
    feeds the wrong output of a multi-output op (an LSTM's ``Y`` for its ``Y_h``) to the next
    layer; the table without tuning is sound."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    layers = re.findall(r"tune op: (.+?):\s+\d+%", text)
    if not layers:
        return ""
    after = text[text.rfind("tune op:") :]
    if "auto tune end" in after:  # the tuning finished; something later failed
        return ""
    lines = [ln.strip() for ln in re.split(r"[\r\n]", after)]
    lines = [lines[0].rsplit("]", 1)[-1].strip(), *lines[1:]]  # the rest of the progress line
    words = [ln for ln in lines if ln and "%|" not in ln]
    if any(ln.startswith("Traceback") for ln in words):
        words = words[-1:]  # an exception: its last line says it
    why = words[0][:160] if words else ""
    return layers[-1] + (f" ({why})" if why else "")


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
    def tpu_outputs(self) -> Path:
        return self.folder / f"{self._prefix}_tpu_outputs.npz"

    @property
    def model_outputs(self) -> Path:
        return self.folder / f"{self._prefix}_model_outputs.npz"

    @property
    def tpu_mlir(self) -> Path:
        return self.folder / f"{self._prefix}_tpu.mlir"


def outputs_without_simulator(files: DeployFiles, output_names: list[str]) -> Path:
    """When the CV18xx simulator cannot load a cvimodel (its command buffer is larger than the
    simulator reserves; the board's runtime has no such limit), the model's outputs on the test
    input from the quantized MLIR that model_deploy already ran (``*_tpu_outputs.npz``: INT8
    bit-exact with the simulator on every model checked) are written where the simulator's
    would be. Raises `ModelError` when that file does not hold the outputs."""
    import numpy as np

    with np.load(files.tpu_outputs) as z:
        got = {}
        for name in output_names:
            key = next((k for k in (name, name.removesuffix("_f32")) if k in z.files), None)
            if key is None:
                raise ModelError(
                    f"{files.tpu_outputs.name} has no output {name!r}: the model cannot be "
                    "verified without the simulator."
                )
            got[name] = np.array(z[key], np.float32)
    np.savez(files.model_outputs, **got)
    return files.model_outputs


#: Fused-preprocess formats tpu_mlir 1.30.2 cannot validate itself: they imply VPSS-aligned
#: input rows, and its interpreter's Csc op rejects the aligned input its own preprocessing makes
#: ("wrong shape size", abort); aligned RGB inputs hit a floating point exception on some sizes.
SELF_VALIDATED_FORMATS = ("YUV420_PLANAR", "YUV_NV21", "YUV_NV12")


@dataclass(frozen=True)
class DeployOptions:
    """Everything model_deploy takes that comes from the recipe, for one quantize mode.
    Built in exactly one place (`duotpu.builder.pipeline.deploy_options`) for every
    caller: the deploy stage, the mixed-precision candidates and the old command lines."""

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
        `deploy` itself."""
        return self.aligned_input or self.fuse_preprocess in SELF_VALIDATED_FORMATS

    def flags(self) -> list[str]:
        """model_deploy flags for the format version and quantized inputs / outputs."""
        args = ["--model_version", self.model_version] if self.model_version else []
        if self.inputs_type in ("INT8", "BF16"):
            args += ["--quant_input"]
        if self.outputs_type in ("INT8", "BF16"):
            same = (self.outputs_type == "INT8") == (self.quantize.lower() == "int8")
            args += ["--quant_output" if same else f"--quant_output_{self.outputs_type.lower()}"]
        return args


def deploy(
    transformed: TransformFiles,
    folder: Path,
    log_path: Path,
    opts: DeployOptions,
    *,
    cvimodel_name: str,
    calibration_table: Path | None = None,
    quantize_table: Path | None = None,
    background: bool = False,
    mlir_name: str | None = None,
    test_input: Path | None = None,
    test_reference: Path | None = None,
    merge_weight: bool = False,
    copy_inputs: bool = True,
    validate: bool = True,
    lower_only: bool = False,
) -> DeployFiles:
    """``model_deploy``: top MLIR → cvimodel for ``opts.chip``, validated on the test input: the
    quantized MLIR against the fp32 outputs (``opts.tolerance``) and the cvimodel on the CV18xx
    simulator against the quantized MLIR (``opts.correctness``). Without ``validate`` nothing is
    run on the test input (no ``model_outputs`` / ``tpu_outputs`` files): the caller measures the
    model itself. ``lower_only`` stops after the quantized MLIR (``files.tpu_mlir``): no
    cvimodel, no validation.

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
        for src in (
            transformed.mlir,
            transformed.weights,
            transformed.test_input,
            transformed.top_outputs,
        ):
            dst = folder / src.name
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            shutil.copyfile(src, dst)
    files = DeployFiles(folder, transformed.name, quantize, opts.chip, folder / cvimodel_name)
    validate = validate and not lower_only
    self_check = opts.self_checked and validate
    args = [
        "--mlir",
        mlir_name or transformed.mlir.name,
        "--quantize",
        quantize.upper(),
        "--chip",
        opts.chip,
        "--model",
        cvimodel_name,
        "--debug",
    ]
    if validate and not self_check:
        if opts.fuse_preprocess:  # model_deploy then wants the test image itself
            test = str(Path(opts.test_image or "").resolve())
        else:
            test = str(test_input) if test_input else transformed.test_input.name
        args += [
            "--test_input",
            test,
            "--test_reference",
            str(test_reference or transformed.top_outputs.name),
            "--tolerance",
            f"{tolerance[0]},{tolerance[1]}",
            "--correctness",
            f"{correctness[0]},{correctness[1]}",
        ]
    if opts.fuse_preprocess:
        args += ["--fuse_preprocess", "--customization_format", opts.fuse_preprocess]
    if opts.aligned_input:
        args += ["--aligned_input"]
    if merge_weight:
        args += ["--merge_weight"]
    if lower_only:
        args += ["--not_gen_bmodel"]
    args += opts.flags()
    if calibration_table is not None:
        args += ["--calibration_table", str(Path(calibration_table).resolve())]
    if quantize_table is not None:
        args += ["--quantize_table", str(Path(quantize_table).resolve())]
    if opts.excepts and validate and not self_check:
        args += ["--excepts", ",".join(opts.excepts)]
    try:
        run_tool(
            f"deploy {quantize.lower()}",
            "model_deploy",
            args,
            folder,
            log_path,
            env_extra={"OMP_NUM_THREADS": "1"} if background else None,
            background=background,
        )
    except ToolchainError as e:
        pair = failed_comparison(log_path) or ("", "")
        if "_model_outputs" in pair[0]:
            bad = compare_failures(log_path, correctness)
            what = (
                f"the {quantize.upper()} cvimodel on the simulator against the quantized "
                "MLIR (model_deploy --correctness)"
            )
            advice = correctness_advice(bad, correctness)
        else:
            bad = compare_failures(log_path, tolerance)
            what = f"the {quantize.upper()} model against fp32 (model_deploy --tolerance)"
            advice = tolerance_advice(quantize, f"tolerance.{quantize.lower()}")
        if bad:
            raise ToleranceError(what, bad, advice + f" Log: {log_path}", log_path) from None
        text = log_path.read_text(errors="replace")
        failure = diagnose.recognise(text)
        if failure is not None:
            failure = diagnose.locate(failure, folder, text)
            raise CompilerFailure(
                e, diagnose.explain(failure, opts.chip, quantize), failure
            ) from None
        raise
    if self_check:
        raw = fused_input_file(
            transformed.mlir,
            Path(opts.test_image or ""),
            opts.fuse_preprocess,
            True,
            opts.chip,
            folder / f"{files.name}_in_raw.npz",
            log_path,
        )
        run_cvimodel(files.cvimodel, raw, files.model_outputs, log_path.with_name("simulate.log"))
    return files


def check_tolerance(
    quantized: Path,
    reference: Path,
    mode: str,
    tolerance: tuple[float, ...],
    excepts: tuple[str, ...],
    log_path: Path,
) -> None:
    """model_deploy's check of the quantized MLIR's tensors (``quantized``, its
    ``*_tpu_outputs.npz``) against fp32 (``reference``, model_transform's
    ``*_top_outputs.npz``), run as its own step with tpu_mlir's ``npz_tool compare``: the build
    deploys once with the check all but off (`NO_TOLERANCE`) and checks here, so a changed
    tolerance costs this comparison instead of another deploy."""
    args = [
        "compare",
        str(quantized),
        str(reference),
        "--tolerance",
        f"{tolerance[0]},{tolerance[1]}",
        "--except",
        ",".join(excepts) or "-",
        "-vv",
    ]
    try:
        run_tool(f"tolerance {mode}", "npz_tool", args, Path(log_path).parent, log_path)
    except ToolchainError:
        bad = compare_failures(log_path, tolerance)
        if not bad:
            raise
        raise ToleranceError(
            f"the {mode.upper()} model against fp32 (model_deploy --tolerance)",
            bad,
            tolerance_advice(mode, f"tolerance.{mode.lower()}") + f" Log: {log_path}",
            log_path,
        ) from None


#: model_deploy's check of the quantized outputs against fp32, all but switched off: the
#: mixed-precision search measures every candidate on the task metric itself, and the check would
#: stop it at the very layers it looks for. Only a sign flip (cosine ≤ 0) still fails: model_deploy
#: hands the value to npz_tool on a shell line, where a leading "-" reads as an option. The
#: cvimodel-vs-MLIR correctness check stays.
NO_TOLERANCE = (0.0, -1e9)


def correctness_advice(bad: Sequence[Mismatch], required: Sequence[float]) -> str:
    """What to do when the cvimodel on the simulator and its quantized MLIR disagree beyond
    ``--correctness``: the same arithmetic computed two ways, so a small gap is the compiler's
    (an op its code generation approximates), and the model's answer is what matters."""
    cos = min((m.measured for m in bad if m.metric == "cosine"), default=required[0])
    euc = min((m.measured for m in bad if m.metric != "cosine"), default=required[1])
    # a cosine below 0 is a sign flip, never a small gap; tpu_mlir's euclidean similarity goes
    # below 0 when one side is much larger, which BF16 rounding of large values can do while
    # the cosine stays at 0.9998 (silero-vad's encoder)
    looser = f"{min(required[0], max(0.0, _floor(cos))):g},{min(required[1], _floor(euc)):g}"
    where = f" at '{bad[0].tensor}'" if bad else ""
    return (
        f"The cvimodel's code computes{where} what its quantized MLIR does only approximately "
        "(the compiler's code generation, not your model or data). If the gap is small, "
        f"--correctness {looser} (tolerance.correctness) lets the deploy through, and duotpu's "
        "verification against the fp32 model still decides whether the cvimodel is delivered; "
        "else the layer can go to the CPU (--cut-at before it) or another tpu_mlir version may "
        "do better."
    )


def _floor(v: float) -> float:
    """The largest two-decimal tolerance ``v`` meets."""
    return math.floor(v * 100) / 100


def tolerance_advice(mode: str, key: str, required: float = 0.0) -> str:
    """What to do when a ``mode`` model is less similar to fp32 than ``key`` requires
    (``required``: the output cosine asked for, which the suggested target matches). Only INT8
    depends on calibration; BF16 does not."""
    if mode.lower() == "int8":
        target = f"cos>={max(required, 0.99):g}"
        return (
            f"Try mixed precision: --target {target} keeps the layers where INT8 hurts in "
            "BF16 (the search starts from this model); or more calibration images, or images "
            "more typical of what the model will see (calibration.images / calibration.count), "
            f"another calibration.method, or BF16; or lower {key} if the accuracy is acceptable."
        )
    return (
        "BF16 keeps 8 bits of mantissa and needs no calibration, so calibration settings "
        "cannot change this. Look for layers with a very large dynamic range or values "
        "that cancel (a large sum followed by a subtraction, a LayerNorm over wide "
        f"values); leave such tensors out of the comparison with excepts, or lower {key} "
        "if the accuracy is acceptable."
    )


def deploy_batches(
    transformed: TransformFiles,
    onnx_path: Path,
    input_shape: tuple[int, ...],
    preprocess: Preprocess,
    batch_sizes: tuple[int, ...],
    folder: Path,
    opts: DeployOptions,
    *,
    cvimodel_name: str,
    transform_tolerance: tuple[float, ...],
    **deploy_kw: Any,
) -> DeployFiles:
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
            np.savez(
                sub / f"{name}_bs{b}_in_f32.npz", **{k: np.repeat(z[k], b, axis=0) for k in z.files}
            )
        mlirs[b] = transform(
            name,
            onnx_path,
            [[b, *input_shape[1:]]],
            sub,
            folder / f"transform-bs{b}.log",
            preprocess=preprocess,
            test_input=sub / f"{name}_bs{b}_in_f32.npz",
            tolerance=transform_tolerance,
        )
    for src in (transformed.weights, transformed.test_input, transformed.top_outputs):
        shutil.copyfile(src, folder / src.name)
    parts = {}
    for b in sorted(batch_sizes, reverse=True):  # batch 1 last
        t = mlirs[b]
        shutil.copyfile(t.mlir, folder / f"{name}_bs{b}.mlir")
        part = f"{name}_{chip}_{quantize.lower()}_bs{b}.cvimodel"
        # model_deploy rewrites <name>_in_f32.npz in its folder with each variant's input, so
        # every variant reads its test input and reference from its own transform folder.
        deploy(
            transformed,
            folder,
            folder / f"deploy-bs{b}.log",
            opts,
            cvimodel_name=part,
            mlir_name=f"{name}_bs{b}.mlir",
            merge_weight=True,
            copy_inputs=False,
            test_input=t.test_input.resolve(),
            test_reference=t.top_outputs.resolve(),
            **deploy_kw,
        )
        parts[b] = part
    combine = [parts[b] for b in batch_sizes] + ["-o", cvimodel_name]
    run_tool(
        "model_tool --combine",
        "model_tool",
        ["--combine", *combine],
        folder,
        folder / "combine.log",
    )
    return DeployFiles(folder, name, quantize, chip, folder / cvimodel_name)


def mlir_weight_files(mlir: Path) -> list[Path]:
    """The weight files an MLIR file names (``module.weight_file``), beside it."""
    head = Path(mlir).read_text(errors="replace")[:20000]
    return [Path(mlir).parent / m for m in re.findall(r'module\.weight_file\s*=\s*"([^"]+)"', head)]


@dataclass
class ModelToolInfo:
    """The parts of ``model_tool --info`` that duotpu uses."""

    ion_mb: float
    version: str
    chip: str
    text: str


def model_tool_info(cvimodel: Path, log_path: Path) -> ModelToolInfo:
    """``model_tool --info``: the compiler's own summary of a cvimodel."""
    run = run_tool(
        "model_tool --info",
        "model_tool",
        ["--info", str(Path(cvimodel).resolve())],
        Path(log_path).parent,
        log_path,
    )
    text = run.log_path.read_text(errors="replace")
    ion = re.search(r"Need ION Memory Size:\s*\(([\d.]+)\s*MB\)", text)
    ver = re.search(r"Cvimodel Version:\s*(\S+)", text)
    chip = re.search(r"For (\S+) chip ONLY", text)
    return ModelToolInfo(
        float(ion.group(1)) if ion else float("nan"),
        ver.group(1) if ver else "",
        chip.group(1) if chip else "",
        text,
    )
