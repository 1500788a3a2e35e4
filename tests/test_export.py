"""Model sources → ONNX: torchvision (with torchvision's own weight loading, offline),
TorchScript and pickled modules, state_dict files, and the checks on each."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import tinymodels
from duotpu.builder import export
from duotpu.config.errors import ConfigError, ModelError
from duotpu.config.recipe import ModelSource


def _ort(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_source_kinds():
    assert export.source_kind("m.onnx") == "onnx"
    assert export.source_kind("dir/m.pt") == "torchscript"
    assert export.source_kind("torchvision:resnet18") == "torchvision"
    assert export.source_kind("pkg.mod:make") == "factory"
    with pytest.raises(ConfigError, match="Cannot tell"):
        export.source_kind("model.h5")


def test_torchvision_pretrained_weights_load_through_torchvision_offline(tmp_path, monkeypatch):
    """The user's pretrained weights are read by torchvision's own code from its cache."""
    import torchvision

    weights = torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.manual_seed(3)
    saved = torchvision.models.squeezenet1_1(weights=None).state_dict()
    torch.save(saved, cache / weights.url.rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = export.load_torch_module(
        ModelSource("torchvision:squeezenet1_1", weights="IMAGENET1K_V1")
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    # and a weights name that is not cached gives advice, not a traceback
    with pytest.raises(ModelError, match="offline|checkpoints"):
        export.load_torch_module(ModelSource("torchvision:mobilenet_v2", weights="DEFAULT"))


def test_state_dict_file_for_torchvision_and_factory(tmp_path):
    torch.manual_seed(5)
    net = tinymodels.tiny_cnn()
    for p in net.parameters():
        p.data.normal_()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    loaded = export.load_torch_module(
        ModelSource("tinymodels:tiny_cnn", weights=str(tmp_path / "w.pth"))
    )
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(loaded(x), net.eval()(x))
    with pytest.raises(ModelError, match="do not fit"):
        export.load_torch_module(
            ModelSource("torchvision:squeezenet1_1", weights=str(tmp_path / "w.pth"))
        )


def test_torchscript_and_pickled_module_export(tmp_path):
    net = tinymodels.tiny_cnn()
    x = torch.randn(1, 3, 32, 32)
    torch.jit.trace(net, x).save(str(tmp_path / "ts.pt"))
    torch.save(net, tmp_path / "whole.pt")
    torch.save(net.state_dict(), tmp_path / "sd.pt")
    for name in ("ts.pt", "whole.pt"):
        m = export.export_onnx(
            ModelSource(str(tmp_path / name)), (1, 3, 32, 32), "input", tmp_path / f"{name}.onnx"
        )
        assert m.input_name == "input"
        np.testing.assert_allclose(_ort(m.onnx_path, x.numpy()), net(x).detach().numpy(), atol=1e-5)
    with pytest.raises(ModelError, match="state_dict"):
        export.export_onnx(
            ModelSource(str(tmp_path / "sd.pt")), (1, 3, 32, 32), "input", tmp_path / "sd.onnx"
        )
    assert not (tmp_path / "sd.onnx").exists()


def test_onnx_checks(tmp_path):
    good = tinymodels.tiny_onnx(tmp_path / "t.onnx")
    m = export.export_onnx(ModelSource(str(good)), (1, 3, 32, 32), "ignored", tmp_path / "o.onnx")
    assert m.input_name == "input" and m.output_names == ["logits"]
    with pytest.raises(ModelError, match=r"does not match.*\[1, 3, 32, 32\]"):
        export.export_onnx(ModelSource(str(good)), (1, 3, 64, 64), "x", tmp_path / "o2.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        export.export_onnx(ModelSource(str(bad)), (1, 3, 32, 32), "x", tmp_path / "o3.onnx")
    assert not (tmp_path / "o2.onnx").exists() and not (tmp_path / "o3.onnx").exists()
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(ModelError, match="does not exist"):
        export.export_onnx(
            ModelSource(str(tmp_path / "none.onnx")), (1, 3, 32, 32), "x", tmp_path / "o4.onnx"
        )


def test_a_forward_argument_that_is_not_a_tensor_gets_advice_about_it(tmp_path):
    """silero-vad's forward(x, sr: int): the advice names ``sr``, not the shape."""

    class Vad(torch.nn.Module):
        def forward(self, x: torch.Tensor, sr: int) -> torch.Tensor:
            return x * (sr / 16000)

    path = tmp_path / "vad.pt"
    torch.jit.script(Vad()).save(str(path))
    with pytest.raises(
        ModelError, match=r"takes .sr., which is not a tensor.*--set model.constants.sr=VALUE"
    ):
        export.export_onnx(ModelSource(str(path)), (1, 576), "x", tmp_path / "o.onnx")
    two = {"x": (1, 576), "y": (1, 4)}
    with pytest.raises(ModelError, match=r"takes 'sr', which is not a tensor"):
        export.export_onnx(ModelSource(str(path)), two, "x", tmp_path / "o.onnx")
    # the way around it names: the value as a constant of the export
    fixed = ModelSource(str(path), constants={"sr": 8000})
    m = export.export_onnx(fixed, (1, 576), "x", tmp_path / "o.onnx")
    sess = ort.InferenceSession(str(m.onnx_path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["x"]
    x = np.ones((1, 576), np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x * 0.5)


def test_the_opset_fallback_keeps_torchs_graph_dump_off_the_terminal(tmp_path, capfd):
    """scaled_dot_product_attention has no opset-13 form: the export falls back to opset 17 with
    a note; torch's exporter prints the whole graph from C++ when the first try fails, and none
    of it reaches the user's terminal."""

    class Attend(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q = x.flatten(2).transpose(1, 2)  # [N, HW, C]
            return torch.nn.functional.scaled_dot_product_attention(q, q, q).mean(1)

    path = tmp_path / "attend.pt"
    torch.jit.trace(Attend(), torch.zeros(1, 4, 4, 4)).save(str(path))
    capfd.readouterr()
    m = export.export_onnx(ModelSource(str(path)), (1, 4, 4, 4), "x", tmp_path / "a.onnx")
    out, err = capfd.readouterr()
    assert any("exported with opset 17" in n for n in m.notes), m.notes
    assert "Torch IR graph" not in out + err and "%" not in out + err, (out + err)[:300]
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 4)).astype(np.float32)
    want = Attend()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort(m.onnx_path, x), want, atol=1e-5)
