"""The cuts a build tries itself before a failing last layer (builder/export.cuts_before)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from duotpu.builder.export import cuts_before


def _recognizer_tail(path: Path) -> Path:
    """input → Conv → Relu (r) → GlobalAveragePool (g) → Flatten → MatMul (mm) → Add bias (a)
    → Softmax: a classifier's or recognizer's end."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "fc"),
        numpy_helper.from_array(rng.normal(size=(5,)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["a"]),
        helper.make_node("Softmax", ["a"], ["p"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_each_cut_puts_one_more_layer_on_the_cpu(tmp_path: Path) -> None:
    """From the tensor before the Softmax back: the MatMul's output is skipped (its bias Add is
    one layer with it on the TPU) and so is the Flatten's (it only moves data)."""
    src = _recognizer_tail(tmp_path / "m.onnx")
    assert cuts_before(src, "a", 3) == ["a", "g", "r"]
    assert cuts_before(src, "a", 1) == ["a"]
    assert cuts_before(src, "c", 3) == ["c"]  # the Conv reads the model input: no cut before
