"""Small models built inside the tests (ONNX with onnx.helper, PyTorch modules)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_onnx(path: Path, size: int = 32, channels: int = 3, classes: int = 10, seed: int = 0,
              extra_op: str | None = None, dynamic_batch: bool = False) -> Path:
    """Conv → Relu → Conv → Relu → GlobalAveragePool → Flatten → Gemm, random weights.

    ``extra_op`` appends a unary op (e.g. ``Det`` after a reshape is not needed: we use ops the
    compiler does not know) to the logits.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, channels, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 16).astype(np.float32)
    wf = rng.normal(0, 0.3, (classes, 16)).astype(np.float32)
    bf = rng.normal(0, 0.1, classes).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf, "wf"), (bf, "bf")]]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits" if not extra_op else "pre"],
                         name="fc", transB=1),
    ]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["pre"], ["logits"], name=f"my_{extra_op}"))
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    opset = 13
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def tiny_cnn(classes: int = 10, width: int = 8):
    """A small PyTorch CNN (the ``tinymodels:tiny_cnn`` factory of the tests)."""
    import torch
    from torch import nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU6(),
        nn.Conv2d(width, width * 2, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 2, classes)).eval()


def outlier_onnx(path: Path, seed: int = 0) -> Path:
    """A small CNN with one clearly INT8-sensitive layer: ``hot`` (a 1x1 conv) adds a huge
    constant (+400) to one channel, so one INT8 scale cannot hold both that channel and the
    small ones, which carry the signal the next layers use."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    w2 = (np.eye(8) + rng.normal(0, 0.05, (8, 8))).astype(np.float32).reshape(8, 8, 1, 1)
    b2 = np.zeros(8, np.float32)
    b2[0] = 400.0
    w3 = rng.normal(0, 0.3, (16, 8, 1, 1)).astype(np.float32)
    w3[:, 0] = 0.0  # the outlier channel carries no signal onwards
    b3 = rng.normal(0, 0.1, 16).astype(np.float32)
    wf = rng.normal(0, 0.3, (10, 16)).astype(np.float32)
    bf = np.zeros(10, np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (w3, "w3"), (b3, "b3"),
              (wf, "wf"), (bf, "bf")]]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="hot"),
        helper.make_node("Relu", ["c2"], ["hot"], name="hot_relu"),
        helper.make_node("Conv", ["hot", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "outlier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
