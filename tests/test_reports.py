"""The build and eval reports, opened in headless Chromium as a person would see them."""

from __future__ import annotations

import json

import numpy as np

from conftest import run_cli
from duotpu.core.images import write_calibration_set
from reportcheck import look, numbers_match


def test_every_build_writes_a_report(tiny_build, browser, tmp_path):
    """The build report: model card, test image with every model's top-5, the latency estimate,
    recipe and stages; its numbers are the manifest's."""
    page = tiny_build.report
    assert page == tiny_build.out_dir / "report.html" and page.is_file()
    facts = look(browser, page, tmp_path, {"models", "test-image", "latency", "recipe", "stages"})
    assert numbers_match(facts, tiny_build.manifest) >= 3 * len(tiny_build.models)
    # fp32 and each cvimodel show their top-5, with the fp32 top-1 probability to 3 digits
    ref = next(iter(tiny_build.reference.values())).ravel()
    p = np.exp(ref - ref.max())
    p /= p.sum()
    assert facts["cards"] == 1 + 1 + len(tiny_build.models)  # photo, fp32, models
    assert f"class {int(p.argmax())}\t{p.max():.3f}" in facts["text"]
    for mode in tiny_build.models:
        assert tiny_build.models[mode].cvimodel.name in facts["text"]


def test_eval_report_shows_where_accuracy_is_lost(tiny_build, browser, tmp_path):
    """`duotpu eval` on a labelled folder: the agreement table with accuracy columns, cosine
    along the network with every tensor's full name on hover, the per-image cosines; the
    numbers on the page are report.json's."""
    folder = tmp_path / "val"
    for cls in ("1", "4"):
        write_calibration_set(folder / cls, 3, seed=int(cls))
    out = tmp_path / "rep"
    p = run_cli("eval", str(tiny_build.out_dir), "--images", str(folder), "--out", str(out))
    assert p.returncode == 0, p.stderr + p.stdout
    data = json.loads((out / "report.json").read_text())
    facts = look(browser, out / "report.html", tmp_path, {"summary", "depth", "cosines", "changed"})
    assert numbers_match(facts, out / "report.json") >= 6
    assert {"top-1 acc", "top-5 acc"} <= set(facts["text"].replace("\n", " ").split("\t"))
    for mode, layers in data["per_layer"].items():
        names = {n for n, _ in layers}
        shown = {
            t.split(" · ")[1].split(": ")[0].split(" ", 1)[1]
            for t in facts["tooltips"]
            if t.startswith(mode.upper())
        }
        assert names and shown == names
    lines = p.stdout.splitlines()
    assert max(map(len, lines)) <= 100 and not any("…" in ln for ln in lines), p.stdout


def test_the_gallery_shows_changed_answers_and_stays_light(browser, tmp_path):
    """Images whose top-1 changed: one card per image (thumbnail, fp32 vs each model's top-3);
    a report of 200 photos, with its full gallery, stays under 2 MB."""
    from duotpu.eval import evaluate
    from duotpu.eval.report import write_eval_report

    photos = write_calibration_set(tmp_path / "photos", 200, seed=5)
    rng = np.random.default_rng(0)
    p_fp32 = rng.dirichlet(np.ones(10) * 0.3, size=200)
    p_int8 = p_fp32.copy()
    flip = rng.choice(200, 30, replace=False)
    p_int8[flip] = np.roll(p_int8[flip], 1, axis=1)  # these change their top-1
    changed = evaluate.changed_top1(photos, p_fp32, {"int8": p_int8}, None)
    assert {c["image"] for c in changed} == {str(photos[i]) for i in flip}
    first = max(flip, key=lambda i: p_fp32[i].max())
    assert changed[0]["image"] == str(photos[first])  # the most confident flip first
    cos = [float(v) for v in rng.uniform(0.95, 1.0, 200)]
    from duotpu.core.metrics import ModeMetrics
    from duotpu.eval.results import ClassifyEval

    data = ClassifyEval(
        "m",
        "m",
        str(tmp_path / "photos"),
        200,
        "mlir",
        margin=0.05,
        fp32={"n": 200, "decisive_n": 150},
        modes={
            "int8": ModeMetrics(
                "int8",
                200,
                top1_agree=1 - 30 / 200,
                decisive_n=150,
                decisive_top1_agree=0.9,
                top5_contains_fp32_top1=1.0,
                cosine_mean=float(np.mean(cos)),
                cosine_worst=min(cos),
                kl_mean=0.01,
                images_per_second=10.0,
                cosines=cos,
            )
        },
        changed=changed,
    )
    _, html = write_eval_report(tmp_path / "rep", data)
    facts = look(browser, html, tmp_path, {"summary", "cosines", "changed"})
    assert facts["cards"] == 24  # the 24 most confident of the 30
    assert "top-1 acc" not in facts["text"]  # no labels: no empty accuracy columns
    assert html.stat().st_size < 2e6
