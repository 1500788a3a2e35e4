"""Human-readable summaries of a build (rich tables) — used by the CLI."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from duotpu.core import metrics
from duotpu.core.labels import class_name


@dataclass
class Classified:
    """Top-k classes of one model's output on one image."""

    model: str
    top: list[tuple[int, float]]
    cosine: float | None
    size_bytes: int | None
    ion_mb: float | None
    est_ms: float | None = None  # the board-free latency estimate


def classify_build(result, k: int = 5) -> list[Classified]:
    """fp32 (ONNX Runtime) and every cvimodel's top-k on the build's test image."""
    ref_name = next(iter(result.reference))
    rows = [
        Classified(
            "fp32 ONNX",
            metrics.topk(metrics.as_probabilities(result.reference[ref_name])[0], k),
            1.0,
            result.onnx.stat().st_size,
            None,
        )
    ]
    for mode, art in result.models.items():
        out = art.outputs[ref_name]
        rows.append(
            Classified(
                f"{mode.upper()} cvimodel",
                metrics.topk(metrics.as_probabilities(out)[0], k),
                art.cosine[ref_name],
                art.size_bytes,
                art.ion_mb,
                art.estimate.ms if art.estimate is not None else None,
            )
        )
    return rows


def _mb(n: float | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def classification_table(rows: list[Classified], labels: list[str] | None, title: str) -> Table:
    """One table: a column per model with its top-k names and probabilities, then its cosine to
    fp32, file size and board (ION) memory need."""
    table = Table(title=title)
    table.add_column("", style="bold")
    for r in rows:
        table.add_column(r.model, justify="left")
    k = max(len(r.top) for r in rows)
    for rank in range(k):
        table.add_row(
            f"top-{rank + 1}",
            *[
                f"{class_name(labels, r.top[rank][0])}  {r.top[rank][1]:.3f}"
                if rank < len(r.top)
                else ""
                for r in rows
            ],
            end_section=rank == k - 1,
        )
    table.add_row("cosine vs fp32", *["—" if r.cosine is None else f"{r.cosine:.4f}" for r in rows])
    table.add_row("file size", *[_mb(r.size_bytes) for r in rows])
    table.add_row(
        "board memory (ION)", *["—" if r.ion_mb is None else f"{r.ion_mb:.2f} MB" for r in rows]
    )
    table.add_row(
        "est. board time",
        *[
            "—" if r.est_ms is None else f"{r.est_ms:.1f} ms ({1000 / r.est_ms:.0f} fps)"
            for r in rows
        ],
    )
    return table


def top1_agrees(rows: list[Classified]) -> bool:
    """True when every model's top-1 class equals the fp32 model's."""
    return len({r.top[0][0] for r in rows}) == 1


def as_json(rows: list[Classified], labels: list[str] | None) -> list[dict]:
    """The rows as plain data."""
    return [
        {
            "model": r.model,
            "cosine_vs_fp32": r.cosine,
            "size_bytes": r.size_bytes,
            "ion_mb": r.ion_mb,
            "top": [
                {"class": i, "name": class_name(labels, i), "probability": round(p, 6)}
                for i, p in r.top
            ],
        }
        for r in rows
    ]


@dataclass
class Detected:
    """One model's detections on the build's test image."""

    model: str
    detections: list
    cosine_min: float | None
    size_bytes: int | None
    ion_mb: float | None
    est_ms: float | None = None  # the board-free latency estimate


def detect_build(result) -> list[Detected]:
    """fp32 (ONNX Runtime) and every cvimodel's detections on the build's test image, decoded
    and NMS-ed on the CPU with the recipe's detect options."""
    from duotpu.core.detect import input_frame, per_image

    head, r = result.head, result.recipe
    pre, hw = input_frame(result.test_image_path, r.preprocess, head)

    def dets(outs):
        return per_image(head, [[outs[n] for n in head.outputs]], pre, [hw], r.detect)[0]

    rows = [Detected("fp32 ONNX", dets(result.reference), 1.0, result.onnx.stat().st_size, None)]
    for mode, art in result.models.items():
        rows.append(
            Detected(
                f"{mode.upper()} cvimodel",
                dets(art.outputs),
                min(art.cosine.values()),
                art.size_bytes,
                art.ion_mb,
                art.estimate.ms if art.estimate is not None else None,
            )
        )
    return rows


def detection_table(rows: list[Detected], title: str, k: int = 5) -> Table:
    """A column per model: its count of detections, the best ``k`` (name, score, box), the
    lowest cosine of its head maps to fp32, size and board memory."""
    table = Table(title=title)
    table.add_column("", style="bold")
    for r in rows:
        table.add_column(r.model, justify="left")
    table.add_row("detections", *[str(len(r.detections)) for r in rows])
    for rank in range(k):
        table.add_row(
            f"#{rank + 1}",
            *[
                f"{r.detections[rank].name} {r.detections[rank].score:.2f} "
                f"[{', '.join(f'{v:.0f}' for v in r.detections[rank].box)}]"
                if rank < len(r.detections)
                else ""
                for r in rows
            ],
            end_section=rank == k - 1,
        )
    table.add_row(
        "head maps: lowest cosine vs fp32",
        *["—" if r.cosine_min is None else f"{r.cosine_min:.4f}" for r in rows],
    )
    table.add_row("file size", *[_mb(r.size_bytes) for r in rows])
    table.add_row(
        "board memory (ION)", *["—" if r.ion_mb is None else f"{r.ion_mb:.2f} MB" for r in rows]
    )
    table.add_row(
        "est. board time",
        *[
            "—" if r.est_ms is None else f"{r.est_ms:.1f} ms ({1000 / r.est_ms:.0f} fps)"
            for r in rows
        ],
    )
    return table


# --------------------------------------------------------------------------------------------
# duotpu eval: report.json + a self-contained report.html
# --------------------------------------------------------------------------------------------
def _png_b64(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def write_eval_report(folder, data: dict) -> tuple:
    """Write ``report.json`` and ``report.html`` (plots embedded) into ``folder``."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = []
    modes = data["modes"]
    if modes:
        fig, ax = plt.subplots(figsize=(6, 3))
        for m, d in modes.items():
            ax.hist(d["cosines"], bins=30, alpha=0.6, label=m.upper())
        ax.set_xlabel("output cosine vs fp32")
        ax.set_ylabel("images")
        ax.legend()
        figs.append(("Output cosine similarity to fp32, per image", _png_b64(fig)))
        plt.close(fig)
    for m, layers in data.get("per_layer", {}).items():
        worst = layers[:20]
        if not worst:
            continue
        fig, ax = plt.subplots(figsize=(7, 0.25 * len(worst) + 1))
        ax.barh([n[-40:] for n, _ in worst][::-1], [c for _, c in worst][::-1])
        ax.set_xlabel("cosine vs fp32 (mean over checked images)")
        figs.append((f"{m.upper()}: the 20 least similar tensors", _png_b64(fig)))
        plt.close(fig)
    rows = "".join(
        f"<tr><td>{m.upper()}</td><td>{d['n']}</td><td>{d['top1_agree']:.3f}</td>"
        f"<td>{d['decisive_top1_agree']:.3f} ({d['decisive_n']})</td>"
        f"<td>{d['top5_contains_fp32_top1']:.3f}</td><td>{d['cosine_mean']:.4f}</td>"
        f"<td>{d['cosine_worst']:.4f}</td><td>{d['kl_mean']:.4f}</td>"
        f"<td>{'' if d.get('top1_acc') is None else format(d['top1_acc'], '.3f')}</td>"
        f"<td>{'' if d.get('top5_acc') is None else format(d['top5_acc'], '.3f')}</td>"
        f"<td>{d['images_per_second']:.2f}</td></tr>"
        for m, d in modes.items()
    )
    fp = data.get("fp32", {})
    body = (
        f"<h1>duotpu eval: {html.escape(data['model'])}</h1>"
        f"<p>{data['images']} images from {html.escape(data['image_folder'])}; backend "
        f"{html.escape(data['backend'])}; decisive margin {data['margin']}."
        + (
            f" fp32 accuracy: top-1 {fp['top1_acc']:.3f}, top-5 {fp['top5_acc']:.3f}."
            if "top1_acc" in fp
            else ""
        )
        + "</p>"
        "<table border=1 cellpadding=4><tr><th>model</th><th>images</th>"
        "<th>top-1 agreement</th><th>decisive top-1 agreement (n)</th>"
        "<th>top-5 contains fp32 top-1</th><th>mean cosine</th><th>worst cosine</th>"
        "<th>mean KL</th><th>top-1 acc</th><th>top-5 acc</th><th>images/s</th></tr>"
        f"{rows}</table>"
        + "".join(
            f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{b}'>" for t, b in figs
        )
    )
    return _write_report(folder, data, body)


def _write_report(folder, data: dict, body: str) -> tuple:
    """``report.json`` (the data) and a self-contained ``report.html`` (the body), atomically."""
    import json
    import os
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    jpath, hpath = folder / "report.json", folder / "report.html"
    for path, text in (
        (jpath, json.dumps(data, indent=2)),
        (
            hpath,
            "<!doctype html><html><head><meta charset='utf-8'><title>duotpu "
            "eval</title></head><body style='font-family:sans-serif'>"
            f"{body}</body></html>",
        ),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return jpath, hpath


def write_detect_report(folder, data: dict) -> tuple:
    """A detector's eval: ``report.json`` and a ``report.html`` table (mAP, cosines)."""
    import html

    def f(v, spec=".3f"):
        return "" if v is None else format(v, spec)

    rows = "".join(
        f"<tr><td>{m.upper()}</td><td>{d['n']}</td><td>{f(d['map50_vs_fp32'])}</td>"
        f"<td>{d['fp32_objects']}</td><td>{f(d['detections_per_image'], '.2f')}</td>"
        f"<td>{f(d['map50'])}</td><td>{f(d['map50_95'])}</td>"
        f"<td>{f(d['images_per_second'], '.2f')}</td></tr>"
        for m, d in data["modes"].items()
    )
    cos_rows = "".join(
        f"<tr><td>{m.upper()}</td><td>{html.escape(n)}</td><td>{c:.4f}</td>"
        f"<td>{d['cosine_worst'][n]:.4f}</td></tr>"
        for m, d in data["modes"].items()
        for n, c in d["cosine_mean"].items()
    )
    fp = data.get("fp32") or {}
    body = (
        f"<h1>duotpu eval (detector): {html.escape(data['model'])}</h1>"
        f"<p>{data['images']} images from {html.escape(data['image_folder'])}; backend "
        f"{html.escape(data['backend'])}; fp32 detections at score ≥ {data['conf']} are "
        f"the reference, quantized detections down to {data['map_conf']} are scored; NMS "
        f"IoU {data['iou']}."
        + (
            f" fp32 against the labels: mAP@0.5 {fp['map50']:.3f}, mAP@0.5:0.95 "
            f"{fp['map50_95']:.3f} ({fp['objects']} objects)."
            if fp
            else ""
        )
        + "</p>"
        "<table border=1 cellpadding=4><tr><th>model</th><th>images</th>"
        "<th>mAP@0.5 vs fp32 detections</th><th>fp32 objects</th><th>detections/image</th>"
        "<th>mAP@0.5 (labels)</th><th>mAP@0.5:0.95 (labels)</th><th>images/s</th></tr>"
        f"{rows}</table><h2>Head maps: cosine to fp32 (mean, worst over images)</h2>"
        "<table border=1 cellpadding=4><tr><th>model</th><th>output</th><th>mean</th>"
        f"<th>worst</th></tr>{cos_rows}</table>"
    )
    return _write_report(folder, data, body)


def write_generic_report(folder, data: dict) -> tuple:
    """A generic model's eval: ``report.json`` and a ``report.html`` table of every output's
    cosine to fp32 (mean, worst image) per mode."""
    import html

    rows = "".join(
        f"<tr><td>{m.upper()}</td><td>{html.escape(n)}</td>"
        f"<td>{'×'.join(map(str, data['fp32'][n]['shape']))}</td><td>{c:.4f}</td>"
        f"<td>{d['cosine_worst'][n]:.4f} ({html.escape(d['worst_image'][n])})</td>"
        f"<td>{d['images_per_second']:.2f}</td></tr>"
        for m, d in data["modes"].items()
        for n, c in d["cosine_mean"].items()
    )
    body = (
        f"<h1>duotpu eval: {html.escape(data['model'])}</h1>"
        f"<p>{data['images']} images from {html.escape(data['image_folder'])}; backend "
        f"{html.escape(data['backend'])}; each output of each cvimodel against the fp32 ONNX "
        "model (ONNX Runtime).</p>"
        "<table border=1 cellpadding=4><tr><th>model</th><th>output</th><th>shape</th>"
        "<th>cosine mean</th><th>worst (image)</th><th>images/s</th></tr>"
        f"{rows}</table>"
    )
    return _write_report(folder, data, body)
