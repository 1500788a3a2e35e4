"""ONNX intake: files from other exporters (newer IR, free dims, newer opsets, external data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from duotpu.builder import intake
from duotpu.config.errors import ConfigError, ModelError, ShapeError


def _graph_model(
    dims: list,
    *,
    ir: int = 8,
    opset: int = 13,
    act: str = "Relu",
    extra_inputs: int = 0,
    meta: dict[str, str] | None = None,
    act_attrs: dict | None = None,
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node(act, ["c"], ["a"], name="act", **(act_attrs or {})),
        helper.make_node("GlobalAveragePool", ["a"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["y"], name="flat"),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    inputs += [
        helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, [1, 2])
        for i in range(extra_inputs)
    ]
    g = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w]
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    for k, v in (meta or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def _save(m: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(m.SerializeToString())  # no checker: IR 10 is past the installed onnx's
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_ir10_with_named_free_dims_takes_ultralytics_imgsz_and_runs(tmp_path: Path) -> None:
    src = _save(
        _graph_model(["batch", 3, "height", "width"], ir=10, opset=17, meta={"imgsz": "[24, 40]"}),
        tmp_path / "yolo.onnx",
    )
    shape, note = intake.settle_shape(src, ())
    assert shape == (1, 3, 24, 40) and "imgsz" in note
    out = tmp_path / "out.onnx"
    notes = intake.normalise(src, out, shape)
    fixed = onnx.load(str(out))
    assert fixed.ir_version == intake.SIMPLIFIER_IR  # onnxsim reads it (IR 9 it refuses)
    assert any("IR version 10" in n for n in notes)
    dims = [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 24, 40]
    onnx.checker.check_model(fixed)
    # same numbers as the same graph written with static dims at IR 8
    ref = _save(_graph_model([1, 3, 24, 40]), tmp_path / "ref.onnx")
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(ref, x), rtol=1e-5, atol=1e-6)


def test_unnamed_free_dims_take_the_recipes_shape_or_ask_for_one(tmp_path: Path) -> None:
    m = _graph_model([1, 3, 8, 8], ir=7, opset=11)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value = -1  # paddle2onnx writes -1 for a free batch, and no name for H and W
    for d in dims[2:]:
        d.Clear()
    src = _save(m, tmp_path / "paddle.onnx")
    shape, note = intake.settle_shape(src, (1, 3, 48, 192))
    assert shape == (1, 3, 48, 192) and "free dims fixed" in note
    with pytest.raises(ModelError) as e:
        intake.settle_shape(src, ())
    msg = str(e.value)
    assert "dim 2" in msg and "dim 3" in msg and "--input-shape 1,3,H,W" in msg
    assert isinstance(e.value, ConfigError)  # the user's to settle: exit 2, as recipe errors
    with pytest.raises(ModelError, match="fixed dims must be kept"):
        intake.settle_shape(src, (1, 1, 48, 192))  # channels are fixed at 3
    out = tmp_path / "out.onnx"
    intake.normalise(src, out, shape)
    assert _run(out, np.zeros(shape, np.float32)).shape == (1, 4)


def test_fixed_model_keeps_its_own_shape_when_the_recipe_gives_none(tmp_path: Path) -> None:
    src = _save(_graph_model([1, 3, 20, 30]), tmp_path / "m.onnx")
    assert intake.settle_shape(src, ()) == ((1, 3, 20, 30), "")
    with pytest.raises(ModelError, match=r"\[1, 3, 20, 30\]"):
        intake.settle_shape(src, (1, 3, 224, 224))


def test_gelu_at_opset_21_is_lowered_and_stays_gelu(tmp_path: Path) -> None:
    src = _save(_graph_model([1, 3, 8, 8], ir=10, opset=21, act="Gelu"), tmp_path / "g.onnx")
    out = tmp_path / "out.onnx"
    notes = intake.normalise(src, out, (1, 3, 8, 8))
    fixed = onnx.load(str(out))
    ops = [n.op_type for n in fixed.graph.node]
    # written as PyTorch writes GELU, the form tpu_mlir fuses into its GELU op (a lookup table)
    assert "Gelu" not in ops and "Tanh" not in ops and ops.count("Erf") == 1
    assert len(intake._fused_gelu_erfs(fixed)) == 1
    assert fixed.opset_import[0].version == intake.MAX_OPSET
    assert any("opset 21 lowered" in n for n in notes) and any("Gelu" in n for n in notes)
    # the rewritten activation is GELU, checked against math.erf
    x = np.random.default_rng(2).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    fixed.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    both = _save(fixed, tmp_path / "both.onnx")
    y, cmap = ort.InferenceSession(str(both), providers=["CPUExecutionProvider"]).run(
        ["y", "c"], {"x": x}
    )
    exact = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(cmap)
    np.testing.assert_allclose(y, exact.mean(axis=(2, 3)), atol=1e-5)


def test_pytorchs_gelu_keeps_its_erf_and_other_erfs_become_tanh(tmp_path: Path) -> None:
    """torch.nn.GELU's export (Div, Erf, Add 1, Mul x, Mul 0.5) is left for tpu_mlir to fuse;
    the same ops in another order, which its pattern does not match, are rewritten."""
    import torch

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.gelu(x) + torch.erf(x) * 0.5

    torch.onnx.export(
        Net(), (torch.zeros(1, 3, 8, 8),), str(tmp_path / "t.onnx"), input_names=["x"],
        opset_version=17, dynamo=False,
    )  # fmt: skip
    out = tmp_path / "out.onnx"
    notes = intake.normalise(tmp_path / "t.onnx", out, (1, 3, 8, 8))
    fixed = onnx.load(str(out))
    assert [n.op_type for n in fixed.graph.node].count("Erf") == 1  # the GELU's
    assert len(intake._fused_gelu_erfs(fixed)) == 1
    assert any("1 Erf node(s) outside a GELU" in n for n in notes), notes
    x = np.random.default_rng(4).normal(0, 2, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(tmp_path / "t.onnx", x), atol=4e-4)


def test_erf_from_a_pytorch_gelu_export_becomes_tanh(tmp_path: Path) -> None:
    src = _save(_graph_model([1, 3, 8, 8], act="Erf"), tmp_path / "erf.onnx")
    out = tmp_path / "out.onnx"
    intake.normalise(src, out, (1, 3, 8, 8))
    assert "Erf" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    x = np.random.default_rng(3).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(src, x), atol=4e-4)


def test_ops_changed_after_opset_19_are_refused_by_name(tmp_path: Path) -> None:
    m = _graph_model([1, 3, 8, 8], opset=21, act="GroupNormalization")
    src = _save(m, tmp_path / "gn.onnx")
    with pytest.raises(ModelError, match=r"GroupNormalization \(changed in opset 21\)"):
        intake.normalise(src, tmp_path / "out.onnx", (1, 3, 8, 8))
    assert not (tmp_path / "out.onnx").exists()


def test_quantized_graph_is_refused_and_the_float_model_asked_for(tmp_path: Path) -> None:
    m = _graph_model([1, 3, 8, 8], act="DynamicQuantizeLinear")
    src = _save(m, tmp_path / "q.onnx")
    with pytest.raises(ModelError, match="already quantized.*DynamicQuantizeLinear.*float model"):
        intake.normalise(src, tmp_path / "out.onnx", (1, 3, 8, 8))


def test_corrupt_means_the_bytes_do_not_parse(tmp_path: Path) -> None:
    good = _save(_graph_model([1, 3, 8, 8]), tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        intake.load(bad)
    # IR 10 is not corrupt, only newer than the installed checker
    newer = _save(_graph_model([1, 3, 8, 8], ir=10), tmp_path / "ir10.onnx")
    assert intake.load(newer).ir_version == 10


def test_external_data_is_read_and_a_missing_file_named(tmp_path: Path) -> None:
    m = _graph_model([1, 3, 8, 8])
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(
        m,
        str(folder / "m.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="m.weights",
        size_threshold=0,
    )
    out = tmp_path / "out.onnx"
    intake.normalise(folder / "m.onnx", out, (1, 3, 8, 8))
    x = np.ones((1, 3, 8, 8), np.float32)
    np.testing.assert_allclose(_run(out, x), _run(folder / "m.onnx", x), rtol=1e-6)
    (folder / "m.weights").unlink()
    with pytest.raises(ModelError, match="m.weights"):
        intake.normalise(folder / "m.onnx", tmp_path / "out2.onnx", (1, 3, 8, 8))


def test_several_inputs_are_settled_by_name_and_a_free_dim_asked_for(tmp_path: Path) -> None:
    src = _save(_graph_model(["batch", 3, 8, 8], extra_inputs=1), tmp_path / "two.onnx")
    settled, note = intake.settle_inputs(src, [])
    assert settled == [("x", (1, 3, 8, 8)), ("extra0", (1, 2))]
    assert "'x'" in note and "[1, 3, 8, 8]" in note
    assert intake.settle_inputs(src, [("x", (2, 3, 8, 8))])[0][0] == ("x", (2, 3, 8, 8))
    with pytest.raises(ShapeError, match=r"names an input 'input'.*--set 'inputs=\[\{name = \"x\""):
        intake.settle_inputs(src, [("input", (1, 3, 8, 8))])
    with pytest.raises(ShapeError, match="fixed dims must be kept"):
        intake.settle_inputs(src, [("extra0", (1, 3))])
    free = _save(_graph_model([1, 3, "h", "w"], extra_inputs=1), tmp_path / "free.onnx")
    with pytest.raises(ShapeError, match=r"'x'.*free dim\(s\) 2, 3.*shape = \[1, 3, SIZE, SIZE\]"):
        intake.settle_inputs(free, [])
    out = tmp_path / "fixed.onnx"
    intake.normalise(src, out, {"x": (1, 3, 8, 8), "extra0": (1, 2)})
    assert [i.dims for i in intake.inputs_info(onnx.load(str(out)))] == [(1, 3, 8, 8), (1, 2)]


def test_a_tensor_input_of_other_rank_settles_its_batch(tmp_path: Path) -> None:
    src = _save(_graph_model([1, 3, 8, 8]), tmp_path / "m.onnx")
    m = onnx.load(str(src))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del m.graph.input[0].type.tensor_type.shape.dim[2:]
    audio = _save(m, tmp_path / "audio.onnx")
    assert intake.settle_shape(audio, ())[0] == (1, 3)
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "T"
    with pytest.raises(ShapeError, match=r"--input-shape 1,SIZE "):
        intake.settle_shape(_save(m, tmp_path / "free.onnx"), ())


def _external(tmp_path: Path, location: str) -> Path:
    """A model whose weight ``w`` lives in the external file ``location``."""
    from onnx.external_data_helper import set_external_data

    model = _graph_model([1, 3, 8, 8])
    w = next(t for t in model.graph.initializer if t.name == "w")
    raw = numpy_helper.to_array(w).tobytes()
    (tmp_path / "m").mkdir(exist_ok=True)
    target = (tmp_path / "m" / location).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(raw)
    set_external_data(w, location=location, length=len(raw))
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    path = tmp_path / "m" / "model.onnx"
    onnx.save(model, str(path))
    return path


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    # onnx 1.14 follows `location` anywhere (CVE-2024-27318): ../secret would be read
    path = _external(tmp_path, "../secret.bin")
    with pytest.raises(ModelError, match="outside the model's folder"):
        intake.load(path)
    ok = _external(tmp_path, "weights.bin")
    assert intake.load(ok).graph.initializer  # inside the folder: read


def test_the_export_key_holds_the_external_data_and_the_factorys_siblings(tmp_path):
    from duotpu.builder import export
    from duotpu.config.recipe import ModelSource

    path = _external(tmp_path, "weights.bin")
    files = export.source_files(ModelSource(source=str(path)))
    assert tmp_path / "m" / "weights.bin" in [f.resolve() for f in files]
    # a factory module's sibling modules are in the key too (it may import them)
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "nets.py").write_text("from helpers import block\ndef make():\n    return block()\n")
    (pkg / "helpers.py").write_text("def block():\n    return None\n")
    import sys

    sys.path.insert(0, str(pkg))
    try:
        files = export.source_files(ModelSource(source="nets:make"))
    finally:
        sys.path.remove(str(pkg))
    assert {f.name for f in files} >= {"nets.py", "helpers.py"}


def test_the_task_is_settled_from_onnx_runtime_when_the_graph_has_no_output_shapes(tmp_path):
    """Paddle's exports (onnxsim fails on them) leave the outputs without a shape: the class
    scores are then seen in an ONNX Runtime run, not missed."""
    from types import SimpleNamespace

    from onnx import TensorProto, helper

    from conftest import tiny_recipe
    from duotpu.builder.pipeline import settle_task

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 1, (12, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],  # no shape
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = _save(model, tmp_path / "paddle_cls.onnx")
    recipe = tiny_recipe(src, **{"inputs.shape": [1, 3, 2, 2]})
    settled, note = settle_task(recipe, SimpleNamespace(reference_onnx=src))  # type: ignore[arg-type]
    assert settled.task == "classify" and "y [1, 10]" in note, note


def test_an_input_fixed_by_model_constants_leaves_the_graph(tmp_path: Path) -> None:
    m = _graph_model(["batch", 3, 8, 8], extra_inputs=1)  # extra0 [1, 2]
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4])
    m.graph.input.append(state)
    src = _save(m, tmp_path / "m.onnx")
    # a named dim is one size everywhere: "batch" of x (dim 0) settles state's dim 1
    settled, _ = intake.settle_inputs(src, [])
    assert dict(settled)["state"] == (2, 1, 4)
    settled, _ = intake.settle_inputs(src, [], constants={"extra0": [3.0, 4.0]})
    assert [n for n, _ in settled] == ["x", "state"]
    with pytest.raises(ModelError, match=r"model.constants names 'sr'.*inputs: x, extra0, state"):
        intake.settle_inputs(src, [], constants={"sr": 16000})
    out = tmp_path / "out.onnx"
    notes = intake.normalise(
        src, out, {"x": (1, 3, 8, 8), "state": (2, 1, 4)}, constants={"extra0": [3.0, 4.0]}
    )
    assert any("input 'extra0' fixed to [3.0, 4.0]" in n for n in notes)
    assert [i.name for i in intake.inputs_info(onnx.load(str(out)))] == ["x", "state"]


def test_an_if_on_a_dims_size_is_replaced_by_the_branch_taken(tmp_path: Path) -> None:
    """The TorchScript exporter's "squeeze if this dim is 1": at fixed shapes the condition is
    known, and the compiler takes no If."""
    one = numpy_helper.from_array(np.array([1], np.int64), "one")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    then_g = helper.make_graph(
        [helper.make_node("Squeeze", ["x", "ax"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array([0], np.int64), "ax")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["d0"]),
        helper.make_node("Equal", ["d0", "one1"], ["c"]),
        helper.make_node("If", ["c"], ["r"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Relu", ["r"], ["y"]),
    ]
    one1 = numpy_helper.from_array(np.array(1, np.int64), "one1")
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [one, zero, one1],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    src = _save(m, tmp_path / "if.onnx")
    out = tmp_path / "out.onnx"
    notes = intake.normalise(src, out, (1, 4))
    assert any("1 If node(s)" in n for n in notes)
    fixed = onnx.load(str(out))
    assert "If" not in {n.op_type for n in fixed.graph.node}
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], np.maximum(x[0], 0))  # squeezed: the then branch


def test_the_first_differing_layer_is_found_behind_plumbing(tmp_path: Path) -> None:
    from duotpu.builder.export import first_differing_layer

    rng = np.random.default_rng(0)
    h = 4
    inits = [
        numpy_helper.from_array(rng.normal(size=(1, 4 * h, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(1, 4 * h, h)).astype(np.float32), "R"),
        numpy_helper.from_array(np.array([0], np.int64), "ax"),
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["xr"], name="pre"),
        helper.make_node("LSTM", ["xr", "W", "R"], ["Y", "Yh"], hidden_size=h, name="rnn"),
        helper.make_node("Squeeze", ["Yh", "ax"], ["sq"], name="sq"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 3])],
        [helper.make_tensor_value_info("sq", TensorProto.FLOAT, None)],
        inits,
    )
    src = _save(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "l.onnx"
    )
    assert first_differing_layer(src, "sq_Squeeze") == ("rnn", "LSTM", "xr")
    assert first_differing_layer(src, "xr_Relu") == ("pre", "Relu", "")  # reads the input
    assert first_differing_layer(src, "nothing_Add") == ("", "", "")
