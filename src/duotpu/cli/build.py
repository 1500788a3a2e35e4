"""``duotpu build``, ``build-many`` and ``demo``: one library call each, the result rendered."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import duotpu
from duotpu import ConfigError, PartialBuild
from duotpu.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_PARTIAL,
    StageProgress,
    _console,
    _err_console,
    _executor,
    _table,
)
from duotpu.cli.tables import classification_table, detection_table


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    given = {k[len("flag:") :]: v for k, v in vars(args).items() if k.startswith("flag:")}
    return duotpu.command_line_overrides(given, getattr(args, "set", None) or [])


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
        # the cut the build chose itself, and every cut it tried ([] when it tried none)
        "cut_at": list(result.recipe.model.outputs),
        "tried_cuts": list(result.tried_cuts),
    }


def _print_detect_build(console, result, as_json: bool) -> int:
    rows = duotpu.detect_build(result)
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
        detection_table(
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
    _print_fit(console, result)
    console.print(f"decode info: {result.out_dir / (result.recipe.name + '.detect.json')}")
    console.print(f"manifest: {result.manifest}")
    if result.report is not None:
        console.print(f"report: {result.report}")
    return EXIT_OK


def _print_generic_build(console, result, as_json: bool) -> int:
    """A model that is neither a classifier nor a detector: its outputs as tensors."""
    from rich.table import Table

    rows = {
        m: duotpu.describe_outputs(a.outputs, result.reference) for m, a in result.models.items()
    }
    if as_json:
        fp32 = duotpu.describe_outputs(result.reference)
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
    what = "test input" if result.recipe.tensor_inputs else "test image"
    t = Table(
        title=f"{result.recipe.name} on the {what} ({Path(str(result.test_image_path)).name})"
    )
    t.add_column("output")
    t.add_column("shape", justify="right")
    t.add_column("fp32 range", justify="right")
    for m in result.models:
        t.add_column(f"{m.upper()} cos", justify="right")
    for o in duotpu.describe_outputs(result.reference):
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

    if result.head is not None:
        return _print_detect_build(console, result, as_json)
    if result.recipe.task == "generic":
        return _print_generic_build(console, result, as_json)
    rows = duotpu.classify_build(result)
    if as_json:
        print(
            json.dumps(
                {
                    **_build_json_head(result),
                    "classification": duotpu.classified_json(rows, labels),
                },
                indent=2,
            )
        )
        return EXIT_OK
    console.print(
        classification_table(
            rows,
            labels,
            f"{result.recipe.name} on the test image ({Path(str(result.test_image_path)).name})",
        )
    )
    _print_verified(console, result)
    if not duotpu.top1_agrees(rows):
        console.print("[yellow]note:[/] the models' top-1 classes differ on the test image.")
    return EXIT_OK


def cmd_build_many(args: argparse.Namespace) -> int:
    overrides = _overrides(args)  # --set, as `duotpu build` reads it
    recipes = [duotpu.load_recipe(Path(r), overrides) for r in args.recipes]
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

        results = duotpu.build_many(
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
    if not args.source and not args.recipe:
        raise ConfigError(
            "Nothing to build: give a model (an .onnx or .pt file, "
            "'torchvision:NAME' or 'package.module:function') or --recipe FILE."
        )
    recipe = duotpu.recipe_for_command(args.source, args.recipe, _overrides(args))
    console = _console()
    progress = StageProgress(console)
    console.print(
        f"building [bold]{recipe.name}[/] for {recipe.chip}: "
        f"{', '.join(m.upper() for m in recipe.quantize)}"
    )
    partial: PartialBuild | None = None
    try:
        with _executor(args) as ex:
            result = duotpu.build(
                recipe,
                out_dir=args.out or None,
                work_dir=args.work_dir or None,
                events=progress,
                executor=ex,
            )
    except PartialBuild as e:
        partial, result = e, e.result
    finally:
        progress.close()
    labels = (
        duotpu.read_labels(Path(args.labels))
        if args.labels
        else (duotpu.imagenet_classes() if _outputs_1000(result) else None)
    )
    code = _print_build(console, result, labels, args.json)
    if result.inputs_archive is not None and not args.json:
        console.print(f"inputs and replay script: {result.inputs_archive}")
    if result.mix is not None:
        code = _print_mix(console, result, args.json) or code
    if partial is not None:
        return _print_partial(partial)
    return code


def _print_fit(console, result) -> None:
    """Per model: its board memory, the boards of its chip that hold it, the estimated time; a
    model that fits no board is flagged (the build still succeeds: the ION heap can be
    enlarged on a custom image)."""
    chip = result.recipe.chip
    for mode, art in result.models.items():
        est = f" · est. {art.estimate.ms:.2f} ms on the board" if art.estimate else ""
        line = f"  {mode.upper()}: {duotpu.fit_text(chip, art.ion_mb)}{est}"
        if not any(f.fits for f in duotpu.board_fits(chip, art.ion_mb)):
            console.print(f"[yellow]![/]{line}", markup=True, highlight=False)
        else:
            console.print(line, markup=False, highlight=False)


def _print_verified(console, result) -> None:
    """One line per delivered cvimodel: where it is and how it verified."""
    item = "sample" if result.recipe.tensor_inputs else "image"
    for mode, art in result.models.items():
        if len(art.per_image) > 1:
            how = (
                f"on {len(art.per_image)} {item}s: mean cosine vs fp32 "
                f"{min(art.cosine.values()):.4f}, worst {item} {min(art.per_image):.4f}"
            )
        else:
            how = f"cosine vs fp32 {min(art.cosine.values()):.4f}"
        where = (
            "the CV18xx simulator"
            if art.simulated
            else "its quantized MLIR: the simulator cannot load it"
        )
        why = result.unverified(mode)
        checked = (
            f"checked on {where}, {how}; NOT verified: {why}"
            if why
            else f"verified on {where}, {how}"
        )
        console.print(f"[bold]{mode.upper()}[/] {art.cvimodel}  ({checked})")
    _print_fit(console, result)
    console.print(f"manifest: {result.manifest}")
    if result.report is not None:
        console.print(f"report: {result.report}")


def _print_partial(e: PartialBuild) -> int:
    """What was delivered and what failed; the exit code of a partial build."""
    from rich.markup import escape

    con = _err_console()
    why = {m: e.result.unverified(m) for m in e.result.models}
    got = ", ".join(
        m.upper() + (f" (not verified: {w})" if w else " (verified)") for m, w in why.items()
    )
    for mode, err in e.failed.items():
        con.print(f"[red bold]{mode.upper()} failed:[/] {escape(str(err))}", highlight=False)
    con.print(
        f"[yellow bold]partial build:[/] delivered {escape(got)}; not delivered: "
        f"{', '.join(m.upper() for m in e.failed)}. Exit code {EXIT_PARTIAL}."
    )
    return EXIT_PARTIAL


def _print_mix(console, result, as_json: bool) -> int:
    """The mixed-precision trade-off table; non-zero when the target was not reached."""
    from rich.markup import escape
    from rich.table import Table

    mix = result.mix
    rows = mix.rows
    if not as_json:
        t = Table(title=f"mixed precision: {mix.target or 'given table'}")
        header, cells = mix.table()
        for col in header:
            t.add_column(col, justify="right" if col not in ("", "candidate") else "left")
        for row in cells:
            t.add_row(*row)
        console.print(t)
        if any(r.measured_on == "simulator" for r in rows):
            console.print("sim: measured on the simulator (its quantized MLIR disagreed with it)")
        for note in mix.failed_notes():
            console.print(f"not built: {escape(note)}", highlight=False)
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
        f"{result.recipe.chip}_mix.cvimodel). Try more calibration images, or images more "
        "typical of what the model will see (calibration.images / count), another "
        "calibration.method, a larger mix.max_layers, or "
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
