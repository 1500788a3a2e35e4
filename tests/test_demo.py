"""The main job on the built-in default model: EfficientNet-Lite0 with its ImageNet weights,
INT8 + BF16 for cv180x, verified, then the cat photo classified by each model.

Uses 12 calibration images instead of the demo's 100 to keep the suite fast."""

import json

import pytest

from conftest import run_cli

CAT_CLASSES = {281, 282, 283, 284, 285, 286, 287}  # tabby … Egyptian cat, lynx (ImageNet ids)


@pytest.mark.slow
def test_demo_classifies_the_cat_with_all_three_models(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--calib-count", "12", "--out", str(out), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout[proc.stdout.index("{") :])
    rows = {r["model"]: r for r in data["classification"]}
    assert set(rows) == {"fp32 ONNX", "INT8 cvimodel", "BF16 cvimodel"}
    fp32_top1 = rows["fp32 ONNX"]["top"][0]["class"]
    assert fp32_top1 in CAT_CLASSES  # the real pretrained weights and preprocessing are in use
    for name in ("INT8 cvimodel", "BF16 cvimodel"):
        assert rows[name]["top"][0]["class"] == fp32_top1
        top5 = {t["class"] for t in rows[name]["top"]}
        assert len(top5 & {t["class"] for t in rows["fp32 ONNX"]["top"]}) >= 4
    assert rows["BF16 cvimodel"]["cosine_vs_fp32"] > 0.99
    assert rows["INT8 cvimodel"]["cosine_vs_fp32"] > 0.95
    assert rows["INT8 cvimodel"]["ion_mb"] < rows["BF16 cvimodel"]["ion_mb"]
    assert rows["INT8 cvimodel"]["size_bytes"] < rows["BF16 cvimodel"]["size_bytes"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["calibration"]["count"] == 12
    assert manifest["recipe"]["preprocess"]["resize_mode"] == "short_side"
    # the human-readable form
    table = run_cli("demo", "--calib-count", "12", "--out", str(out), cwd=tmp_path)
    assert table.returncode == 0
    assert "Egyptian cat" in table.stdout or "tabby" in table.stdout
    assert table.stdout.count("cached") >= 6
