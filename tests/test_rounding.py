"""Optimized INT8 weight rounding: the cvimodel's integer weights are the ones the rounding
chose, and each layer's output on the calibration images is no further from fp32 than with
round-to-nearest."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from conftest import tiny_recipe
from duotpu.builder import pipeline, rounding


def test_the_cvimodel_holds_the_integers_the_rounding_chose(tiny_onnx_path, tmp_path):
    events: list = []
    r = pipeline.build(
        tiny_recipe(tiny_onnx_path, quantize=["int8"], **{"calibration.rounding": "optimized"}),
        tmp_path / "b",
        events=events.append,
    )
    stages = {s.name: s for s in r.stages}
    rounded = stages["round"].result.transformed
    report = json.loads((stages["round"].folder / "rounding.json").read_text())
    assert {x["op"] for x in report} == {"Conv", "MatMul"} and len(report) == 3
    assert all(x["mse_optimized"] <= x["mse_nearest"] for x in report)
    assert any(x["flipped"] > 0 for x in report)  # it chose other integers than nearest
    said = [e.message for e in events if e.stage == "round" and e.status == "info"]
    assert said and "3 layers rounded" in said[0]
    # the second pass refits every layer on its inputs as the INT8 model computes them with
    # the layers before it refitted (tpu_mlir's quantized MLIR, lowered without a cvimodel)
    assert all(x["on_int8_inputs"] for x in report) and "3 refitted" in said[0]
    lowered = (stages["round"].folder / "pass2" / "deploy.log").read_text()
    assert "--not_gen_bmodel" in lowered and "--calibration_table" in lowered
    assert [p.name for p in (stages["round"].folder / "pass2").iterdir()] == ["deploy.log"]
    # the integers in the deployed model are the chosen ones, for every layer
    with np.load(stages["transform"].result.weights) as z:
        before = {k: np.array(z[k]) for k in z.files}
    with np.load(rounded.weights) as z:
        after = {k: np.array(z[k]) for k in z.files}
    deploy = stages["deploy-int8"].folder
    lowered = next(deploy.glob("*_tpu_lowered_cv180x_int8_sym_weight.npz"))
    changed = 0
    with np.load(lowered) as q:
        for x in report:
            layer = next(k for k in q.files if k == f"{x['layer']}_filter_i8")
            chosen = rounding.tpu_integers(after[x["weight"]], x["op"]).ravel()
            assert np.array_equal(q[layer].ravel(), chosen), x["layer"]
            nearest = rounding.tpu_integers(before[x["weight"]], x["op"]).ravel()
            changed += not np.array_equal(chosen, nearest)
            assert (chosen != nearest).mean() == x["flipped"]
    assert changed >= 1
    assert r.models["int8"].cosine["logits"] > 0.99
    # the round stage's table (r1: conv1 + ReLU, read by conv2 alone, may be tuned) is the
    # one the INT8 deploy read: its thresholds are the deployed model's
    tuned = {x["layer"]: x["threshold_tuned"] for x in report}  # by the layer reading it
    before = rounding.read_thresholds(stages["calibrate"].result.table)
    table = rounding.read_thresholds(stages["round"].result.calibrated.table)
    assert abs(table["r1_Relu"] - tuned["r2_Relu"]) < 1e-6 and tuned["r2_Relu"] >= before["r1_Relu"]
    assert {k: v for k, v in table.items() if k != "r1_Relu"} == {
        k: v for k, v in before.items() if k != "r1_Relu"
    }
    deployed = _deployed_thresholds(next(deploy.glob("*_int8_sym_tpu.mlir")))
    assert abs(deployed["r1_Relu"] - table["r1_Relu"]) < 1e-4
    # and a threshold written into a table is what tpu_mlir deploys with
    from duotpu import compiler
    from duotpu.builder.quantize import deploy_options

    moved = tmp_path / "moved" / "tiny_cali_table"
    moved.parent.mkdir()
    rounding.write_thresholds(stages["calibrate"].result.table, moved, {"r1_Relu": 4.5})
    opts = deploy_options(r.recipe, "int8", None)
    files = compiler.deploy(
        rounded.files, tmp_path / "moved", tmp_path / "moved" / "deploy.log",
        replace(opts, tolerance=compiler.NO_TOLERANCE), cvimodel_name="moved.cvimodel",
        calibration_table=moved, validate=False,
    )  # fmt: skip
    assert abs(_deployed_thresholds(files.tpu_mlir)["r1_Relu"] - 4.5) < 1e-4


def _deployed_thresholds(tpu_mlir) -> dict[str, float]:
    """Each INT8 tensor of a quantized MLIR by name → its threshold (scale × 127)."""
    import re

    text = tpu_mlir.read_text()
    locs = dict(re.findall(r'^(#loc\d+) = loc\("([^"]+)"\)', text, re.M))
    out = {}
    for m in re.finditer(
        r"-> tensor<[^>]*!quant\.uniform<i8:f32, ([\d.e+-]+)>> loc\((#loc\d+)\)", text
    ):
        if m.group(2) in locs:
            out[locs[m.group(2)]] = float(m.group(1)) * 127
    return out


def test_a_model_of_tensor_inputs_is_rounded_and_deployed_with_its_tuned_table(tmp_path):
    import tinymodels
    from conftest import run_cli

    src = tinymodels.audio_state_onnx(tmp_path / "Vad model.onnx")
    samples = tinymodels.audio_state_samples(tmp_path / "samples")
    out = tmp_path / "b"
    r = run_cli(
        "build", str(src), "--name", "vad", "--out", str(out), "--calib-images", str(samples),
        "--quantize", "int8", "--rounding", "optimized",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    work = out / "work"
    report = json.loads((work / "round" / "rounding.json").read_text())
    assert [x["op"] for x in report] == ["MatMul"] * 3
    assert all(x["mse_optimized"] <= x["mse_nearest"] for x in report)
    # the integers deployed are the ones chosen
    after = dict(np.load(next((work / "round").glob("*_top_f32_all_weight.npz"))))
    lowered = next((work / "deploy-int8").glob("*_tpu_lowered_cv180x_int8_sym_weight.npz"))
    with np.load(lowered) as q:
        for x in report:
            chosen = rounding.tpu_integers(after[x["weight"]], x["op"]).ravel()
            assert np.array_equal(q[f"{x['layer']}_filter_i8"].ravel(), chosen), x["layer"]
    # the deploy read the round stage's table: every threshold in it is the deployed one
    table = rounding.read_thresholds(next((work / "round").glob("*_cali_table")))
    deployed = _deployed_thresholds(next((work / "deploy-int8").glob("*_int8_sym_tpu.mlir")))
    # (the layers' own tensors: tpu_mlir fixes some others, a Sigmoid's output at 1.0)
    ours = {x["layer"] for x in report} & set(table) & set(deployed)
    assert len(ours) >= 2, (sorted(table), sorted(deployed))
    for name in ours:
        assert abs(deployed[name] - table[name]) <= 1e-4 * table[name], name
    manifest = json.loads((out / "manifest.json").read_text())
    assert min(manifest["models"]["int8"]["cosine_vs_fp32"].values()) > 0.99


def test_the_mix_search_starts_from_the_rounded_model(tiny_onnx_path, tmp_path):
    from duotpu import compiler
    from duotpu.builder import mixprec

    qtable = tmp_path / "one.qtable"
    mixprec.write_qtable(qtable, ["r2_Relu"])
    over = {"calibration.rounding": "optimized", "mix.qtable": str(qtable)}
    r = pipeline.build(tiny_recipe(tiny_onnx_path, quantize=["int8"], **over), tmp_path / "b")
    stages = {s.name: s for s in r.stages}
    rounded = stages["round"].result
    assert stages["mix"].key["weights"] == compiler.file_digest(rounded.transformed.weights)
    assert stages["mix"].key["table"] == compiler.file_digest(rounded.calibrated.table)
    # the mixed model's INT8 layers hold the integers the rounding chose
    after = dict(np.load(rounded.transformed.weights))
    lowered = sorted(stages["mix"].folder.rglob("*_int8_sym_tpu_qtable_weights.npz"))
    assert lowered
    before = dict(np.load(stages["transform"].result.weights))
    with np.load(lowered[-1]) as q:
        assert "r2_Relu_filter_i8" not in q.files  # the layer kept in BF16 ...
        # ... takes its weight from before the rounding (BF16 bits: a float32's upper half)
        kept = (q["w2_bf16"].astype(np.uint32) << 16).view(np.float32).ravel()

        def bf16_of(w):  # within BF16's precision (8 bits of mantissa) of every weight
            return bool(np.all(np.abs(kept - w.ravel()) <= np.abs(w.ravel()) * 2**-8))

        assert bf16_of(before["w2"]) and not bf16_of(after["w2"])
        assert np.array_equal(q["r1_Relu_filter_i8"].ravel(),
                              rounding.tpu_integers(after["w1"], "Conv").ravel())  # fmt: skip


def test_arrays_given_from_python_are_what_the_rounding_is_chosen_on(tiny_onnx_path, tmp_path):
    import duotpu

    rng = np.random.default_rng(3)
    arrays = [rng.normal(0, 1, (1, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    recipe = tiny_recipe(tiny_onnx_path, quantize=["int8"], **{"calibration.rounding": "optimized"})
    events: list = []
    r = duotpu.build(recipe, out_dir=tmp_path / "a", calibration_data=arrays, events=events.append)
    said = [e.message for e in events if e.stage == "round" and e.status == "info"]
    assert said and said[0].startswith("3 layers rounded on 6 calibration samples"), said
    assert min(r.models["int8"].cosine.values()) > 0.95
