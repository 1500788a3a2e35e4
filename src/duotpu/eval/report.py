"""What a person reads about an evaluation: ``duotpu eval``'s ``report.json`` + self-contained
``report.html`` (where accuracy is lost: cosine along the network, per-image cosines, the
images whose answer changed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from duotpu.core import htmlpage as hp
from duotpu.eval.results import EvalResult

# --------------------------------------------------------------------------------------------
# duotpu eval: report.json + a self-contained report.html
# --------------------------------------------------------------------------------------------
COLORS = {"int8": "#d1242f", "bf16": "#0969da", "mix": "#8250df"}


def write_eval_report(folder: Path, result: EvalResult) -> tuple[Path, Path]:
    """Write ``report.json`` (``result.to_json()``) and ``report.html`` (every number linked to
    the JSON path it shows) into ``folder``: a classifier's, a detector's or a generic model's
    evaluation."""
    data = result.to_json()
    task = result.task
    modes = data["modes"]
    if task == "detect":
        sections = [_detect_summary(data)]
    elif task == "generic":
        sections = [_generic_summary(data)]
    else:
        sections = [_classify_summary(data)]
    if data.get("per_layer"):
        sections.append(_depth(data["per_layer"]))
    if any(d.get("cosines") for d in modes.values()):
        sections.append(_cosine_distribution(modes, task))
    if task == "classify":
        sections.append(_changed_gallery(data))
    if task == "detect":
        sections.append(_disagreement(data))
    lead = (
        f"{data['images']} images from <code>{hp.esc(data['image_folder'])}</code>; every "
        f"cvimodel against the fp32 ONNX model (ONNX Runtime); backend {hp.esc(data['backend'])}."
    )
    doc = hp.page(f"duotpu eval: {data['name']}", f"duotpu eval: {data['name']}", lead, sections)
    html_path = hp.write(folder, data, doc)
    return html_path.with_suffix(".json"), html_path


def _classify_summary(data: dict) -> str:
    rows = []
    for m, d in data["modes"].items():
        rows.append(
            [
                f"<b>{hp.esc(m.upper())}</b>",
                hp.num(d["n"], "d"),
                hp.at(data, ".3f", "modes", m, "top1_agree"),
                hp.at(data, ".3f", "modes", m, "decisive_top1_agree")
                + f" <small>({d['decisive_n']})</small>",
                hp.at(data, ".3f", "modes", m, "top5_contains_fp32_top1"),
                hp.at(data, ".4f", "modes", m, "cosine_mean"),
                hp.at(data, ".4f", "modes", m, "cosine_worst"),
                hp.at(data, ".4f", "modes", m, "kl_mean"),
                hp.at(data, ".3f", "modes", m, "top1_acc"),
                hp.at(data, ".3f", "modes", m, "top5_acc"),
                hp.num(d["images_per_second"], ".1f"),
            ]
        )
    fp = data.get("fp32", {})
    if "top1_acc" in fp:
        rows.insert(
            0,
            [
                "<b>fp32</b>",
                hp.num(fp["n"], "d"),
                *["—"] * 6,
                hp.at(data, ".3f", "fp32", "top1_acc"),
                hp.at(data, ".3f", "fp32", "top5_acc"),
                "—",
            ],
        )
    table = hp.table(
        [
            "model",
            "images",
            "top-1 agrees",
            "decisive agree (n)",
            "top-5 holds it",
            "mean cosine",
            "worst cosine",
            "mean KL",
            "top-1 acc",
            "top-5 acc",
            "images/s",
        ],
        rows,
        numeric=range(1, 11),
    )
    return hp.section(
        "summary",
        "Agreement with fp32",
        table,
        f"Decisive images are those whose fp32 top-1 beats its top-2 by at least "
        f"{data['margin']} ({fp.get('decisive_n', '?')} of {data['images']}): near-ties flip "
        "even in BF16. Top-5 holds it: the model's top-5 contains fp32's top-1. Accuracy "
        "columns appear when the image folder is labelled (one subfolder per class).",
    )


def _detect_summary(data: dict) -> str:
    rows = [
        [
            f"<b>{hp.esc(m.upper())}</b>",
            hp.num(d["n"], "d"),
            hp.at(data, ".3f", "modes", m, "map50_vs_fp32"),
            hp.at(data, ".3f", "modes", m, "agreement_mean"),
            hp.at(data, ".2f", "modes", m, "detections_per_image"),
            hp.at(data, ".3f", "modes", m, "map50"),
            hp.at(data, ".3f", "modes", m, "map50_95"),
            hp.num(d["images_per_second"], ".1f"),
        ]
        for m, d in data["modes"].items()
    ]
    fp = data.get("fp32") or {}
    if fp:
        rows.insert(
            0,
            [
                "<b>fp32</b>",
                hp.num(data["images"], "d"),
                "—",
                "—",
                "—",
                hp.at(data, ".3f", "fp32", "map50"),
                hp.at(data, ".3f", "fp32", "map50_95"),
                "—",
            ],
        )
    table = hp.table(
        [
            "model",
            "images",
            "mAP@0.5 vs fp32",
            "box agreement",
            "detections/image",
            "mAP@0.5 (labels)",
            "mAP@0.5:0.95 (labels)",
            "images/s",
        ],
        rows,
        numeric=range(1, 8),
    )
    cos = hp.table(
        ["model", "head map", "mean cosine", "worst cosine"],
        [
            [
                hp.esc(m.upper()),
                hp.esc(n),
                hp.at(data, ".4f", "modes", m, "cosine_mean", n),
                hp.at(data, ".4f", "modes", m, "cosine_worst", n),
            ]
            for m, d in data["modes"].items()
            for n in d["cosine_mean"]
        ],
        numeric=(2, 3),
    )
    return hp.section(
        "summary",
        "Agreement with fp32",
        table + cos,
        f"The fp32 detections at score ≥ {data['conf']} are the reference; quantized detections "
        f"down to {data['map_conf']} are scored (NMS IoU {data['iou']}). Box agreement: per "
        "image, F1 of the boxes that match fp32's (same class, IoU ≥ 0.5), averaged."
        + (f" Against the labels: {fp['objects']} objects." if fp else ""),
    )


def _generic_summary(data: dict) -> str:
    rows = [
        [
            f"<b>{hp.esc(m.upper())}</b>",
            hp.esc(n),
            "×".join(map(str, data["fp32"][n]["shape"])),
            f"{data['fp32'][n]['min']:.3g} … {data['fp32'][n]['max']:.3g}",
            hp.at(data, ".4f", "modes", m, "cosine_mean", n),
            hp.at(data, ".4f", "modes", m, "cosine_worst", n)
            + f" <small>{hp.esc(d['worst_image'][n])}</small>",
            hp.num(d["images_per_second"], ".1f"),
        ]
        for m, d in data["modes"].items()
        for n in d["cosine_mean"]
    ]
    # the worst images themselves: what the model found hardest (one card per image)
    worst: dict[str, list[str]] = {}
    for m, d in data["modes"].items():
        for n, path in d.get("worst_image_path", {}).items():
            worst.setdefault(path, []).append(f"{m.upper()} {hp.esc(n)} {d['cosine_worst'][n]:.4f}")
    cards = "".join(
        "<div class=card>"
        + _thumb(path, 150)
        + f"<h3>{hp.esc(Path(path).name)}</h3><small>{'<br>'.join(lines)}</small></div>"
        for path, lines in worst.items()
    )
    return hp.section(
        "summary",
        "Each output against fp32",
        hp.table(
            ["model", "output", "shape", "fp32 range", "mean cosine", "worst (image)", "images/s"],
            rows,
            numeric=(4, 5, 6),
        )
        + (f"<h3>The worst images</h3><div class=cards>{cards}</div>" if cards else ""),
    )


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _depth(per_layer: dict[str, list]) -> str:
    """Cosine to fp32 of every tensor, in graph order, one line per model: where the error
    starts and how it grows."""
    plt = _plt()
    order: list[str] = []
    for layers in per_layer.values():
        for name, _ in layers:
            if name not in order:
                order.append(name)
    x_of = {n: i for i, n in enumerate(order)}
    fig, ax = plt.subplots(figsize=(9, 3.6))
    tips: dict[str, str] = {}
    values: list[float] = []
    for m, layers in per_layer.items():
        xs = [x_of[n] for n, _ in layers]
        ys = [c for _, c in layers]
        values += ys
        color = COLORS.get(m, None)
        ax.plot(xs, ys, lw=1.2, color=color, label=m.upper())
        for j, (x, (n, c)) in enumerate(zip(xs, layers)):
            pt = ax.scatter([x], [c], s=9, color=color, zorder=3)
            gid = f"L-{m}-{j}"
            pt.set_gid(gid)
            tips[gid] = f"{m.upper()} · #{x} {n}: cosine {c:.5f}"
    hp.zoom(ax, values)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("tensor, in graph order (input → output)")
    ax.set_ylabel("cosine vs fp32")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    plot = hp.svg(fig, tips)
    worst_names: list[str] = []
    for layers in per_layer.values():
        for n, _ in sorted(layers, key=lambda kv: kv[1])[:10]:
            if n not in worst_names:
                worst_names.append(n)
    cos = {m: dict(layers) for m, layers in per_layer.items()}
    rows = sorted(
        (
            [f"{x_of[n]}", f"<code>{hp.breakable(n)}</code>"]
            + [f"{cos[m][n]:.4f}" if n in cos[m] else "—" for m in per_layer]
            for n in worst_names
        ),
        key=lambda r: min(float(v) for v in r[2:] if v != "—"),
    )[:10]
    table = hp.table(
        ["#", "least similar tensors", *[m.upper() for m in per_layer]],
        rows,
        numeric=range(2, 2 + len(per_layer)),
    )
    return hp.section(
        "depth",
        "Where accuracy is lost: cosine to fp32 along the network",
        plot + table,
        "Every tensor of the quantized model against the same tensor of the fp32 model (mean over "
        "the first images), in the order the network computes them. A drop shows the layer where "
        "error enters; hover a point for the tensor's full name.",
    )


def _cosine_distribution(modes: dict, task: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3))
    everything = [c for d in modes.values() for c in d.get("cosines", [])]
    lo, hi = hp.zoomed_limits(everything)
    bins = np.linspace(lo, min(hi, 1.0 + 1e-9), 40)
    for m, d in modes.items():
        if d.get("cosines"):
            ax.hist(
                np.clip(d["cosines"], lo, 1.0),
                bins=bins,
                histtype="step",
                lw=1.8,
                color=COLORS.get(m),
                label=f"{m.upper()} (worst {min(d['cosines']):.4f})",
            )
    hp.zoom(ax, everything, axis="x")
    ax.set_xlabel("output cosine vs fp32, per image")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return hp.section(
        "cosines",
        "Output cosine per image",
        hp.svg(fig),
        (
            "How similar each image's class scores are to fp32's."
            if task == "classify"
            else "How similar each image's outputs are to fp32's (per image, its least similar "
            "output)."
        )
        + " The axis starts just under the worst image.",
    )


def _top3(entries: list[dict], against: int | None = None) -> str:
    return "<br>".join(
        ("<b>" if against is not None and e["class"] != against and i == 0 else "")
        + f"{hp.esc(e['name'])} {e['probability']:.2f}"
        + ("</b>" if against is not None and e["class"] != against and i == 0 else "")
        for i, e in enumerate(entries)
    )


def _changed_gallery(data: dict, shown: int = 24) -> str:
    changed = data.get("changed", [])
    if not changed:
        return hp.section(
            "changed",
            "Images whose top-1 changed",
            "<p class=good>None: every model gives every image fp32's top-1 class.</p>",
        )
    cards = []
    for e in changed[:shown]:
        t1 = e["fp32"][0]["class"]
        thumb = _thumb(e["image"], 150)
        cards.append(
            "<div class=card>"
            + thumb
            + f"<h3>{hp.esc(Path(e['image']).name)}</h3><table><tr><td><small>fp32</small><br>"
            + _top3(e["fp32"])
            + "</td>"
            + "".join(
                f"<td><small>{hp.esc(m.upper())}</small><br>{_top3(t, t1)}</td>"
                for m, t in e["modes"].items()
            )
            + "</tr></table></div>"
        )
    n_all = {m: round(d["n"] * (1 - d["top1_agree"])) for m, d in data["modes"].items()}
    return hp.section(
        "changed",
        "Images whose top-1 changed",
        f"<div class=cards>{''.join(cards)}</div>",
        "Top-1 changed on "
        + ", ".join(f"{n} images in {m.upper()}" for m, n in n_all.items())
        + f"; the {min(shown, len(changed))} with the most confident fp32 answer are shown "
        "(a changed answer in bold).",
    )


def _thumb(path: str, side: int) -> str:
    from duotpu.core.images import read_rgb

    rgb = read_rgb(Path(path))
    if rgb is None:
        return f"<small>({hp.esc(Path(path).name)} is no longer readable)</small>"
    return hp.img(hp.thumbnail(rgb, side), Path(path).name)


def _disagreement(data: dict) -> str:
    from duotpu.core.detect import Detection, draw_boxes
    from duotpu.core.images import read_rgb

    def dets(items: list[dict]) -> list[Detection]:
        return [Detection(tuple(d["box"]), d["score"], d["class"], d["name"]) for d in items]

    blocks = []
    for m, worst in data.get("disagreement", {}).items():
        for e in worst:
            rgb = read_rgb(Path(e["image"]))
            if rgb is None:
                continue
            pair = "".join(
                f"<div class=card><h3>{label}: {len(items)} boxes</h3>"
                + hp.img(hp.thumbnail(draw_boxes(rgb, dets(items), 360), 360), f"{label} boxes")
                + "</div>"
                for label, items in (("fp32", e["fp32"]), (m.upper(), e["quantized"]))
            )
            blocks.append(
                f"<h3>{hp.esc(Path(e['image']).name)} — {m.upper()} box agreement "
                f"{e['agreement']:.2f}</h3><div class=side>{pair}</div>"
            )
    body = "".join(blocks) or "<p class=good>Every model finds fp32's boxes on every image.</p>"
    return hp.section(
        "disagreement",
        "Images where the boxes differ most",
        body,
        "Per model, the images whose detections agree least with fp32's, drawn side by side.",
    )
