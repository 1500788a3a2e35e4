"""The ``duotpu`` command: a thin layer over the library. Only this module prints and exits."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
import typing
from pathlib import Path
from typing import Any

import numpy as np

from duotpu.config.errors import (
    BuildFailed,
    ConfigError,
    DuoTpuError,
    PartialBuild,
    ToleranceError,
    ToolchainError,
)
from duotpu.config.recipe import FusedFormat

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2  # interrupted: 128 + the signal (130, 143)
EXIT_PARTIAL = 3  # some modes delivered (verified), others failed


def _console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 100)


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
# Progress: one line per stage, with its time
# --------------------------------------------------------------------------------------------
class StageProgress:
    """Renders pipeline events: a spinner while stages run, one line per finished stage."""

    def __init__(self, console):
        from rich.status import Status

        self.console = console
        self.running: list[str] = []
        self.lock = threading.Lock()
        self.status = Status("", console=console, spinner="dots")
        self.started = False

    def __call__(self, ev) -> None:
        from rich.markup import escape as markup_escape

        with self.lock:
            if ev.status == "start":
                self.running.append(ev.stage)
            elif ev.stage in self.running and ev.status in ("done", "failed", "cached"):
                self.running.remove(ev.stage)
            if ev.status == "done":
                self.console.print(f"[green]✓[/] {ev.stage:<14} {ev.seconds:6.1f} s")
            elif ev.status == "cached":
                self.console.print(
                    f"[cyan]↺[/] {ev.stage:<14}   cached [dim](ran in {ev.seconds:.1f} s)[/]"
                )
            elif ev.status == "failed":
                self.console.print(f"[red]✗[/] {ev.stage:<14} {ev.seconds:6.1f} s")
            elif ev.status == "warning":
                self.console.print(f"[yellow]![/] {ev.stage:<14} {markup_escape(ev.message)}")
            elif ev.status == "info":
                self.console.print(f"[dim]·[/] {ev.stage:<14} [dim]{markup_escape(ev.message)}[/]")
            self._refresh()

    def _refresh(self) -> None:
        if self.running and self.console.is_terminal:
            self.status.update("running " + ", ".join(self.running) + " …")
            if not self.started:
                self.status.start()
                self.started = True
        elif self.started:
            self.status.stop()
            self.started = False

    def close(self) -> None:
        with self.lock:
            if self.started:
                self.status.stop()
                self.started = False


# --------------------------------------------------------------------------------------------
# Arguments → recipe overrides
# --------------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.replace("x", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _modes(text: str) -> list[str]:
    return [m.strip().lower() for m in text.split(",") if m.strip()]


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("recipe fields (override the recipe file)")
    g.add_argument("--name", help="model name (names the output files)")
    g.add_argument(
        "--chip", help="cv180x (Duo, default), cv181x (Duo 256M / Duo S), cv182x, cv183x"
    )
    g.add_argument("--quantize", type=_modes, help="modes to build, e.g. int8,bf16")
    g.add_argument("--input-shape", type=_ints, metavar="N,C,H,W")
    g.add_argument("--input-name", help="input name in the exported ONNX")
    g.add_argument(
        "--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1) or a state_dict file"
    )
    g.add_argument("--opset", type=int, help="ONNX opset for PyTorch export (default 13)")
    g.add_argument("--resize", type=_ints, metavar="H,W", help="resize before center crop")
    g.add_argument("--resize-mode", choices=["stretch", "short_side", "letterbox"])
    g.add_argument("--mean", type=_floats, help="per-channel mean, 0–1 units")
    g.add_argument("--std", type=_floats, help="per-channel std, 0–1 units")
    g.add_argument("--pixel-format", choices=["rgb", "bgr", "gray"])
    g.add_argument("--calib-images", help="folder of calibration images, or builtin:natural")
    g.add_argument("--calib-count", type=int, help="number of calibration images")
    g.add_argument("--calib-method", choices=["kl", "mse", "max", "percentile9999"])
    g.add_argument(
        "--test-image",
        help="image (or folder of images) the build is verified on; default: 4 of your "
        "calibration images, or builtin:chelsea",
    )
    g.add_argument("--tolerance-int8", type=_floats, metavar="COS,EUCLID")
    g.add_argument("--tolerance-bf16", type=_floats, metavar="COS,EUCLID")
    g.add_argument(
        "--verify-int8",
        type=float,
        metavar="COS",
        help="minimum output cosine of the INT8 cvimodel vs fp32",
    )
    g.add_argument("--verify-bf16", type=float, metavar="COS")
    g.add_argument(
        "--fuse-preprocess",
        metavar="PIXEL_FORMAT",
        choices=[f for f in typing.get_args(FusedFormat) if f],
        help="the TPU does the preprocessing; the model takes uint8 images in this format",
    )
    g.add_argument(
        "--aligned-input",
        action="store_true",
        default=None,
        help="with --fuse-preprocess: rows aligned as the VPSS delivers frames",
    )
    g.add_argument(
        "--task",
        choices=["auto", "classify", "detect", "generic"],
        help="auto (default): classify when the output looks like class scores, else generic",
    )
    g.add_argument(
        "--cut-at",
        type=_names,
        metavar="TENSOR[,TENSOR]",
        help="end the TPU model at these ONNX tensors; the rest runs on the CPU (ONNX Runtime)",
    )
    g.add_argument("--pad-value", type=int, help="letterbox border colour (114 for YOLO)")
    g.add_argument("--histogram-bins", type=int, help="calibration histogram bins (2048)")
    g.add_argument("--tune-num", type=int, help="calibration tune images (5)")
    g.add_argument("--tolerance-transform", type=_floats, metavar="COS,EUCLID")
    g.add_argument(
        "--correctness",
        type=_floats,
        metavar="COS,EUCLID",
        help="cvimodel on the simulator vs the quantized MLIR",
    )
    g.add_argument(
        "--excepts",
        type=lambda t: [x for x in t.split(",") if x],
        metavar="NAME,...",
        help="tensors left out of the per-layer comparisons",
    )
    g.add_argument("--model-version", help="cvimodel format for an older board runtime (1.2)")
    g.add_argument("--inputs-type", choices=["AUTO", "FP32", "INT8", "BF16"])
    g.add_argument("--outputs-type", choices=["AUTO", "FP32", "INT8", "BF16"])
    g.add_argument(
        "--save-input-files",
        action="store_true",
        default=None,
        help="also write NAME_inputs.tar.gz: the inputs and a script replaying the "
        "exact compiler commands",
    )
    g.add_argument(
        "--batch-sizes",
        type=_ints,
        metavar="1,4",
        help="one cvimodel with a program per batch size, sharing the weights",
    )
    g.add_argument(
        "--target",
        metavar="METRIC>=X",
        help="mixed precision: keep the fewest layers in BF16 for INT8 to reach "
        "e.g. 'agree>=0.995' (decisive top-1 agreement), 'map>=0.95' "
        "(detectors: mAP@0.5 vs the fp32 detections) or 'cos>=0.995'",
    )
    g.add_argument(
        "--mix-qtable",
        metavar="FILE",
        help="mixed precision from this table of BF16 layers (no search)",
    )
    g.add_argument(
        "--mix-pick",
        type=int,
        metavar="N",
        help="use row N of the trade-off table (its # column) instead of the "
        "fewest BF16 layers that meet the target; no new search",
    )
    g.add_argument(
        "--mix-images", help="validation images for the search (folder or builtin:natural)"
    )
    g.add_argument("--mix-count", type=int, help="number of validation images (default 100)")
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any recipe key, e.g. --set calibration.seed=3 (TOML value)",
    )


_FLAG_KEYS = {
    "name": "name",
    "chip": "chip",
    "quantize": "quantize",
    "weights": "model.weights",
    "opset": "model.opset",
    "resize": "preprocess.resize",
    "resize_mode": "preprocess.resize_mode",
    "mean": "preprocess.mean",
    "std": "preprocess.std",
    "pixel_format": "preprocess.pixel_format",
    "calib_images": "calibration.images",
    "calib_count": "calibration.count",
    "calib_method": "calibration.method",
    "test_image": "test_image",
    "tolerance_int8": "tolerance.int8",
    "tolerance_bf16": "tolerance.bf16",
    "verify_int8": "tolerance.verify_int8",
    "verify_bf16": "tolerance.verify_bf16",
    "batch_sizes": "deploy.batch_sizes",
    "target": "mix.target",
    "mix_qtable": "mix.qtable",
    "mix_pick": "mix.pick",
    "mix_images": "mix.images",
    "mix_count": "mix.count",
    "aligned_input": "deploy.aligned_input",
    "task": "task",
    "cut_at": "model.outputs",
    "pad_value": "preprocess.pad_value",
    "histogram_bins": "calibration.histogram_bins",
    "tune_num": "calibration.tune_num",
    "tolerance_transform": "tolerance.transform",
    "correctness": "tolerance.correctness",
    "excepts": "tolerance.excepts",
    "model_version": "deploy.model_version",
    "inputs_type": "deploy.inputs_type",
    "outputs_type": "deploy.outputs_type",
    "save_input_files": "deploy.save_input_files",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from duotpu.config.recipe import parse_override_value

    out: dict[str, Any] = {}
    for flag, key in _FLAG_KEYS.items():
        v = getattr(args, flag, None)
        if v is not None:
            out[key] = v
    if getattr(args, "fuse_preprocess", None):
        out["deploy.fuse_preprocess"] = True
        out["deploy.pixel_format"] = args.fuse_preprocess
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_override_value(k, v.strip())
    from duotpu.config.recipe import path_keys, resolve_path

    for path_key, kind in path_keys().items():  # paths on the command line: from the cwd
        if path_key in out and path_key != "model.source":
            out[path_key] = resolve_path(out[path_key], Path.cwd(), kind)
    return out


def _recipe_from_args(args: argparse.Namespace):
    from duotpu.config.recipe import Recipe, load_recipe, recipe_from_dict, set_dotted

    overrides = _overrides(args)
    if args.recipe:
        base = load_recipe(args.recipe).to_dict()
    else:
        base = Recipe().to_dict()
    if args.source:
        src = args.source
        if not (src.startswith("torchvision:") or ":" in src and not Path(src).exists()):
            src = str(Path(src).expanduser().resolve())
        base["model"]["source"] = src
        if not overrides.get("name") and not args.recipe:
            stem = src.split(":")[-1] if ":" in src and not Path(src).exists() else Path(src).stem
            base["name"] = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    if args.input_shape or args.input_name:
        spec = dict(base["inputs"][0])
        if args.input_shape:
            spec["shape"] = args.input_shape
        if args.input_name:
            spec["name"] = args.input_name
        base["inputs"] = [spec]
    where = f"{args.recipe} and the command line" if args.recipe else "the command line"
    for dotted, value in overrides.items():
        set_dotted(base, dotted, value)
    return recipe_from_dict(base, where)


def _table(title: str, header: list[str], rows: list[list[str]], numeric_from: int = 1):
    """A rich table of ``rows`` under ``header`` without the columns that are empty in every
    row (no labels → no accuracy columns); headers never wrap or get cut."""
    from rich.table import Table

    keep = [i for i in range(len(header)) if i == 0 or any(r[i] for r in rows)]
    t = Table(title=title)
    for i in keep:
        t.add_column(
            header[i],
            justify="right" if i >= numeric_from else "left",
            no_wrap=True,
            min_width=len(header[i]),
        )
    for r in rows:
        t.add_row(*(r[i] for i in keep))
    return t


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------
def _build_json_head(result) -> dict[str, Any]:
    """What every ``build --json`` starts with: the build's name, folders and cvimodels."""
    return {
        "name": result.recipe.name,
        "out_dir": str(result.out_dir),
        "manifest": str(result.manifest),
        "report": str(result.report) if result.report else None,
        "models": {m: str(a.cvimodel) for m, a in result.models.items()},
    }


def _print_detect_build(console, result, as_json: bool) -> int:
    from duotpu.eval import report

    rows = report.detect_build(result)
    if as_json:
        print(
            json.dumps(
                {
                    **_build_json_head(result),
                    "detection": [
                        {
                            "model": r.model,
                            "cosine_min": r.cosine_min,
                            "size_bytes": r.size_bytes,
                            "ion_mb": r.ion_mb,
                            "detections": [d.to_json() for d in r.detections],
                        }
                        for r in rows
                    ],
                },
                indent=2,
            )
        )
        return EXIT_OK
    h = result.head
    console.print(
        f"detector: {h.kind} head, strides {h.strides}, {h.nc} classes; the TPU "
        f"returns {len(h.outputs)} head maps, the CPU decodes {h.num_boxes} "
        "candidate boxes and runs NMS"
    )
    console.print(
        report.detection_table(
            rows,
            f"{result.recipe.name} on the test image ({result.test_image_path.name}), "
            f"conf ≥ {result.recipe.detect.conf}",
        )
    )
    for mode, art in result.models.items():
        console.print(
            f"[bold]{mode.upper()}[/] {art.cvimodel}  (verified on the CV18xx "
            f"simulator, lowest head-map cosine vs fp32 "
            f"{min(art.cosine.values()):.4f})"
        )
    console.print(f"decode info: {result.out_dir / (result.recipe.name + '.detect.json')}")
    console.print(f"manifest: {result.manifest}")
    if result.report is not None:
        console.print(f"report: {result.report}")
    return EXIT_OK


def _print_generic_build(console, result, as_json: bool) -> int:
    """A model that is neither a classifier nor a detector: its outputs as tensors."""
    from rich.table import Table

    from duotpu.infer import runtime

    rows = {
        m: runtime.describe_outputs(a.outputs, result.reference) for m, a in result.models.items()
    }
    if as_json:
        fp32 = runtime.describe_outputs(result.reference)
        print(
            json.dumps(
                {
                    **_build_json_head(result),
                    "outputs": {"fp32": fp32, **rows},
                },
                indent=2,
            )
        )
        return EXIT_OK
    t = Table(
        title=f"{result.recipe.name} on the test image ({Path(str(result.test_image_path)).name})"
    )
    t.add_column("output")
    t.add_column("shape", justify="right")
    t.add_column("fp32 range", justify="right")
    for m in result.models:
        t.add_column(f"{m.upper()} cos", justify="right")
    for o in runtime.describe_outputs(result.reference):
        t.add_row(
            o["name"],
            "×".join(map(str, o["shape"])),
            f"{o['min']:.3g} … {o['max']:.3g}",
            *[
                f"{next(x for x in rows[m] if x['name'] == o['name'])['cosine_vs_fp32']:.4f}"
                for m in result.models
            ],
        )
    console.print(t)
    _print_verified(console, result)
    return EXIT_OK


def _print_build(console, result, labels, as_json: bool) -> int:
    from duotpu.eval import report

    if result.head is not None:
        return _print_detect_build(console, result, as_json)
    if result.recipe.task == "generic":
        return _print_generic_build(console, result, as_json)
    rows = report.classify_build(result)
    if as_json:
        print(
            json.dumps(
                {
                    **_build_json_head(result),
                    "classification": report.as_json(rows, labels),
                },
                indent=2,
            )
        )
        return EXIT_OK
    console.print(
        report.classification_table(
            rows,
            labels,
            f"{result.recipe.name} on the test image ({Path(str(result.test_image_path)).name})",
        )
    )
    _print_verified(console, result)
    if not report.top1_agrees(rows):
        console.print("[yellow]note:[/] the models' top-1 classes differ on the test image.")
    return EXIT_OK


def _add_scale_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run independent work as N parallel tasks on a local Ray instance "
        "(started and stopped here)",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="join this Ray cluster instead (default $RAY_ADDRESS); its nodes need duotpu",
    )


def _executor(args: argparse.Namespace):
    """The executor the flags ask for (serial without them; demo has none)."""
    from duotpu.compiler.executor import executor

    return executor(getattr(args, "workers", 0) or 0, getattr(args, "ray_address", None))


def cmd_build_many(args: argparse.Namespace) -> int:
    from duotpu.builder.many import build_many
    from duotpu.config.recipe import load_recipe

    overrides = _overrides(args)  # --set, as `duotpu build` reads it
    recipes = [load_recipe(Path(r), overrides) for r in args.recipes]
    con = _console()
    with _executor(args) as ex:
        con.print(
            f"building {len(recipes)} recipe(s) "
            + (f"on Ray, {ex.workers} worker(s)" if ex.name == "ray" else "one after another")
        )

        def done(b) -> None:
            mark = "[green]✓[/]" if b.ok else "[red]✗[/]"
            why = b.error.splitlines()[0][:60] if b.error else ""
            con.print(f"{mark} {b.name:<24} {b.seconds:7.1f} s  {why}")

        results = build_many(
            recipes,
            out_root=Path(args.out_root) if args.out_root else None,
            executor=ex,
            on_done=done,
        )
    if args.json:
        print(json.dumps([_jsonable(b.__dict__) for b in results], indent=2))
    else:
        con.print(_many_table(results))
    return EXIT_OK if all(b.ok for b in results) else EXIT_FAIL


def _jsonable(d: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _many_table(results) -> Any:
    def cell(b, mode: str, key: str, spec: str) -> str:
        v = b.models.get(mode, {}).get(key)
        return "" if v is None else format(v, spec)

    rows = [
        [
            b.name,
            "built" if b.ok else ("partial" if b.models else "failed"),
            f"{b.seconds:.0f}" + (" (cached)" if b.cached else ""),
            cell(b, "int8", "cosine", ".4f"),
            cell(b, "bf16", "cosine", ".4f"),
            cell(b, "int8", "ion_mb", ".1f"),
            cell(b, "int8", "est_ms", ".1f"),
            b.node,
        ]
        for b in results
    ]
    t = _table(
        f"{len(results)} builds",
        ["recipe", "outcome", "build s", "INT8 cos", "BF16 cos", "ION MB", "est. ms", "node"],
        rows,
        numeric_from=2,
    )
    failed = [b for b in results if b.error]
    if failed:
        t.caption = "; ".join(f"{b.name}: {b.error.splitlines()[0]}" for b in failed)
    return t


def cmd_build(args: argparse.Namespace) -> int:
    from duotpu.builder import pipeline
    from duotpu.core import labels as labels_mod

    if not args.source and not args.recipe:
        raise ConfigError(
            "Nothing to build: give a model (an .onnx or .pt file, "
            "'torchvision:NAME' or 'package.module:function') or --recipe FILE."
        )
    recipe = _recipe_from_args(args)
    console = _console()
    progress = StageProgress(console)
    console.print(
        f"building [bold]{recipe.name}[/] for {recipe.chip}: "
        f"{', '.join(m.upper() for m in recipe.quantize)}"
    )
    partial: PartialBuild | None = None
    try:
        with _executor(args) as ex:
            result = pipeline.build(
                recipe,
                Path(args.out) if args.out else None,
                Path(args.work_dir) if args.work_dir else None,
                progress,
                executor=ex,
            )
    except PartialBuild as e:
        partial, result = e, e.result
    finally:
        progress.close()
    labels = (
        labels_mod.read_labels(Path(args.labels))
        if args.labels
        else (labels_mod.imagenet_classes() if _outputs_1000(result) else None)
    )
    code = _print_build(console, result, labels, args.json)
    if result.inputs_archive is not None and not args.json:
        console.print(f"inputs and replay script: {result.inputs_archive}")
    if result.mix is not None:
        code = _print_mix(console, result, args.json) or code
    if partial is not None:
        return _print_partial(partial)
    return code


def _print_verified(console, result) -> None:
    """One line per delivered cvimodel: where it is and how it verified."""
    for mode, art in result.models.items():
        if len(art.per_image) > 1:
            how = (
                f"on {len(art.per_image)} images: mean cosine vs fp32 "
                f"{min(art.cosine.values()):.4f}, worst image {min(art.per_image):.4f}"
            )
        else:
            how = f"cosine vs fp32 {min(art.cosine.values()):.4f}"
        where = (
            "the CV18xx simulator"
            if art.simulated
            else "its quantized MLIR: the simulator cannot load it"
        )
        console.print(f"[bold]{mode.upper()}[/] {art.cvimodel}  (verified on {where}, {how})")
    console.print(f"manifest: {result.manifest}")
    if result.report is not None:
        console.print(f"report: {result.report}")


def _print_partial(e: PartialBuild) -> int:
    """What was delivered and what failed; the exit code of a partial build."""
    from rich.markup import escape

    con = _err_console()
    got = ", ".join(m.upper() for m in e.result.models)
    for mode, err in e.failed.items():
        con.print(f"[red bold]{mode.upper()} failed:[/] {escape(str(err))}", highlight=False)
    con.print(
        f"[yellow bold]partial build:[/] delivered {got} (verified); not delivered: "
        f"{', '.join(m.upper() for m in e.failed)}. Exit code {EXIT_PARTIAL}."
    )
    return EXIT_PARTIAL


def _print_mix(console, result, as_json: bool) -> int:
    """The mixed-precision trade-off table; non-zero when the target was not reached."""
    from rich.table import Table

    from duotpu.builder import mixprec

    mix = result.mix
    rows = mix.rows
    if not as_json:
        t = Table(title=f"mixed precision: {mix.target or 'given table'}")
        for col in mixprec.TABLE_HEADER:
            t.add_column(col, justify="right" if col not in ("", "candidate") else "left")
        for cells in mixprec.table_cells(rows, mix.chosen):
            t.add_row(*cells)
        console.print(t)
        console.print(
            f"BF16 layers: {result.out_dir / (result.recipe.name + '.qtable')} "
            "(edit it and build with --mix-qtable FILE; --mix-pick N uses row N "
            "instead)"
        )
    best = mix.best
    if mix.picked:
        if mix.target and not best.meets:
            _err_console().print(
                f"[yellow]note:[/] row {mix.chosen + 1} ('{best.label}', "
                f"{best.metric:.4f}) was picked; it does not meet "
                f"{mix.target}."
            )
        return EXIT_OK
    if mix.met:
        return EXIT_OK
    _err_console().print(
        f"[yellow bold]target not reached:[/] no mix reached {mix.target}; the best found is "
        f"'{best.label}' with {best.metric:.4f} (kept as {result.recipe.name}_"
        f"{result.recipe.chip}_mix.cvimodel). Try more or more typical calibration images "
        "(calibration.images / count), another calibration.method, a larger mix.max_layers, or "
        "BF16 for the whole model" + (" (pure BF16 reaches the target)." if mix.bf16_meets else ".")
    )
    return EXIT_FAIL


def _outputs_1000(result) -> bool:
    ref = next(iter(result.reference.values()))
    return ref.size // ref.shape[0] == 1000


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib import resources

    args.recipe = str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml")
    args.source = None
    console = _console()
    console.print(
        "[bold]duotpu demo[/]: EfficientNet-Lite0 (ImageNet weights) → INT8 and BF16 "
        "cvimodels for the Milk-V Duo (cv180x), verified on the simulator, then the "
        "cat photo classified by each."
    )
    return cmd_build(args)


def _ion_overrides(items: list[str]) -> dict[str, float]:
    from duotpu.compiler.cvimodel import BOARDS

    out = {}
    for item in items:
        key, _, val = item.partition("=")
        if key not in BOARDS or not val:
            raise ConfigError(
                f"--ion takes BOARD=MB with BOARD one of {', '.join(BOARDS)}; got {item!r}."
            )
        try:
            out[key] = float(val)
        except ValueError:
            raise ConfigError(f"--ion {item!r}: {val!r} is not a number of MB.") from None
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    from duotpu.builder.manifest import listed_model
    from duotpu.compiler import cvimodel, latency

    ion = _ion_overrides(args.ion)
    infos = [cvimodel.read_cvimodel(Path(m)) for m in args.models]
    estimates = []
    for info in infos:
        info.fit = cvimodel.board_fit(info, ion)
        listed = listed_model(info.path)
        names = latency.layer_names(listed.tensor_info if listed else None)
        est = latency.estimate(info.path)
        estimates.append((est, names))
    if args.json:
        data = [
            i.to_dict() | {"estimate": latency.as_dict(e, n, args.layers or 10)}
            for i, (e, n) in zip(infos, estimates)
        ]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return EXIT_OK
    con = _console()
    for info, (est, names) in zip(infos, estimates):
        con.print(f"[bold]{info.path}[/]  ({info.file_size / 1e6:.2f} MB, md5 {info.md5_status})")
        con.print(
            f"  model {info.name}, chip [bold]{info.chip}[/], cvimodel {info.version}, "
            f"built {info.build_time} by tpu_mlir {info.mlir_version}"
        )
        con.print(
            f"  board memory (ION) needed: [bold]{info.ion_mb:.2f} MB[/] "
            f"({info.ion_bytes} bytes): weights {info.weight_bytes} B, sections "
            f"{sum(s.size for s in info.sections)} B"
        )
        for k, p in enumerate(info.programs):
            t = Table(
                title=f"program {k}: batch {p.batch_num}, shared gmem {p.shared_gmem} B, "
                f"private gmem {p.private_gmem} B, io {p.io_bytes} B, routines "
                f"{'+'.join(p.routines)}",
                title_justify="left",
            )
            for col in (
                "",
                "name",
                "shape",
                "dtype",
                "qscale",
                "zero point",
                "pixel format",
                "aligned",
            ):
                t.add_column(col)
            for kind, tensors in (("in", p.inputs), ("out", p.outputs)):
                for x in tensors:
                    t.add_row(
                        kind,
                        x.name,
                        "x".join(map(str, x.shape)),
                        x.dtype,
                        f"{x.qscale:.6g}",
                        f"{x.zero_point:g}",
                        x.pixel_format or "—",
                        "yes" if x.aligned else "no",
                    )
            con.print(t)
        st = Table(title="sections", title_justify="left")
        for col in ("type", "name", "size", "offset"):
            st.add_column(col)
        for s in info.sections:
            st.add_row(s.type, s.name, str(s.size), str(s.offset))
        con.print(st)
        ft = Table(title="fits the board?", title_justify="left")
        for col in ("board", "chip", "ION assumed", "verdict"):
            ft.add_column(col)
        for f in info.fit.values():
            ft.add_row(
                f["board"],
                f["chip"],
                f"{f['ion_mb_assumed']:g} MB",
                ("[green]" if f["fits"] else "[red]") + f["verdict"] + "[/]",
            )
        con.print(ft)
        _print_estimate(con, est, names, args.layers)
        con.print(
            "[dim]ION assumed from the boards' stock images; set yours with --ion "
            "duo=MB (read it on the board from "
            "/sys/kernel/debug/ion/cvi_carveout_heap_dump/total_mem).[/]"
        )
    return EXIT_OK


def _print_estimate(con, est, names: dict[int, str], layers: int | None) -> None:
    """The board-free latency estimate: time, fps, compute vs memory, utilization."""
    from rich.table import Table

    con.print(
        f"  estimated on the board's TPU: [bold]{est.ms:.2f} ms[/] ({est.fps:.1f} fps) — "
        f"compute (TIU) {est.tiu_ms:.2f} ms, memory (TDMA) {est.tdma_ms:.2f} ms, "
        f"{est.bound}-bound; {est.macs / 1e9:.3f} GMAC at {est.mac_utilization * 100:.0f} % of "
        f"the {est.peak_gmacs:g} GMAC/s peak"
        + (f"; {est.cpu_routines} CPU routine(s) not timed" if est.cpu_routines else "")
    )
    if layers:
        t = Table(title=f"the {layers} most expensive layers (estimate)", title_justify="left")
        for col in ("layer", "TIU ms", "TDMA ms", "MMAC"):
            t.add_column(col, justify="left" if col == "layer" else "right")
        for lt in est.top_layers(layers):
            t.add_row(
                names.get(lt.layer, f"#{lt.layer}"),
                f"{lt.tiu_ms:.3f}",
                f"{lt.tdma_ms:.3f}",
                f"{lt.macs / 1e6:.1f}",
            )
        con.print(t)


def _class_names(args, n_classes: int):
    from duotpu.core import labels as labels_mod

    if getattr(args, "labels", None):
        return labels_mod.read_labels(Path(args.labels))
    return labels_mod.imagenet_classes() if n_classes == 1000 else None


def _top_k(args, model, items, outs, key: str) -> list[dict]:
    """Per input: the top-k classes of the model's first output, with names."""
    from duotpu.infer import runtime

    names = _class_names(args, 0) if getattr(args, "labels", None) else None
    tops = runtime.top_k(model, outs, args.topk, names)
    return [{key: str(item), "top": top} for item, top in zip(items, tops)]


def _detect_results(args, model, items, outs, key: str) -> list[dict]:
    """Per input: the detector's boxes (decoded and NMS-ed on the CPU, in image pixels); with
    ``--save``, the images with their boxes drawn."""
    from duotpu.core.detect import draw
    from duotpu.infer import runtime

    found = runtime.detect(model, [Path(i) for i in items], outs, conf=args.conf, iou=args.iou)
    results = []
    for item, dets in zip(items, found):
        p = Path(item)
        results.append({key: str(item), "detections": [d.to_json() for d in dets]})
        if args.save and p.suffix.lower() not in (".npz", ".npy"):
            target = Path(args.save)
            if len(items) > 1 or target.is_dir():
                target = target / f"{p.stem}.jpg"
            results[-1]["saved"] = str(draw(p, dets, target))
    return results


def _print_detections(con, results: list[dict], key: str, where: str) -> None:
    from rich.table import Table

    for r in results:
        t = Table(
            title=f"{r[key]} ({where}): {len(r['detections'])} object(s)", title_justify="left"
        )
        for col in ("#", "class", "score", "box x1, y1, x2, y2"):
            t.add_column(col, justify="right" if col != "class" else "left")
        for k, d in enumerate(r["detections"], 1):
            t.add_row(
                str(k),
                f"{d['name']} ({d['class']})",
                f"{d['score']:.3f}",
                ", ".join(f"{v:.0f}" for v in d["box"]),
            )
        con.print(t)
        if "saved" in r:
            con.print(f"drawn: {r['saved']}")


def _results(args, model, items, outs, key: str, tensors=None) -> list[dict]:
    if model.head is not None:
        return _detect_results(args, model, items, outs, key)
    if model.recipe.task == "generic":
        return _generic_results(args, model, items, outs, key, tensors)
    if getattr(args, "save", None):
        raise ConfigError(
            '--save draws boxes; it is for detectors (task = "detect"), and '
            f"{model.cvimodel.name} is a classifier."
        )
    return _top_k(args, model, items, outs, key)


def _generic_results(args, model, items, outs, key: str, tensors) -> list[dict]:
    """Per input: each output's shape, range and cosine to fp32; with --save, an npz each."""
    from duotpu.infer import runtime

    refs = None
    if tensors is not None and model.onnx is not None:
        names = runtime.fp32_output_names(model)
        refs = [dict(zip(names, r)) for r in runtime.fp32_reference(model, tensors)]
    results = []
    for i, (item, out) in enumerate(zip(items, outs)):
        if refs:
            out = runtime.as_reference_outputs(out, refs[i])
        row: dict[str, Any] = {
            key: str(item),
            "outputs": runtime.describe_outputs(out, refs[i] if refs else None),
        }
        if getattr(args, "save", None):
            target = Path(args.save)
            if len(items) > 1 or target.is_dir() or target.suffix != ".npz":
                target = target / f"{Path(str(item)).stem}.npz"
            row["saved"] = str(runtime.save_outputs(out, target))
        results.append(row)
    return results


def _print_generic(con, results: list[dict], key: str, where: str) -> None:
    from rich.table import Table

    for r in results:
        t = Table(title=f"{r[key]} ({where})", title_justify="left")
        for col in ("output", "shape", "min", "max", "mean", "cos vs fp32"):
            t.add_column(col, justify="left" if col == "output" else "right")
        for o in r["outputs"]:
            cos = o.get("cosine_vs_fp32")
            t.add_row(
                o["name"],
                "×".join(map(str, o["shape"])),
                f"{o['min']:.4g}",
                f"{o['max']:.4g}",
                f"{o['mean']:.4g}",
                f"{cos:.4f}" if cos is not None else "—",
            )
        con.print(t)
        if "saved" in r:
            con.print(f"outputs: {r['saved']}")


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.table import Table

    if args.board:  # the same, on a board over SSH
        args.inputs = args.images
        return cmd_board_run(args)

    from duotpu.compiler import latency
    from duotpu.infer import runtime

    model = runtime.open_model(args.model, args.recipe)
    for im in args.images:
        if not Path(im).is_file():
            raise ConfigError(f"The image {im} does not exist.")
    tensors = runtime.tensors_for(model, args.images)
    outs = runtime.infer_batched(model, tensors)
    results = _results(args, model, args.images, outs, "image", tensors)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(model.cvimodel),
                    "mode": model.mode,
                    "backend": "cv18xx simulator" if model.simulable else "quantized MLIR",
                    "results": results,
                    "estimate": latency.as_dict(latency.estimate(model.cvimodel), top=0),
                },
                indent=2,
            )
        )
        return EXIT_OK
    con = _console()
    batches = "+".join(str(p.inputs[0].shape[0]) for p in model.info.programs)
    fused = model.info.programs[0].inputs[0].pixel_format
    con.print(
        f"[bold]{model.cvimodel.name}[/] ({model.mode.upper()}, {model.info.chip}, "
        f"batch {batches}{', fused preprocess ' + fused if fused else ''}) on "
        + (
            "the CV18xx simulator"
            if model.simulable
            else "its quantized MLIR (the CV18xx simulator cannot load it)"
        )
    )
    if model.head is not None:
        _print_detections(con, results, "image", "CV18xx simulator")
        return EXIT_OK
    if model.recipe.task == "generic":
        _print_generic(con, results, "image", "CV18xx simulator")
        return EXIT_OK
    for r in results:
        t = Table(title=r["image"], title_justify="left")
        t.add_column("#", justify="right")
        t.add_column("class")
        t.add_column("probability", justify="right")
        for k, x in enumerate(r["top"], 1):
            t.add_row(str(k), f"{x['name']} ({x['class']})", f"{x['probability']:.4f}")
        con.print(t)
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from duotpu.eval import evaluate, report

    target = Path(args.model)
    con = _console()
    with _executor(args) as ex, Progress(console=con, transient=True) as prog:
        tasks: dict[str, Any] = {}

        def progress(mode: str, done: int, total: int) -> None:
            if mode not in tasks:
                tasks[mode] = prog.add_task(mode.upper(), total=total)
            prog.update(tasks[mode], completed=done)

        data = evaluate.evaluate_build(
            target,
            Path(args.images),
            recipe=args.recipe,
            backend=args.backend,
            margin=args.margin,
            class_names=_class_names(args, 1000 if args.labels is None else 0),
            limit=args.limit or 0,
            check=args.check or 0,
            layers=args.layers or 0,
            progress=progress,
            log=con.print,
            executor=ex,
        )
    task = str(data.get("task", ""))
    tables = {"detect": _detect_eval_table, "generic": _generic_eval_table}
    con.print(tables.get(task, _eval_table)(data))
    for mode, layers in data.get("per_layer", {}).items():
        worst = ", ".join(f"{n} {c:.4f}" for n, c in evaluate.least_similar(layers))
        con.print(f"  {mode.upper()} least similar tensors: {worst}")
    out = Path(args.out) if args.out else (target if target.is_dir() else target.parent) / "eval"
    jpath, hpath = report.write_eval_report(out, data)
    con.print(f"report: {jpath} and {hpath}")
    return EXIT_OK


def _generic_eval_table(data: dict) -> Any:
    from rich.table import Table

    t = Table(title=f"{data['name']}: {data['images']} images, each output against fp32")
    for col in ("model", "output", "shape", "cos mean", "cos worst", "img/s"):
        t.add_column(col, justify="left" if col in ("model", "output") else "right")
    for mode, d in data["modes"].items():
        for n, c in d["cosine_mean"].items():
            t.add_row(
                mode.upper(),
                n,
                "×".join(map(str, data["fp32"][n]["shape"])),
                f"{c:.4f}",
                f"{d['cosine_worst'][n]:.4f}",
                f"{d['images_per_second']:.2f}",
            )
    return t


def _eval_table(data: dict) -> Any:
    rows = []
    fpm = data["fp32"]
    if "top1_acc" in fpm:
        rows.append(
            ["fp32", "", "", "", "", "", "", f"{fpm['top1_acc']:.3f}", f"{fpm['top5_acc']:.3f}", ""]
        )
    for mode, d in data["modes"].items():
        rows.append(
            [
                mode.upper(),
                f"{d['top1_agree']:.3f}",
                f"{d['decisive_top1_agree']:.3f} ({d['decisive_n']})",
                f"{d['top5_contains_fp32_top1']:.3f}",
                f"{d['cosine_mean']:.4f}",
                f"{d['cosine_worst']:.4f}",
                f"{d['kl_mean']:.4f}",
                "" if d["top1_acc"] is None else f"{d['top1_acc']:.3f}",
                "" if d["top5_acc"] is None else f"{d['top5_acc']:.3f}",
                f"{d['images_per_second']:.1f}",
            ]
        )
    t = _table(
        f"{data['name']}: quantized vs fp32 on {data['images']} images",
        [
            "model",
            "agree",
            "decisive (n)",
            "top-5 ∋",
            "cos mean",
            "cos worst",
            "KL",
            "acc@1",
            "acc@5",
            "img/s",
        ],
        rows,
    )
    t.caption = (
        f"agree: top-1 equals fp32's; decisive: on images where fp32's top-1 leads by ≥ "
        f"{data['margin']}; top-5 ∋: the top-5 holds fp32's top-1; acc: against the labels"
    )
    return t


def _detect_eval_table(data: dict) -> Any:
    rows = []
    if data["fp32"]:
        rows.append(
            [
                "fp32",
                "",
                "",
                "",
                "",
                f"{data['fp32']['map50']:.3f}",
                f"{data['fp32']['map50_95']:.3f}",
                "",
            ]
        )
    for mode, d in data["modes"].items():
        rows.append(
            [
                mode.upper(),
                f"{d['map50_vs_fp32']:.3f}",
                str(d["fp32_objects"]),
                f"{d['detections_per_image']:.2f}",
                f"{min(d['cosine_mean'].values()):.4f}",
                "" if d["map50"] is None else f"{d['map50']:.3f}",
                "" if d["map50_95"] is None else f"{d['map50_95']:.3f}",
                f"{d['images_per_second']:.2f}",
            ]
        )
    t = _table(
        f"{data['name']}: quantized detections vs fp32 on {data['images']} images",
        [
            "model",
            "mAP50 vs fp32",
            "fp32 objs",
            "dets/img",
            "worst map cos",
            "mAP50",
            "mAP50-95",
            "img/s",
        ],
        rows,
    )
    t.caption = (
        "mAP50 vs fp32: the fp32 detections taken as ground truth; worst map cos: the "
        "lowest mean cosine of a head map; mAP50 / mAP50-95: against the labels"
    )
    return t


# --------------------------------------------------------------------------------------------
# duotpu board ...
# --------------------------------------------------------------------------------------------
def _open_board(args):
    import getpass

    from duotpu import board

    profile = board.resolve_board(args.board)
    prompt = getpass.getpass if sys.stdin.isatty() else None
    return board.Board(
        profile, accept_new_host_key=args.accept_new_host_key, password_prompt=prompt
    )


def _checked(b, models, force: bool, con) -> None:
    from duotpu import board

    for p in board.check_models(b, [Path(m) for m in models], force):
        con.print(f"[yellow]warning (--force):[/] {p}")


def cmd_board_add(args) -> int:
    from duotpu import board

    p = board.BoardProfile(
        name=args.name,
        host=args.host,
        port=args.port,
        user=args.user,
        key_file=args.key or "",
        password_env=args.password_env,
        sdk_dir=args.sdk_dir,
        work_dir=args.work_dir,
    )
    path = board.save_profile(p)
    _console().print(f"saved board '{p.name}' ({p.user}@{p.host}:{p.port}) to {path}")
    return EXIT_OK


def cmd_board_doctor(args) -> int:
    from duotpu import board

    con = _console()
    with _open_board(args) as b:
        d = board.doctor(b)
        p = b.profile
    if args.json:
        print(json.dumps(d.__dict__, indent=2))
        return EXIT_OK if not d.problems else EXIT_FAIL
    con.print(f"[bold]{p.user}@{p.host}:{p.port}[/]")
    con.print(
        f"  OS {d.os or '?'} on {d.arch or '?'}; SoC {d.soc or '?'} → TPU chip "
        f"{d.chip or 'unknown'}"
    )
    con.print(
        f"  TPU device: {'present' if d.tpu_device else 'MISSING'}; RAM "
        f"{d.mem_total_mb:.0f} MB ({d.mem_free_mb:.0f} MB available); ION heap "
        f"{'unreadable' if d.ion_mb is None else f'{d.ion_mb:.2f} MB'}"
    )
    con.print(
        f"  SDK at {p.sdk_dir}: {'ok' if d.sdk_ok else 'not usable'}; runtime "
        f"{d.runtime_version or '?'}"
    )
    for prob in d.problems:
        con.print(f"[red]problem:[/] {prob}")
    if not d.problems:
        con.print("[green]ready[/]")
    return EXIT_OK if not d.problems else EXIT_FAIL


def cmd_board_push(args) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from duotpu import board

    con = _console()
    with _open_board(args) as b:
        with Progress(
            "{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=con,
            transient=True,
        ) as prog:
            task = prog.add_task("uploading", total=None)
            rep = board.push(
                b,
                [Path(m) for m in args.models or []],
                Path(args.sdk) if args.sdk else None,
                args.force,
                lambda done, total: prog.update(task, completed=done, total=total),
            )
    for p in rep.problems:
        con.print(f"[yellow]warning (--force):[/] {p}")
    res = rep.result
    con.print(
        f"uploaded {len(res.uploaded)} file(s) ({res.bytes_sent / 1e6:.2f} MB), "
        f"{len(res.skipped)} unchanged"
    )
    return EXIT_OK


def _board_model(args):
    from duotpu.infer import runtime

    return runtime.open_model(args.model, getattr(args, "recipe", None))


def _board_inputs(model, items):
    from duotpu.infer import runtime

    tensors = []
    for item in items:
        p = Path(item)
        if not p.is_file():
            raise ConfigError(f"The input {item} does not exist.")
        if p.suffix == ".npz":
            with np.load(p) as z:
                tensors.append(np.array(z[z.files[0]]))
        else:
            tensors += runtime.tensors_for(model, [p])
    return tensors


def cmd_board_run(args) -> int:
    from duotpu import board
    from duotpu.infer import runtime

    model = _board_model(args)
    tensors = _board_inputs(model, args.inputs)
    con = _console()
    with _open_board(args) as b:
        _checked(b, [args.model], args.force, con)
        outs = board.run_model(b, model.cvimodel, model.info, tensors, model.input_name)
    outs = [runtime.apply_tail(model, o) for o in outs]  # a cut model: the rest on this CPU
    results = _results(args, model, args.inputs, outs, "input", tensors)
    if args.json:
        print(
            json.dumps(
                {"model": str(model.cvimodel), "board": b.profile.host, "results": results},
                indent=2,
            )
        )
        return EXIT_OK
    if model.head is not None:
        _print_detections(con, results, "input", f"on {b.profile.host}")
        return EXIT_OK
    if model.recipe.task == "generic":
        _print_generic(con, results, "input", f"on {b.profile.host}")
        return EXIT_OK
    for r in results:
        con.print(
            f"[bold]{r['input']}[/] on {b.profile.host}: "
            + ", ".join(f"{x['name']} {x['probability']:.3f}" for x in r["top"])
        )
    return EXIT_OK


def cmd_board_bench(args) -> int:
    from duotpu import board
    from duotpu.infer import runtime

    con = _console()
    measured = []
    with _open_board(args) as b:
        _checked(b, args.model, args.force, con)
        for path in args.model:
            model = runtime.open_model(path, getattr(args, "recipe", None))
            image = args.image or model.recipe.test_image or "builtin:chelsea"
            if Path(image).is_dir():
                from duotpu.core.images import list_files

                image = str(list_files(Path(image))[0])
            if image.startswith("builtin:"):
                from duotpu.core.images import builtin_photo

                tensor = runtime.tensors_for(model, [builtin_photo(image.split(":", 1)[1])])[0]
            else:
                tensor = _board_inputs(model, [image])[0]
            r = board.bench(b, model.cvimodel, tensor, model.input_name, args.count)
            measured.append((model.cvimodel, r, board.estimate_for(b.profile, model.cvimodel)))
        profile = b.profile
    fit = None
    if args.calibrate:
        profile, fit = board.calibrate(profile, [(p, r) for p, r, _ in measured])
        measured = [(p, r, board.estimate_for(profile, p)) for p, r, _ in measured]
    if args.json:
        print(
            json.dumps(
                {
                    "board": profile.name,
                    "models": [
                        {
                            "model": str(p),
                            "runs": r.runs,
                            "mean_ms": r.mean_ms,
                            "fps": r.fps,
                            "median_ms": r.median_ms,
                            "p90_ms": r.p90_ms,
                            "inference_ms": r.inference_ms,
                            "tdma_ms": r.tdma_ms,
                            "tiu_ms": r.tiu_ms,
                            "estimate": {
                                "ms": e.ms,
                                "tiu_ms": e.tiu_ms,
                                "tdma_ms": e.tdma_ms,
                            },
                        }
                        for p, r, e in measured
                    ],
                    "fitted": fit,
                },
                indent=2,
            )
        )
        return EXIT_OK
    for p, r, e in measured:
        con.print(
            f"[bold]{p.name}[/] on {profile.host}: {r.runs} runs, median "
            f"{r.median_ms:.2f} ms, p90 {r.p90_ms:.2f} ms, mean {r.mean_ms:.2f} ms, "
            f"{r.fps:.1f} fps"
        )
        if r.tpu_split:
            con.print("  TPU time: " + r.tpu_split)
        err = e.ms / r.median_ms - 1 if r.median_ms else 0.0
        con.print(
            f"  estimate{' (this board)' if any(board.fitted(profile).values()) else ''}: "
            f"{e.ms:.2f} ms (TIU {e.tiu_ms:.2f}, TDMA {e.tdma_ms:.2f}), {err * 100:+.0f} % vs "
            "the measured median"
        )
    if fit is not None:
        con.print(
            f"fitted to {profile.name}: compute scale {fit['tiu_scale']:g}, DDR "
            f"{fit['ddr_bytes_per_cycle']:g} bytes/cycle, {fit['tdma_overhead']:g} cycles per "
            "TDMA command — saved in its profile; later estimates for this board use them"
        )
    return EXIT_OK


def cmd_board_compare(args) -> int:
    from dataclasses import asdict

    from duotpu import board

    model = _board_model(args)
    tensor = _board_inputs(model, [args.input])[0]
    con = _console()
    with _open_board(args) as b:
        _checked(b, [args.model], args.force, con)
        rows = board.compare(b, model, tensor)
    if args.json:
        print(
            json.dumps(
                {"model": str(model.cvimodel), "outputs": [asdict(r) for r in rows]}, indent=2
            )
        )
        return EXIT_OK
    for row in rows:
        con.print(
            f"{row.output}: board vs simulator cosine {row.board_vs_simulator:.6f}"
            + (
                f", board vs fp32 {row.board_vs_fp32:.6f}, simulator vs fp32 "
                f"{row.simulator_vs_fp32:.6f}"
                if row.board_vs_fp32 is not None and row.simulator_vs_fp32 is not None
                else ""
            )
        )
        if not row.agrees:
            con.print(
                "[red]  the board disagrees with the simulator[/]: check the SDK version "
                "and the input preprocessing."
            )
    return EXIT_OK


def cmd_legacy(args: argparse.Namespace) -> int:
    from duotpu.builder import legacy

    argv = [args.tool, *args.tool_args]
    con = _console()
    progress = StageProgress(con)
    try:
        res = legacy.run_legacy(argv, Path.cwd(), progress)
    finally:
        progress.close()
    for f in res.files:
        con.print(f"[bold]{res.tool}[/] wrote {f}")
    for n in res.notes:
        con.print(f"[yellow]note:[/] {n}")
    con.print("the same in duotpu, as a recipe (duotpu build --recipe FILE):")
    sys.stdout.flush()
    print(res.recipe.to_toml(), flush=True)  # plain: a terminal-wrapped TOML would not parse
    return EXIT_OK


def _add_detect_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save",
        metavar="OUT|DIR",
        help="detectors: draw the boxes on the image (OUT.jpg); generic models: the outputs "
        "as OUT.npz (a folder for several inputs)",
    )
    p.add_argument(
        "--conf",
        type=float,
        help="detectors: lowest score kept (default: the recipe's detect.conf)",
    )
    p.add_argument("--iou", type=float, help="detectors: NMS overlap (default: detect.iou)")


def build_parser() -> argparse.ArgumentParser:
    """The ``duotpu`` argument parser."""
    from duotpu import __version__

    p = argparse.ArgumentParser(
        prog="duotpu",
        description="PyTorch / ONNX → verified, quantized cvimodels for the "
        "Milk-V Duo TPU (CV180x / CV181x), without Docker.",
    )
    p.add_argument("--version", action="version", version=f"duotpu {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser(
        "build",
        help="export → transform → calibrate → deploy → verify",
        description="Build a model into verified cvimodels. SOURCE is an .onnx "
        "or .pt file, torchvision:NAME or package.module:function; "
        "or give everything in --recipe.",
    )
    b.add_argument("source", nargs="?", help="the model (overrides model.source)")
    b.add_argument("--recipe", "-r", help="recipe TOML file")
    b.add_argument("--out", "-o", help="folder for the final files (default build/NAME)")
    b.add_argument("--work-dir", help="folder for intermediate files (default OUT/work)")
    b.add_argument("--labels", help="class names file (one per line, or synset_words.txt)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    _add_recipe_flags(b)
    _add_scale_flags(b)
    b.set_defaults(func=cmd_build)

    bm = sub.add_parser(
        "build-many",
        help="build several recipes, in parallel with --workers N or on a Ray cluster",
        description="Build every RECIPE (TOML) into OUT_ROOT/NAME, as `duotpu build` would; "
        "a failed recipe does not stop the others. A table of every build at the end.",
    )
    bm.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe TOML files")
    bm.add_argument("--out-root", help="folder for the builds' folders (default build/)")
    bm.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field in every recipe",
    )
    bm.add_argument("--json", action="store_true", help="print the results as JSON")
    bm.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    _add_scale_flags(bm)
    bm.set_defaults(func=cmd_build_many)

    d = sub.add_parser(
        "demo",
        help="the built-in demo: EfficientNet-Lite0 → INT8 + BF16, "
        "verified, then the cat photo classified",
    )
    d.add_argument(
        "--out", "-o", help="folder for the final files (default build/efficientnet_lite0)"
    )
    d.add_argument("--work-dir", help="folder for intermediate files")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    d.add_argument("--labels", default=None, help=argparse.SUPPRESS)
    _add_recipe_flags(d)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser(
        "info",
        help="what a cvimodel holds and whether it fits each Duo board",
        description="Read cvimodel files: chip, version, programs, inputs and "
        "outputs, sections, board memory need and fit per board.",
    )
    i.add_argument("models", nargs="+", metavar="MODEL.cvimodel")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument(
        "--layers",
        type=int,
        nargs="?",
        const=10,
        metavar="N",
        help="the N (10) most expensive layers of the latency estimate",
    )
    i.add_argument(
        "--ion",
        action="append",
        default=[],
        metavar="BOARD=MB",
        help="ION heap of a board (duo, duo256m, duos) instead of the assumed one",
    )
    i.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    i.set_defaults(func=cmd_info)

    pr = sub.add_parser(
        "predict",
        help="classify images with a cvimodel on the CV18xx simulator",
        description="Preprocess images as at build time (recipe beside the "
        "model, or --recipe) and run the cvimodel on the simulator.",
    )
    pr.add_argument("model", metavar="MODEL.cvimodel")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--recipe", help="recipe the model was built with (default: beside it)")
    pr.add_argument("--labels", help="class names: one per line, or synset_words.txt")
    pr.add_argument("--topk", type=int, default=5)
    _add_detect_flags(pr)
    pr.add_argument("--json", action="store_true")
    pr.add_argument(
        "--board",
        help="run on this board over SSH instead of the simulator (saved NAME or user@host[:port])",
    )
    pr.add_argument("--accept-new-host-key", action="store_true")
    pr.add_argument("--force", action="store_true")
    pr.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser(
        "eval",
        help="accuracy of built models against fp32 (and labels)",
        description="Evaluate the cvimodels of a build folder (or one cvimodel) "
        "on a folder of images: agreement with fp32, or accuracy "
        "when subfolders name classes; writes report.json/html.",
    )
    ev.add_argument("model", metavar="BUILD_DIR|MODEL.cvimodel")
    ev.add_argument(
        "--images",
        required=True,
        help="folder of images (classifiers: subfolders = classes; detectors: "
        "YOLO layout images/ + labels/)",
    )
    ev.add_argument("--recipe", help="recipe the model was built with (default: beside it)")
    ev.add_argument("--labels", help="class names file (for class-named subfolders)")
    ev.add_argument(
        "--backend",
        choices=["mlir", "cvimodel"],
        default="mlir",
        help="mlir: tpu_mlir's interpreter on the quantized MLIR (fast, checked "
        "against the simulator); cvimodel: the CV18xx simulator",
    )
    ev.add_argument(
        "--check",
        type=int,
        default=2,
        metavar="N",
        help="check the fast path against the simulator on N images (default 2)",
    )
    ev.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="fp32 top-1 minus top-2 probability for an image to be decisive",
    )
    ev.add_argument(
        "--layers",
        type=int,
        default=2,
        metavar="N",
        help="per-layer similarity on N images (0: skip)",
    )
    ev.add_argument("--limit", type=int, default=0, help="use at most this many images")
    ev.add_argument("--out", help="report folder (default BUILD_DIR/eval)")
    ev.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    _add_scale_flags(ev)
    ev.set_defaults(func=cmd_eval)

    lg = sub.add_parser(
        "legacy",
        help="run an old cvitek command line as written "
        "(model_transform.py, run_calibration.py, "
        "model_deploy.py)",
        description="Old tutorials' command lines, run with tpu_mlir through "
        "duotpu; prints the equivalent recipe.",
    )
    lg.add_argument(
        "tool", metavar="TOOL.py", help="model_transform.py, run_calibration.py or model_deploy.py"
    )
    lg.add_argument("tool_args", nargs=argparse.REMAINDER, metavar="...")
    lg.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    lg.set_defaults(func=cmd_legacy)

    bd = sub.add_parser("board", help="deploy, run, benchmark and diagnose a Duo over SSH")
    bsub = bd.add_subparsers(dest="board_command", metavar="BOARD_COMMAND", required=True)

    def board_args(q, models=False):
        q.add_argument(
            "--board",
            help="saved board NAME or user@host[:port] (default: the "
            "saved one, else root@192.168.42.1)",
        )
        q.add_argument(
            "--accept-new-host-key",
            action="store_true",
            help="trust the board's host key the first time (its fingerprint is shown otherwise)",
        )
        q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
        if models:
            q.add_argument(
                "--force",
                action="store_true",
                help="push/run even when the model does not fit the board",
            )
            q.add_argument("--recipe", help="recipe the model was built with")

    a = bsub.add_parser("add", help="save a board profile")
    a.add_argument("name")
    a.add_argument("--host", default="192.168.42.1")
    a.add_argument("--port", type=int, default=22)
    a.add_argument("--user", default="root")
    a.add_argument(
        "--key", help="private key file (else the password from --password-env or a prompt)"
    )
    a.add_argument(
        "--password-env",
        default="DUOTPU_BOARD_PASSWORD",
        help="environment variable holding the password",
    )
    a.add_argument("--sdk-dir", default="/root/tpu-sdk")
    a.add_argument("--work-dir", default="/root/duotpu")
    a.set_defaults(func=cmd_board_add)
    dc = bsub.add_parser("doctor", help="check the board: OS, TPU, memory, ION, SDK, runtime")
    board_args(dc)
    dc.add_argument("--json", action="store_true")
    dc.set_defaults(func=cmd_board_doctor)
    pu = bsub.add_parser("push", help="upload the runtime SDK and models (unchanged files skipped)")
    board_args(pu, models=True)
    pu.add_argument("models", nargs="*", metavar="MODEL.cvimodel")
    pu.add_argument(
        "--sdk", help="local SDK folder (tpu-sdk-cv180x, tpu-sdk-sg200x, cvitek_tpu_sdk)"
    )
    pu.set_defaults(func=cmd_board_push)
    ru = bsub.add_parser("run", help="run a model on the board: images or npz in, top-k out")
    board_args(ru, models=True)
    ru.add_argument("model", metavar="MODEL.cvimodel")
    ru.add_argument("inputs", nargs="+", metavar="IMAGE|NPZ")
    ru.add_argument("--labels")
    ru.add_argument("--topk", type=int, default=5)
    _add_detect_flags(ru)
    ru.add_argument("--json", action="store_true")
    ru.set_defaults(func=cmd_board_run)
    be = bsub.add_parser("bench", help="latency on the board: median, p90, TPU time split")
    board_args(be, models=True)
    be.add_argument("model", metavar="MODEL.cvimodel", nargs="+")
    be.add_argument("--count", type=int, default=50)
    be.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the latency estimate's constants to this board and save them in its profile",
    )
    be.add_argument("--image", help="input image (default: the build's test image)")
    be.add_argument("--json", action="store_true")
    be.set_defaults(func=cmd_board_bench)
    co = bsub.add_parser("compare", help="board vs host simulator vs fp32, per output")
    board_args(co, models=True)
    co.add_argument("model", metavar="MODEL.cvimodel")
    co.add_argument("input", metavar="IMAGE|NPZ")
    co.add_argument("--json", action="store_true")
    co.set_defaults(func=cmd_board_compare)
    return p


def _stop_on_signals() -> dict:
    """SIGINT and SIGTERM sent to duotpu alone (a supervisor, `timeout`, `kill PID`) stop every
    child process within a second or two and end the command like Ctrl-C: finished stages are
    kept, the exit code is 128 + the signal (130, 143)."""
    from duotpu import compiler
    from duotpu.config.errors import Interrupted

    fired: list[int] = []

    def handler(signum, _frame):
        compiler.stop_children(signum)
        if not fired:  # a second signal while stopping must not interrupt the clean-up
            fired.append(signum)
            raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (main() called from a thread)
            pass
    return previous


def _report_error(e: BaseException, debug: bool) -> int:
    from rich.markup import escape

    con = _err_console()
    if debug:
        con.print(traceback.format_exc(), markup=False, highlight=False)
    if isinstance(e, ToolchainError):
        con.print(f"[red bold]error:[/] {escape(str(e))}")
        if e.tail:
            con.print(f"[dim]last lines of {e.log_path}:[/]")
            con.print(e.tail, markup=False, highlight=False)
    elif isinstance(e, ToleranceError):
        con.print(f"[red bold]verification failed:[/] {escape(str(e))}")
    elif isinstance(e, BuildFailed):
        con.print(f"[red bold]{len(e.errors)} parts of the build failed:[/]")
        for i, sub in enumerate(e.errors, 1):
            con.print(f"[red]({i})[/] {escape(str(sub))}", highlight=False)
        return EXIT_FAIL
    elif isinstance(e, DuoTpuError):
        con.print(f"[red bold]error:[/] {escape(str(e))}")
    else:
        con.print(
            f"[red bold]internal error:[/] {type(e).__name__}: {escape(str(e))}. Run again with "
            "--debug for the traceback and report it."
        )
    return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``duotpu`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    previous = _stop_on_signals()
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        from duotpu import compiler

        compiler.stop_children(getattr(e, "signum", signal.SIGINT))
        _err_console().print(
            "[yellow]interrupted[/] — run the same command again to resume; "
            "finished stages are kept."
        )
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    except Exception as e:  # noqa: BLE001 — the one place errors become messages
        return _report_error(e, debug)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
