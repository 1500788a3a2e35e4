"""The build report: ``build/NAME/report.html``, written by every build beside its manifest.

A model card (source, chip, recipe highlights, each cvimodel's size, board memory and fit, its
verification, the latency estimate, stage times), what every model says on the test image
(top-5 classes, boxes, or each output's agreement), and the mixed-precision trade-off when a mix
ran. Numbers taken from ``manifest.json`` carry their place in it (``data-json``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duotpu import latency
from duotpu.core import htmlpage as hp
from duotpu.core import metrics
from duotpu.core.images import read_rgb
from duotpu.core.labels import class_name, imagenet_classes

from .manifest import Manifest

if TYPE_CHECKING:
    from duotpu.builder.mixprec import Candidate
    from duotpu.builder.results import BuildResult
    from duotpu.config.recipe import Recipe

REPORT = "report.html"


def write_build_report(result: BuildResult) -> Path:
    """Write the build's ``report.html`` into its output folder; returns its path."""
    manifest = (result.listing or Manifest.read(result.out_dir)).to_json()
    r = result.recipe
    sections = [_models(result, manifest)]
    if result.failed:
        sections.append(
            hp.section(
                "failed",
                "Not delivered",
                "".join(
                    f"<p><b>{hp.esc(m.upper())}</b>: {hp.esc(why)}</p>"
                    for m, why in result.failed.items()
                ),
            )
        )
    sections.append(_test_image(result))
    if result.mix is not None:
        sections.append(_mix(result))
    slow = _slowest_layers(result, manifest)
    if slow:
        sections.append(slow)
    sections += [_recipe(result), _stages(result)]
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lead = (
        f"{hp.esc(r.chip)} · task {hp.esc(r.task)} · source <code>{hp.esc(r.model.source)}</code>"
        f" · built {when} with tpu_mlir {hp.esc(manifest.get('versions', {}).get('tpu_mlir', '?'))}"
    )
    if random_weights(r):
        lead += (
            ". <b>Random weights</b> (no <code>model.weights</code>): the classes and boxes "
            "below mean nothing; the numbers describe quantization, memory and speed."
        )
    from duotpu.builder.summary import board_fits

    homeless = [
        m for m, a in result.models.items() if not any(f.fits for f in board_fits(r.chip, a.ion_mb))
    ]
    if homeless:
        lead += (
            ". <b class=bad>"
            + ", ".join(hp.esc(m.upper()) for m in homeless)
            + f" fits no {hp.esc(r.chip)} board</b>: its memory need is above every board's "
            "ION heap (see Models); a smaller input, INT8 instead of BF16, or a board with "
            "more ION"
        )
    doc = hp.page(f"duotpu build: {r.name}", f"duotpu build: {r.name}", lead, sections)
    return hp.write(result.out_dir, None, doc, stem=Path(REPORT).stem)


def random_weights(r: Recipe) -> bool:
    """A model built with random weights (a torchvision:, timm: or ultralytics: architecture
    without ``model.weights``)."""
    from duotpu.builder.export import source_kind

    return not r.model.weights and source_kind(r.model.source) in (
        "torchvision",
        "timm",
        "ultralytics",
    )


def _fit(chip: str, ion_mb: float) -> str:
    """Which Duo boards of the model's chip hold it (their usual ION heap)."""
    from duotpu.builder.summary import board_fits

    out = [
        f"<span class='{'good' if f.fits else 'bad'} nowrap'>{hp.esc(f.board)} "
        f"{'✓' if f.fits else '✗'}</span>"
        for f in board_fits(chip, ion_mb)
    ]
    return " ".join(out) or "—"


def _models(result: BuildResult, manifest: dict[str, Any]) -> str:
    rows = []
    for mode, art in result.models.items():
        entry = manifest["models"][mode]
        worst_out = min(art.cosine, key=lambda n: art.cosine[n])
        est = entry.get("estimate") or {}
        rows.append(
            # the key columns first: on a phone the table scrolls sideways after them
            [
                f"<b>{hp.esc(mode.upper())}</b><br><small>{hp.breakable(art.cvimodel.name)}</small>",
                hp.at(manifest, ".4f", "models", mode, "cosine_vs_fp32", worst_out)
                + (f"<br><small>{hp.esc(worst_out)}</small>" if len(art.cosine) > 1 else ""),
                _fit(result.recipe.chip, art.ion_mb),
                hp.at(manifest, ".2f", "models", mode, "ion_mb") + " MB",
                (
                    hp.at(manifest, ".2f", "models", mode, "estimate", "ms")
                    + f" ms<br><small>{est['fps']:.0f} fps, {hp.esc(est['bound'])}-bound</small>"
                    if est
                    else "—"
                ),
                hp.at(manifest, ".4f", "models", mode, "worst_image_cosine")
                + f"<br><small>of {entry.get('verified_images', 1)}</small>",
                hp.num(art.size_bytes / 1e6, ".2f") + " MB",
                hp.esc(entry.get("verified_on", "")),
            ]
        )
    body = hp.table(
        [
            "model",
            "cosine vs fp32",
            "fits",
            "board memory (ION)",
            "est. board time",
            "worst image",
            "file size",
            "verified on",
        ],
        rows,
        numeric=(3, 6),
    )
    return hp.section(
        "models",
        "Models",
        body,
        "Each cvimodel against the fp32 ONNX model on the test images (mean output cosine, and "
        "the least similar image); ION is the board memory it needs; the board time is "
        "estimated from its command buffers (no board needed; <code>duotpu info</code> explains).",
    )


def _labels(n_classes: int) -> list[str] | None:
    return imagenet_classes() if n_classes == 1000 else None


def _test_image(result: BuildResult) -> str:
    from duotpu.builder import summary

    path = result.test_image_path
    tensors = result.recipe.tensor_inputs
    rgb = read_rgb(path) if path is not None and not tensors else None
    name = path.name if path is not None else "the test input"
    photo = hp.img(hp.thumbnail(rgb, 260), f"test image {name}") if rgb is not None else ""
    if result.head is not None and rgb is not None:
        from duotpu.core.detect import draw_boxes

        cards = []
        for det in summary.detect_build(result):
            drawn = draw_boxes(rgb, det.detections, 420)
            cards.append(
                f"<div class=card><h3>{hp.esc(det.model)}</h3>"
                + hp.img(hp.thumbnail(drawn, 420), f"{det.model} detections")
                + f"<small>{len(det.detections)} detections"
                + (
                    f", head maps' lowest cosine {det.cosine_min:.4f}"
                    if det.cosine_min is not None and det.model != "fp32 ONNX"
                    else ""
                )
                + "</small></div>"
            )
        body = f"<div class=side>{''.join(cards)}</div>"
        lead = f"Boxes of the fp32 model and of each cvimodel on {hp.esc(name)}."
    elif result.recipe.task == "classify":
        ref = next(iter(result.reference))
        labels = _labels(int(result.reference[ref].size))
        cards = []
        tops = summary.classify_build(result)
        for row in tops:
            lines = "".join(
                f"<tr><td>{hp.esc(class_name(labels, c))}</td><td class=num>{p:.3f}</td>"
                f"<td style='width:40%'><div class=bar style='width:{100 * p:.0f}%'></div></td>"
                "</tr>"
                for c, p in row.top
            )
            cards.append(
                f"<div class=card><h3>{hp.esc(row.model)}</h3><table>{lines}</table></div>"
            )
        same = summary.top1_agrees(tops)
        body = (
            f"<div class=side><div class=card>{photo}<small>{hp.esc(name)}</small></div>"
            + "".join(cards)
            + "</div>"
            + (
                ""
                if same
                else "<p class=bad>The models do not agree on the top-1 class of this image.</p>"
            )
        )
        lead = "Top-5 classes (softmax probabilities) of fp32 and of each cvimodel."
    else:
        rows = []
        for n, ref_out in result.reference.items():
            rows.append(
                [
                    hp.esc(n),
                    "×".join(map(str, ref_out.shape)),
                    f"{ref_out.min():.3g} … {ref_out.max():.3g}",
                ]
                + [
                    f"{metrics.cosine(ref_out, art.outputs[n]):.4f}" if n in art.outputs else "—"
                    for art in result.models.values()
                ]
            )
        body = (
            f"<div class=side><div class=card>{photo}<small>{hp.esc(name)}</small></div></div>"
            if photo
            else ""
        ) + hp.table(
            ["output", "shape", "fp32 range", *[f"{m.upper()} cosine" for m in result.models]],
            rows,
        )
        lead = "Each output of each cvimodel against the fp32 model on the test input."
    title = "On the test input" if tensors else "On the test image"
    return hp.section("test-image", title, body, lead)


def _mix(result: BuildResult) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from duotpu.builder import mixprec

    mix = result.mix
    assert mix is not None
    rows: list[Candidate] = list(mix.rows)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    xs = [c.n_bf16 if not c.all_bf16 else max(r.n_bf16 for r in rows) + 2 for c in rows]
    ys = [c.metric for c in rows]
    sizes = [20 + 12 * c.ion_mb for c in rows]
    tips = {}
    for i, (x, y, s, c) in enumerate(zip(xs, ys, sizes, rows)):
        color = "#1a7f37" if c.meets else "#888"
        pt = ax.scatter([x], [y], s=s, color=color, alpha=0.8, zorder=3)
        pt.set_gid(f"mix-{i}")
        tips[f"mix-{i}"] = (
            f"{c.label}: {c.shown_bf16} BF16 layers, metric {c.metric:.4f}, ION {c.ion_mb:.2f} MB"
            + (f", est. {c.est_ms:.1f} ms" if c.est_ms else "")
        )
    best = mix.best
    bx = xs[mix.chosen]
    ax.scatter([bx], [best.metric], s=160, facecolors="none", edgecolors="#cf222e", zorder=4)
    ax.annotate("chosen", (bx, best.metric), textcoords="offset points", xytext=(8, -12))
    # the best metric reached with at most n BF16 layers: the trade-off's frontier
    steps = sorted(set(xs))
    best_at = [max(y for x, y in zip(xs, ys) if x <= s) for s in steps]
    ax.step(steps, best_at, where="post", color="#999", lw=1, zorder=1, label="best so far")
    if mix.target:
        from duotpu.config.recipe import parse_target

        need = parse_target(mix.target).value
        ax.axhline(need, ls="--", lw=0.8, color="#1a7f37", zorder=0)
        ys = [*ys, need]  # keep the target line in view
    ax.set_xlabel("layers in BF16 (rightmost: the whole model)")
    ax.set_ylabel(mix.target.split(">=")[0] if mix.target else "metric")
    hp.zoom(ax, ys, top=max(ys))
    ax.grid(alpha=0.3)
    plot = hp.svg(fig, tips)
    table = hp.table(
        ["candidate", "BF16 layers", "metric", "meets", "ION", "est. ms"],
        [
            [
                ("<b>" if i == mix.chosen else "") + hp.esc(c.label),
                c.shown_bf16,
                f"{c.metric:.4f}" + (" (simulator)" if c.measured_on == "simulator" else ""),
                "yes" if c.meets else "no",
                f"{c.ion_mb:.2f} MB",
                f"{c.est_ms:.1f}" if c.est_ms else "—",
            ]
            for i, c in enumerate(rows)
        ]
        + [[hp.esc(c.label), c.shown_bf16, "not built", "—", "—", "—"] for c in mix.failed],
        numeric=(1, 2, 4, 5),
    )
    if mix.failed:
        table += (
            "<p>Not built:</p><ul>"
            + "".join(f"<li>{hp.esc(n)}</li>" for n in mixprec.failed_notes(mix.failed))
            + "</ul>"
        )
    verdict = (
        (
            f"Target {hp.esc(mix.target)}: met"
            if mix.met
            else f"Target {hp.esc(mix.target)}: <span class=bad>not met</span>"
        )
        if mix.target
        else "The given quantize table, measured (no target to meet)"
    )
    lead = (
        verdict + f" by {hp.esc(best.label)} ({best.shown_bf16} BF16 layers, {best.metric:.4f}). "
        "Green points meet the target; a point's area grows with its board memory (ION); "
        "hover a point for its numbers."
    )
    return hp.section("mix", "Mixed precision: accuracy against BF16 layers", plot + table, lead)


def _slowest_layers(result: BuildResult, manifest: dict[str, Any], n: int = 8) -> str:
    art = next((a for a in result.models.values() if a.estimate is not None), None)
    if art is None or not art.estimate.layers:
        return ""
    info = manifest["models"][art.mode].get("tensor_info")
    names = latency.layer_names(Path(info) if info else None)
    total = art.estimate.ms or 1.0
    rows = [
        [
            hp.breakable(names.get(lt.layer, f"layer {lt.layer}")),
            f"{lt.tiu_ms:.3f}",
            f"{lt.tdma_ms:.3f}",
            f"{100 * max(lt.tiu_ms, lt.tdma_ms) / total:.0f} %",
        ]
        for lt in art.estimate.top_layers(n)
    ]
    return hp.section(
        "latency",
        f"Where the time goes ({art.mode.upper()}, estimated)",
        hp.table(["layer", "TIU ms", "TDMA ms", "share"], rows, numeric=(1, 2, 3)),
        f"The {n} layers with the most estimated engine time of {art.estimate.ms:.2f} ms in all "
        "(TIU computes, TDMA moves data; the two overlap).",
    )


def _recipe(result: BuildResult) -> str:
    r = result.recipe
    pre = r.preprocess
    inputs = ", ".join(f"{i.name} {'×'.join(map(str, i.shape))}" for i in r.inputs)
    pairs = [
        ("chip", hp.esc(r.chip)),
        ("quantize", hp.esc(", ".join(m.upper() for m in r.quantize))),
        ("inputs" if len(r.inputs) > 1 else "input", hp.esc(inputs)),
        (
            "preprocess",
            hp.esc(
                "none: the inputs are tensors, taken as they are"
                if r.tensor_inputs
                else f"resize {pre.resize or 'to the input'} ({pre.resize_mode}), "
                f"{pre.pixel_format}, mean {list(pre.mean)}, std {list(pre.std)}"
            ),
        ),
        (
            "calibration",
            hp.esc(
                f"{r.calibration.count} {'samples' if r.tensor_inputs else 'images'} from "
                f"{r.calibration.images}, {r.calibration.method}, tune_num "
                f"{r.calibration.tune_num}"
            ),
        ),
    ]
    if r.mix.target or r.mix.qtable:
        pairs.append(("mixed precision", hp.esc(r.mix.target or r.mix.qtable)))
    if r.model.outputs:
        pairs.append(("cut at", hp.esc(", ".join(r.model.outputs))))
    if r.deploy.fuse_preprocess:
        pairs.append(("fused preprocessing", hp.esc(r.deploy.pixel_format)))
    pairs.append(("recipe file", f"<code>{hp.esc(result.recipe_path.name)}</code>"))
    return hp.section("recipe", "Recipe", hp.key_values(pairs))


def _stages(result: BuildResult) -> str:
    failed = result.failed_stages
    total = sum(s.seconds for s in result.stages if not s.cached) + sum(failed.values())
    ran = [(s.name, s.seconds, "cached" if s.cached else "ran") for s in result.stages]
    ran += [(name, seconds, "failed") for name, seconds in failed.items()]
    rows = [
        [
            hp.esc(name),
            f"{seconds:.1f} s",
            f"{100 * seconds / total:.0f} %" if total and how != "cached" else "—",
            how,
        ]
        for name, seconds, how in sorted(ran, key=lambda r: (r[2] == "cached", -r[1]))
    ]
    return hp.section(
        "stages",
        "Stages",
        hp.table(["stage", "time", "share", ""], rows, numeric=(1, 2)),
        f"{total:.1f} s of work in this build; a cached stage shows the time it took when it ran.",
    )
