"""Activation thresholds tuned by the optimized rounding (`duotpu.builder.rounding`): the
tuning moves a threshold only where the layers reading the tensor come out closer to fp32, only
on tensors whose every reader it measures, and the table tpu_mlir reads is rewritten in place."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duotpu.builder import rounding

TABLE = """# mlir version: v1.30.2 cali version 1.0
# op_name    threshold    min    max
input 2.6399999 -2.1179039 2.6399999
conv1_Relu 6.0000000 0.0000000 6.0000000
conv2 61.3630142 -61.9737854 72.3746948
"""


def _conv(name: str, src: str, weight: str) -> rounding.Layer:
    attrs = {"kernel_shape": [1, 1], "strides": [1, 1], "pads": [0, 0, 0, 0], "group": 1}
    return rounding.Layer(name, "Conv", src, weight, None, attrs)


def test_a_threshold_that_clips_too_much_is_raised_and_none_is_lowered() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, (8, 16, 1, 1)).astype(np.float32)
    layer = _conv("conv2", "conv1_Relu", "w")
    # a KL threshold of 1.0 on values that often reach 4: raised toward 4, the error falls
    x = rng.exponential(1.0, (8, 16, 12, 12)).clip(0, 4).astype(np.float32)
    tuned, at_table, at_tuned = rounding.tune_threshold([(layer, w, None, x)], 1.0, 4.0)
    assert 1.0 < tuned <= 4.0 and at_tuned < at_table * 0.5
    # ReLU6 outputs that are mostly small: a lower threshold would lower the mean error on
    # these samples, but it clips other images' rare large values: the table's 6 stays
    small = np.clip(rng.exponential(0.3, (8, 16, 12, 12)), 0, 6).astype(np.float32)
    assert rounding.tune_threshold([(layer, w, None, small)], 6.0, 6.0)[0] == 6.0
    # one outlier far above the KL threshold: clipping it costs less than coarser steps for all
    few = rng.uniform(0, 1, (8, 16, 12, 12)).astype(np.float32)
    few[3, 2, 1, 1] = 4.0
    kept, e0, e1 = rounding.tune_threshold([(layer, w, None, few)], 1.0, 4.0)
    assert kept == 1.0 and e0 == e1


def test_only_tensors_every_reader_of_which_is_measured_are_tuned() -> None:
    graph = {
        "input": {"type": "top.Input", "inputs": []},
        "conv1_Relu": {"type": "top.Conv", "inputs": ["input", "w1"]},
        "conv2": {"type": "top.Conv", "inputs": ["conv1_Relu", "w2"]},
        "conv3": {"type": "top.Conv", "inputs": ["conv2", "w3"]},
        "add": {"type": "top.Add", "inputs": ["conv2", "conv3"]},
        "fc": {"type": "top.MatMul", "inputs": ["add", "w4"]},
    }
    found = [
        _conv("conv1_Relu", "input", "w1"),
        _conv("conv2", "conv1_Relu", "w2"),
        _conv("conv3", "conv2", "w3"),
        rounding.Layer("fc", "MatMul", "add", "w4", None, {}),
    ]
    thresholds = {"input": 2.6, "conv1_Relu": 6.0, "conv2": 61.0, "add": 70.0}
    # the input has no producer to requantize; conv2 is read by the Add too; add is no Conv
    assert rounding.tunable(found, graph, thresholds) == {"conv1_Relu"}


def test_the_table_is_rewritten_with_the_tuned_thresholds_only(tmp_path: Path) -> None:
    src = tmp_path / "net_cali_table"
    src.write_text(TABLE)
    assert rounding.read_thresholds(src) == {
        "input": 2.6399999,
        "conv1_Relu": 6.0,
        "conv2": 61.3630142,
    }
    assert rounding.read_ceilings(src)["conv2"] == 72.3746948  # the larger of |min| and |max|
    out = tmp_path / "tuned" / "net_cali_table"
    out.parent.mkdir()
    rounding.write_thresholds(src, out, {"conv1_Relu": 2.25})
    lines = out.read_text().splitlines()
    assert lines[:2] == TABLE.splitlines()[:2]  # tpu_mlir's header kept
    assert "conv1_Relu 2.2500000 0.0000000 6.0000000" in lines
    assert rounding.read_thresholds(out) == {
        "input": 2.6399999,
        "conv1_Relu": 2.25,
        "conv2": 61.3630142,
    }
