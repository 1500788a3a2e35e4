"""The old cvitek command lines, as the Duo tutorials print them.

``duotpu legacy model_transform.py …``, ``run_calibration.py …`` and ``model_deploy.py …`` take
the old flags exactly, run the step with tpu_mlir through duotpu's own pipeline, write the files
the old tools wrote (``--mlir``, ``-o`` calibration table, ``--cvimodel``), and return the
equivalent duotpu recipe. The steps hand state to each other through a sidecar file beside the
MLIR (``NAME.mlir.duotpu.json``: the recipe so far and the work directory).

The old preprocessing differs from tpu_mlir's: the pixel (0–255) is first scaled to
``[0, raw_scale]``, then ``mean`` is subtracted and the result divided by ``std`` (both in the
raw_scale domain) and multiplied by ``input_scale``::

    x = (pixel * raw_scale / 255 - mean) / std * input_scale

which is a recipe's ``(pixel / 255 - m) / s`` with ``m = mean / raw_scale`` and
``s = std / (raw_scale * input_scale)`` (`old_to_recipe_preprocess`).
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duotpu.config.errors import ConfigError
from duotpu.config.recipe import Preprocess, Recipe, recipe_from_dict

from .workdir import EventSink, WorkDir, atomic_copy, no_events

TOOLS = ("model_transform.py", "run_calibration.py", "model_deploy.py")


@dataclass
class LegacyResult:
    """What a legacy step wrote and the duotpu recipe it corresponds to."""

    tool: str
    files: list[Path]
    recipe: Recipe
    notes: list[str] = field(default_factory=list)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in str(text).replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    return [int(v) for v in _floats(text)]


def _bool(text: str) -> bool:
    t = str(text).lower()
    if t in ("true", "1", "yes"):
        return True
    if t in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def old_to_recipe_preprocess(
    raw_scale: float,
    mean: list[float],
    std: list[float],
    input_scale: float,
    channel_order: str = "rgb",
    gray: bool = False,
    resize: list[int] | None = None,
    net: list[int] | None = None,
    keep_aspect_ratio: bool = False,
) -> Preprocess:
    """The old tool's preprocessing options as a recipe's `Preprocess` (exact)."""
    if raw_scale <= 0 or input_scale == 0 or any(s == 0 for s in std):
        raise ConfigError(
            f"raw_scale must be positive and input_scale and std non-zero; got "
            f"raw_scale {raw_scale}, std {std}, input_scale {input_scale}."
        )
    n = 1 if gray else 3
    mean = list(mean) * (n if len(mean) == 1 else 1)
    std = list(std) * (n if len(std) == 1 else 1)
    if len(mean) != n or len(std) != n:
        raise ConfigError(
            f"--mean and --std need {n} value(s) for a {'gray' if gray else 'colour'}"
            f" input; got mean {mean}, std {std}."
        )
    resize_t = tuple(resize) if resize and net and list(resize) != list(net) else None
    return Preprocess(
        resize=resize_t,
        resize_mode="letterbox" if keep_aspect_ratio else "stretch",
        mean=tuple(m / raw_scale for m in mean),
        std=tuple(s / (raw_scale * input_scale) for s in std),
        pixel_format="gray" if gray else "bgr" if channel_order.lower() == "bgr" else "rgb",
    )


# --------------------------------------------------------------------------------------------
def _parser(tool: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"duotpu legacy {tool}", add_help=True)
    if tool == "model_transform.py":
        p.add_argument(
            "--model_type", default="onnx", choices=["onnx", "pytorch", "caffe", "tflite"]
        )
        p.add_argument("--model_name", required=True)
        p.add_argument("--model_def", required=True)
        p.add_argument("--model_data")
        p.add_argument("--image", required=True)
        p.add_argument("--image_resize_dims", type=_ints)
        p.add_argument("--keep_aspect_ratio", type=_bool, default=False)
        p.add_argument("--net_input_dims", type=_ints)
        p.add_argument("--raw_scale", type=float, default=255.0)
        p.add_argument("--mean", type=_floats, default=[0.0, 0.0, 0.0])
        p.add_argument("--std", type=_floats, default=[1.0, 1.0, 1.0])
        p.add_argument("--input_scale", type=float, default=1.0)
        p.add_argument(
            "--model_channel_order", default="bgr", type=str.lower, choices=["rgb", "bgr"]
        )
        p.add_argument("--gray", type=_bool, default=False)
        p.add_argument("--batch_size", type=int, default=1)
        p.add_argument("--tolerance", type=_floats, default=[0.99, 0.99, 0.98])
        p.add_argument("--excepts", default="-")
        p.add_argument("--mlir", required=True)
    elif tool == "run_calibration.py":
        p.add_argument("mlir_file")
        p.add_argument("--dataset")
        p.add_argument("--image_list")
        p.add_argument("--input_num", type=int, default=0)
        p.add_argument("--histogram_bin_num", type=int, default=2048)
        p.add_argument("--tune_num", type=int, default=0)
        p.add_argument("--tune_thread_num", type=int)
        p.add_argument("--forward_thread_num", type=int)
        p.add_argument("--buffer_size")
        p.add_argument(
            "--calibration_method",
            "--cali_method",
            default="kl",
            choices=["kl", "mse", "max", "percentile9999"],
        )
        p.add_argument("-o", "--output_file", "--calibration_table", dest="output", required=True)
    else:
        p.add_argument("--model_name")
        p.add_argument("--mlir", required=True)
        p.add_argument(
            "--quantize", required=True, type=str.upper, choices=["BF16", "INT8", "MIX_BF16"]
        )
        p.add_argument("--calibration_table")
        p.add_argument("--mix_precision_table", "--quantize_table", dest="qtable")
        p.add_argument(
            "--chip",
            required=True,
            type=str.lower,
            choices=["cv180x", "cv181x", "cv182x", "cv183x"],
        )
        p.add_argument("--image", required=True)
        p.add_argument("--tolerance", type=_floats, default=[0.85, 0.85, 0.45])
        p.add_argument("--correctness", type=_floats, default=[0.99, 0.99, 0.98])
        p.add_argument("--excepts", default="-")
        p.add_argument("--fuse_preprocess", action="store_true")
        p.add_argument("--pixel_format", type=str.upper)
        p.add_argument("--aligned_input", action="store_true")
        p.add_argument(
            "--inputs_type",
            type=str.upper,
            default="AUTO",
            choices=["AUTO", "FP32", "INT8", "BF16", "SAME"],
        )
        p.add_argument(
            "--outputs_type",
            type=str.upper,
            default="AUTO",
            choices=["AUTO", "FP32", "INT8", "BF16", "SAME"],
        )
        p.add_argument("--merge_weight", action="store_true")
        p.add_argument("--model_version")
        p.add_argument("--save_input_files", action="store_true")
        p.add_argument("--dump_neuron")
        p.add_argument("--keep_output_name", action="store_true")
        p.add_argument("--cvimodel", required=True)
    return p


def _pair(three: list[float], flag: str) -> tuple[float, float]:
    """Old tolerances are (cosine, correlation, euclidean); tpu_mlir compares cosine and
    euclidean similarity."""
    if len(three) not in (2, 3) or not all(-1 <= v <= 1 for v in three):
        raise ConfigError(
            f"{flag} takes cosine,correlation,euclidean similarities in [-1, 1]; got {three}."
        )
    return float(three[0]), float(three[-1])


def _sidecar(mlir: Path) -> Path:
    return mlir.with_name(mlir.name + ".duotpu.json")


def _load_state(mlir: Path) -> dict[str, Any]:
    side = _sidecar(mlir)
    if not side.is_file():
        raise ConfigError(
            f"{mlir} was not made by 'duotpu legacy model_transform.py' (no "
            f"{side.name} beside it). Run that step first, in this folder."
        )
    state: dict[str, Any] = json.loads(side.read_text())
    return state


def _excepts(text: str) -> list[str]:
    return [] if text in ("-", "", None) else [e for e in text.split(",") if e]


# --------------------------------------------------------------------------------------------
def run_legacy(argv: list[str], cwd: Path, events: EventSink = no_events) -> LegacyResult:
    """Run one old command line (``argv[0]`` is the tool name) in ``cwd``."""
    if not argv or Path(argv[0]).name not in TOOLS:
        raise ConfigError(
            f"duotpu legacy runs one of {', '.join(TOOLS)}; got {argv[0] if argv else 'nothing'}."
        )
    tool = Path(argv[0]).name
    try:
        args = _parser(tool).parse_args(argv[1:])
    except SystemExit as e:  # argparse printed its usage error
        raise ConfigError(f"The {tool} options above are not valid.") from e
    return {
        "model_transform.py": _transform,
        "run_calibration.py": _calibrate,
        "model_deploy.py": _deploy,
    }[tool](args, Path(cwd), events)


def _transform(args: argparse.Namespace, cwd: Path, events: EventSink) -> LegacyResult:
    from duotpu.builder import pipeline

    notes: list[str] = []
    if args.model_type not in ("onnx", "pytorch"):
        raise ConfigError(
            f"--model_type {args.model_type}: duotpu takes ONNX and PyTorch "
            "models (tpu_mlir's Caffe and TFLite front ends are not wired in); "
            "export the model to ONNX."
        )
    src = (cwd / args.model_def).resolve()
    if not src.is_file():
        raise ConfigError(f"--model_def {args.model_def}: no such file (looked in {cwd}).")
    image = (cwd / args.image).resolve()
    if not image.is_file():
        raise ConfigError(f"--image {args.image}: no such file (looked in {cwd}).")
    net = args.net_input_dims or args.image_resize_dims
    if not net or len(net) != 2:
        raise ConfigError("--net_input_dims H,W (or --image_resize_dims) is needed.")
    resize = args.image_resize_dims or net
    if resize[0] < net[0] or resize[1] < net[1]:
        raise ConfigError(
            f"--image_resize_dims {resize} is smaller than --net_input_dims "
            f"{net}; the image is resized, then center-cropped to the input."
        )
    pre = old_to_recipe_preprocess(
        args.raw_scale,
        args.mean,
        args.std,
        args.input_scale,
        args.model_channel_order,
        args.gray,
        resize,
        net,
        args.keep_aspect_ratio,
    )
    input_name = "input"
    if src.suffix == ".onnx":
        import onnx

        m = onnx.load(str(src), load_external_data=False)
        inits = {i.name for i in m.graph.initializer}
        input_name = next(i.name for i in m.graph.input if i.name not in inits)
    cos, euc = _pair(args.tolerance, "--tolerance")
    recipe = recipe_from_dict(
        {
            "name": args.model_name,
            "model": {"source": str(src)},
            "inputs": [
                {
                    "name": input_name,
                    "shape": [args.batch_size, 1 if args.gray else 3, net[0], net[1]],
                }
            ],
            "preprocess": {k: v for k, v in pre.__dict__.items() if v is not None},
            "tolerance": {"transform": [cos, euc], "excepts": _excepts(args.excepts)},
            "test_image": str(image),
        },
        "the model_transform.py options",
    )
    mlir = (cwd / args.mlir).resolve()
    wd = WorkDir(cwd / ".duotpu" / args.model_name, events)
    exported = pipeline.stage_export(wd, recipe)
    transformed = pipeline.stage_transform(wd, recipe, exported)
    atomic_copy(transformed.result.mlir, mlir)
    state = {"recipe": recipe.to_dict(), "work": str(wd.root.resolve())}
    _sidecar(mlir).write_text(json.dumps(state, indent=1))
    return LegacyResult("model_transform.py", [mlir], recipe, notes)


def _calibrate(args: argparse.Namespace, cwd: Path, events: EventSink) -> LegacyResult:
    from duotpu import compiler
    from duotpu.core import images

    mlir = (cwd / args.mlir_file).resolve()
    state = _load_state(mlir)
    notes = []
    if bool(args.dataset) == bool(args.image_list):
        raise ConfigError(
            "run_calibration.py needs exactly one of --dataset DIR or --image_list FILE."
        )
    wd = WorkDir(Path(state["work"]), events)
    folder = wd.root / "legacy-calibrate"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    if args.dataset:
        scan = images.scan_images((cwd / args.dataset).resolve())
        paths = scan.paths
    else:
        lst = (cwd / args.image_list).resolve()
        if not lst.is_file():
            raise ConfigError(f"--image_list {args.image_list}: no such file.")
        paths = images.scan_list(lst).paths
    if not paths:
        raise ConfigError("The calibration images were not found: --dataset must hold images.")
    n = min(args.input_num or len(paths), len(paths))
    if args.input_num and args.input_num > len(paths):
        notes.append(f"--input_num {args.input_num}: only {len(paths)} images, all used")
    for i, p in enumerate(paths[:n]):
        (folder / "images" / f"{i:05d}{p.suffix.lower()}").symlink_to(p)
    for flag in ("tune_thread_num", "forward_thread_num", "buffer_size"):
        if getattr(args, flag) is not None:
            notes.append(
                f"--{flag} is ignored: tpu_mlir's run_calibration sizes its threads "
                "and buffers itself (OMP_NUM_THREADS limits the threads)"
            )
    data = dict(state["recipe"])
    data["calibration"] = {
        "images": str(folder / "images"),
        "count": n,
        "method": args.calibration_method,
        "histogram_bins": args.histogram_bin_num,
        "tune_num": args.tune_num,
    }
    recipe = recipe_from_dict(data, "the run_calibration.py options")
    tfolder = wd.root / "transform"
    table = (cwd / args.output).resolve()
    tmp = folder / "table"
    for name in (f"{recipe.name}.mlir", f"{recipe.name}_top_f32_all_weight.npz"):
        (folder / name).symlink_to(tfolder / name)
    compiler.calibrate(
        folder / f"{recipe.name}.mlir",
        folder / "images",
        n,
        tmp,
        folder / "calibrate.log",
        method=args.calibration_method,
        histogram_bins=args.histogram_bin_num,
        tune_num=args.tune_num,
    )
    atomic_copy(tmp, table)
    state["recipe"] = recipe.to_dict()
    _sidecar(mlir).write_text(json.dumps(state, indent=1))
    return LegacyResult("run_calibration.py", [table], recipe, notes)


def _deploy(args: argparse.Namespace, cwd: Path, events: EventSink) -> LegacyResult:
    from duotpu import compiler
    from duotpu.builder import pipeline

    mode = {"BF16": "bf16", "INT8": "int8", "MIX_BF16": "int8"}[args.quantize]
    if mode == "int8" and not args.calibration_table:
        raise ConfigError(
            f"--quantize {args.quantize} needs --calibration_table (made by run_calibration.py)."
        )
    if args.quantize == "MIX_BF16" and not args.qtable:
        raise ConfigError(
            "--quantize MIX_BF16 needs --mix_precision_table FILE: the layers to "
            "keep in BF16, one per line."
        )
    if args.aligned_input and not args.fuse_preprocess:
        raise ConfigError("--aligned_input only applies with --fuse_preprocess.")
    if args.pixel_format and not args.fuse_preprocess:
        raise ConfigError("--pixel_format only applies with --fuse_preprocess.")
    if args.fuse_preprocess and not args.pixel_format:
        raise ConfigError("--fuse_preprocess needs --pixel_format (e.g. RGB_PLANAR).")
    mlir = (cwd / args.mlir).resolve()
    state = _load_state(mlir)
    notes = []
    data = dict(state["recipe"])
    gray = data["inputs"][0]["shape"][1] == 1
    if args.pixel_format and (args.pixel_format == "GRAYSCALE") != gray:
        raise ConfigError(
            f"--pixel_format {args.pixel_format} does not match the model's "
            f"{1 if gray else 3}-channel input."
        )
    if args.aligned_input or (args.pixel_format or "").startswith(("YUV", "RGBA")):
        notes.append(
            "aligned / YUV input: tpu_mlir 1.30.2 cannot validate these models itself "
            "(its interpreter aborts on the aligned input); duotpu builds without its "
            "check and runs the cvimodel on the simulator with the test image instead"
        )
    if args.save_input_files:
        notes.append(
            "--save_input_files: `duotpu build --recipe` of the recipe below with "
            "deploy.save_input_files = true writes NAME_inputs.tar.gz (inputs + a "
            "replay script)"
        )
    for flag in ("keep_output_name", "dump_neuron"):
        if getattr(args, flag):
            notes.append(
                f"--{flag}: the duotpu work directory keeps every input, output and "
                f"log of each step ({state['work']})"
            )
    tol, cor = _pair(args.tolerance, "--tolerance"), _pair(args.correctness, "--correctness")
    data["chip"] = args.chip
    data["quantize"] = [mode]
    data.setdefault("tolerance", {})[mode] = list(tol)
    data["tolerance"]["correctness"] = list(cor)
    data["tolerance"]["excepts"] = _excepts(args.excepts)
    data.setdefault("deploy", {})
    data["deploy"]["fuse_preprocess"] = bool(args.fuse_preprocess)
    data["deploy"]["pixel_format"] = args.pixel_format or ""
    data["deploy"]["aligned_input"] = bool(args.aligned_input)
    data["deploy"]["model_version"] = args.model_version or ""
    same = "INT8" if mode == "int8" else "BF16"  # SAME: the model's own quantized type
    data["deploy"]["inputs_type"] = same if args.inputs_type == "SAME" else args.inputs_type
    data["deploy"]["outputs_type"] = same if args.outputs_type == "SAME" else args.outputs_type
    if args.qtable:
        data.setdefault("mix", {})["qtable"] = str((cwd / args.qtable).resolve())
    recipe = recipe_from_dict(data, "the model_deploy.py options")
    work = Path(state["work"])
    cvi = (cwd / args.cvimodel).resolve()
    folder = work / f"legacy-deploy-{cvi.stem}"
    shutil.rmtree(folder, ignore_errors=True)
    image = (cwd / args.image).resolve()
    if not image.is_file():
        raise ConfigError(f"--image {args.image}: no such file.")
    files = compiler.deploy(
        compiler.TransformFiles(work / "transform", recipe.name),
        folder,
        folder / "deploy.log",
        pipeline.deploy_options(recipe, mode, image),
        cvimodel_name=cvi.name,
        calibration_table=(cwd / args.calibration_table).resolve()
        if args.calibration_table
        else None,
        quantize_table=(cwd / args.qtable).resolve() if args.qtable else None,
        merge_weight=args.merge_weight,
    )
    atomic_copy(files.cvimodel, cvi)
    return LegacyResult("model_deploy.py", [cvi], recipe, notes)
