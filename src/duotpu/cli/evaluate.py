"""``duotpu eval``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import duotpu
from duotpu import ClassifyEval, DetectEval, GenericEval
from duotpu.cli.common import EXIT_OK, _class_names, _console, _executor, _table


def cmd_eval(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    target = Path(args.model)
    con = _console()
    with _executor(args) as ex, Progress(console=con, transient=True) as prog:
        tasks: dict[str, Any] = {}

        def progress(mode: str, done: int, total: int) -> None:
            if mode not in tasks:
                tasks[mode] = prog.add_task(mode.upper(), total=total)
            prog.update(tasks[mode], completed=done)

        data = duotpu.evaluate(
            target,
            Path(args.images),
            recipe=args.recipe,
            backend=args.backend,
            margin=args.margin,
            class_names=_class_names(args, 1000 if args.labels is None else 0),
            limit=args.limit or 0,
            check=args.check,
            layers=args.layers or 0,
            progress=progress,
            log=con.print,
            executor=ex,
        )
    if isinstance(data, DetectEval):
        con.print(_detect_eval_table(data))
    elif isinstance(data, GenericEval):
        con.print(_generic_eval_table(data))
    else:
        con.print(_eval_table(data))
    for mode, layers in data.per_layer.items():
        worst = ", ".join(f"{n} {c:.4f}" for n, c in duotpu.least_similar(layers))
        con.print(f"  {mode.upper()} least similar tensors: {worst}")
    out = Path(args.out) if args.out else (target if target.is_dir() else target.parent) / "eval"
    jpath, hpath = duotpu.write_eval_report(out, data)
    con.print(f"report: {jpath} and {hpath}")
    return EXIT_OK


def _generic_eval_table(data: GenericEval) -> Any:
    from rich.table import Table

    t = Table(title=f"{data.name}: {data.images} images, each output against fp32")
    for col in ("model", "output", "shape", "cos mean", "cos worst", "img/s"):
        t.add_column(col, justify="left" if col in ("model", "output") else "right")
    for mode, d in data.modes.items():
        for n, c in d.cosine_mean.items():
            t.add_row(
                mode.upper(),
                n,
                "×".join(map(str, data.fp32[n].shape)),
                f"{c:.4f}",
                f"{d.cosine_worst[n]:.4f}",
                f"{d.images_per_second:.2f}",
            )
    return t


def _eval_table(data: ClassifyEval) -> Any:
    rows = []
    fpm = data.fp32
    if "top1_acc" in fpm:
        rows.append(
            ["fp32", "", "", "", "", "", "", f"{fpm['top1_acc']:.3f}", f"{fpm['top5_acc']:.3f}", ""]
        )
    for mode, d in data.modes.items():
        rows.append(
            [
                mode.upper(),
                f"{d.top1_agree:.3f}",
                f"{d.decisive_top1_agree:.3f} ({d.decisive_n})",
                f"{d.top5_contains_fp32_top1:.3f}",
                f"{d.cosine_mean:.4f}",
                f"{d.cosine_worst:.4f}",
                f"{d.kl_mean:.4f}",
                "" if d.top1_acc is None else f"{d.top1_acc:.3f}",
                "" if d.top5_acc is None else f"{d.top5_acc:.3f}",
                f"{d.images_per_second:.1f}",
            ]
        )
    t = _table(
        f"{data.name}: quantized vs fp32 on {data.images} images",
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
        f"{data.margin}; top-5 ∋: the top-5 holds fp32's top-1; acc: against the labels"
    )
    return t


def _detect_eval_table(data: DetectEval) -> Any:
    rows = []
    if data.fp32:
        rows.append(
            [
                "fp32",
                "",
                "",
                "",
                "",
                f"{data.fp32['map50']:.3f}",
                f"{data.fp32['map50_95']:.3f}",
                "",
            ]
        )
    for mode, d in data.modes.items():
        rows.append(
            [
                mode.upper(),
                f"{d.map50_vs_fp32:.3f}",
                str(d.fp32_objects),
                f"{d.detections_per_image:.2f}",
                f"{min(d.cosine_mean.values()):.4f}",
                "" if d.map50 is None else f"{d.map50:.3f}",
                "" if d.map50_95 is None else f"{d.map50_95:.3f}",
                f"{d.images_per_second:.2f}",
            ]
        )
    t = _table(
        f"{data.name}: quantized detections vs fp32 on {data.images} images",
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
