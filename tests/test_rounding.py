"""Optimized INT8 weight rounding: the cvimodel's integer weights are the ones the rounding
chose, and each layer's output on the calibration images is no further from fp32 than with
round-to-nearest."""

from __future__ import annotations

import json

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
    rounded = stages["round"].result
    report = json.loads((stages["round"].folder / "rounding.json").read_text())
    assert {x["op"] for x in report} == {"Conv", "MatMul"} and len(report) == 3
    assert all(x["mse_optimized"] <= x["mse_nearest"] for x in report)
    assert any(x["flipped"] > 0 for x in report)  # it chose other integers than nearest
    said = [e.message for e in events if e.stage == "round" and e.status == "info"]
    assert said and "3 layers rounded" in said[0]
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
