"""``duotpu info``, ``duotpu predict`` and ``duotpu app``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duotpu
from duotpu import ConfigError
from duotpu.cli.board import cmd_board_run
from duotpu.cli.common import EXIT_OK, _console, _print_detections, _print_generic, _results


def _ion_overrides(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        if key not in duotpu.BOARDS or not val:
            raise ConfigError(
                f"--ion takes BOARD=MB with BOARD one of {', '.join(duotpu.BOARDS)}; got {item!r}."
            )
        try:
            out[key] = float(val)
        except ValueError:
            raise ConfigError(f"--ion {item!r}: {val!r} is not a number of MB.") from None
    return out


def cmd_info(args: argparse.Namespace) -> int:
    from rich.table import Table

    ion = _ion_overrides(args.ion)
    seen = [duotpu.inspect_cvimodel(Path(m), ion) for m in args.models]
    if args.json:
        data = [i.to_dict(args.layers or 10) for i in seen]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2))
        return EXIT_OK
    con = _console()
    for one in seen:
        info, est, names = one.info, one.estimate, one.layer_names
        con.print(f"[bold]{info.path}[/]  ({info.file_size / 1e6:.2f} MB, md5 {info.md5_status})")
        con.print(
            f"  model {info.name}, chip [bold]{info.chip}[/], cvimodel {info.version}, "
            f"built {info.build_time} by tpu_mlir {info.mlir_version}"
        )
        sections = sum(s.size for s in info.sections)
        commands = sections - info.weight_bytes
        activations = sum(p.neuron_size + p.private_gmem for p in info.programs)
        shared = max((p.shared_gmem for p in info.programs), default=0)
        io = sum(p.io_bytes for p in info.programs)
        con.print(
            f"  board memory (ION) needed: [bold]{info.ion_mb:.2f} MB[/] ({info.ion_bytes} B) = "
            f"weights {info.weight_bytes} B + command buffers {commands} B + activations "
            f"{activations} B + memory the programs share {shared} B + input/output buffers "
            f"{io} B"
        )
        onnx_names = one.onnx_names
        for k, p in enumerate(info.programs):
            steps = " → ".join("a TPU step" if r == "tpu" else "a CPU step" for r in p.routines)
            t = Table(
                title=f"program {k} (batch {p.batch_num}): activations {p.private_gmem} B, "
                f"shared {p.shared_gmem} B, input/output buffers {p.io_bytes} B; runs "
                f"{steps}",
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
                    shown = onnx_names.get(x.name, x.name)
                    t.add_row(
                        kind,
                        shown if shown == x.name else f"{shown} ({x.name})",
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
        + (
            f"; {est.cpu_routines} step(s) run on the board's CPU and are not in this estimate "
            "(the input's conversion, or a layer the TPU has no kernel for)"
            if est.cpu_routines
            else ""
        )
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


def cmd_predict(args: argparse.Namespace) -> int:
    from rich.table import Table

    if args.board:  # the same, on a board over SSH
        args.inputs = args.images
        return cmd_board_run(args)

    model = duotpu.open_model(args.model, args.recipe)
    for im in args.images:
        if not Path(im).is_file():
            raise ConfigError(f"The image {im} does not exist.")
    tensors = duotpu.tensors_for(model, args.images)
    outs = duotpu.infer_batched(model, tensors)
    results = _results(args, model, args.images, outs, "image", tensors)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(model.cvimodel),
                    "mode": model.mode,
                    "backend": "cv18xx simulator" if model.simulable else "quantized MLIR",
                    "results": results,
                    "estimate": duotpu.latency_estimate(model.cvimodel),
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


def cmd_app(args: argparse.Namespace) -> int:
    made = duotpu.make_app(
        Path(args.build),
        Path(args.out) if args.out else None,
        args.model,
        c=bool(args.c or args.sdk),
        sdk=args.sdk,
        target=args.target,
    )
    binary = made.folder / "duotpu_app"
    if args.json:
        print(
            json.dumps(
                {
                    "folder": str(made.folder),
                    "models": list(made.models),
                    "size_bytes": made.size_bytes,
                    "task": made.config["task"],
                    "c_binary": str(binary) if binary.is_file() else None,
                }
            )
        )
        return EXIT_OK
    con = _console()
    con.print(
        f"app: {made.folder}  ({', '.join(made.models)}; {made.config['task']}; "
        f"{made.size_bytes / 1e6:.2f} MB)",
        highlight=False,
    )
    con.print(
        f"on the board: copy the folder, then  python3 {made.folder.name}/main.py "
        + (
            "SAMPLE.npz...  (one array per input name)"
            if made.config.get("tensor_inputs")
            else "IMAGE...  (PPM/BMP/.npy; JPEG/PNG with Pillow or OpenCV)"
        ),
        highlight=False,
    )
    if binary.is_file():
        con.print(f"C app ({args.target}): {binary}  — run  ./duotpu_app IMAGE...", highlight=False)
    elif args.c:
        con.print(
            f"C app source: {made.folder / 'c'} (make SDK=... CC=...; or rerun with --sdk)",
            highlight=False,
        )
    return EXIT_OK
