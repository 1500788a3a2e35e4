"""The seed workflow's deploy options as recipe fields: YUV / aligned fused preprocessing
(validated on the simulator, since tpu_mlir 1.30.2 cannot), model_version, quantized inputs and
outputs, excepts; and errors before any long step."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_recipe
from duotpu import cvimodel
from duotpu.builder import pipeline
from duotpu.config.errors import ConfigError
from duotpu.core.metrics import cosine
from duotpu.inference import runtime

ALL_FORMATS = [
    ("YUV420_PLANAR", False),
    ("YUV_NV21", False),
    ("YUV_NV12", False),
    ("RGBA_PLANAR", False),
    ("RGB_PLANAR", True),
    ("RGB_PLANAR", False),
    ("BGR_PLANAR", False),
    ("BGR_PACKED", False),
    ("GRAYSCALE", False),
]


@pytest.mark.parametrize("fmt,aligned", ALL_FORMATS)
def test_every_fused_preprocess_format(tiny_onnx_path, tmp_path, fmt, aligned):
    """Every fused pixel format builds, and the cvimodel fed the raw image duotpu makes agrees
    with fp32 on the RGB image (RGB_PACKED: test_runtime); RGBA_PLANAR is refused with the
    reason. The YUV / aligned ones are validated by duotpu on the simulator, since tpu_mlir
    1.30.2 cannot."""
    from duotpu.compiler import SELF_VALIDATED_FORMATS
    from duotpu.core.preprocess import preprocess_image

    if fmt == "RGBA_PLANAR":  # tpu_mlir 1.30.2's model and its own raw input disagree
        with pytest.raises(ConfigError, match="RGBA_PLANAR.*RGB_PLANAR"):
            tiny_recipe(
                tiny_onnx_path, **{"deploy.fuse_preprocess": True, "deploy.pixel_format": fmt}
            )
        return
    gray = fmt == "GRAYSCALE"
    onnx_path = tiny_onnx_path
    over = {
        "deploy.fuse_preprocess": True,
        "deploy.pixel_format": fmt,
        "deploy.aligned_input": aligned,
        "tolerance.verify_int8": 0.95,
    }
    if gray:
        import tinymodels

        onnx_path = tinymodels.tiny_onnx(tmp_path / "gray.onnx", channels=1)
        over |= {
            "inputs": [{"name": "input", "shape": [1, 1, 32, 32]}],
            "preprocess.pixel_format": "gray",
            "preprocess.mean": [0.5],
            "preprocess.std": [0.25],
        }
    r = tiny_recipe(onnx_path, quantize=["int8"], **over)
    res = pipeline.build(r, tmp_path)
    art = res.models["int8"]
    assert min(art.cosine.values()) > 0.95  # the simulator on the raw input vs fp32
    info = cvimodel.read_cvimodel(art.cvimodel)
    t = info.programs[0].inputs[0]
    self_checked = aligned or fmt in SELF_VALIDATED_FORMATS
    assert t.pixel_format == fmt and t.dtype == "uint8" and t.aligned == self_checked
    if fmt.startswith("YUV"):
        assert t.size > int(np.prod(t.shape)) * 0.5
    log = (res.work_dir / "deploy-int8" / "deploy.log").read_text()
    assert ("tpu_mlir's preprocessing" in log) == self_checked
    # predict makes the same raw input from an image and agrees with fp32
    m = runtime.open_model(art.cvimodel)
    image = res.work_dir / "inputs" / "chelsea.png"
    out = runtime.infer(m, runtime.tensors_for(m, [image]))[0]
    shape = (1, 1 if gray else 3, 32, 32)
    ref = runtime.fp32_reference(m, [preprocess_image(image, r.preprocess, shape)])[0]
    assert cosine(next(iter(out.values())), ref[0]) > 0.95


def test_model_version_and_quantized_io(tiny_onnx_path, tmp_path):
    r = tiny_recipe(
        tiny_onnx_path,
        quantize=["int8"],
        **{
            "deploy.inputs_type": "INT8",
            "deploy.outputs_type": "INT8",
            "deploy.model_version": "1.2",
            "tolerance.excepts": ["relu1"],
        },
    )
    res = pipeline.build(r, tmp_path)
    info = cvimodel.read_cvimodel(res.models["int8"].cvimodel)
    assert info.version.startswith("1.2")
    assert info.programs[0].inputs[0].dtype == "int8"
    assert info.programs[0].outputs[0].dtype == "int8"
    assert min(res.models["int8"].cosine.values()) > 0.9
    log = (res.work_dir / "deploy-int8" / "deploy.log").read_text()
    assert "--excepts relu1" in log or "excepts relu1" in log


@pytest.mark.parametrize(
    "over,message",
    [
        ({"deploy.aligned_input": True}, "only applies with deploy.fuse_preprocess"),
        ({"deploy.fuse_preprocess": True, "deploy.pixel_format": "GRAYSCALE"}, "channel"),
        ({"deploy.pixel_format": "YUV_NV12"}, "only applies with"),
        ({"deploy.model_version": "new"}, "look like '1.2'"),
        ({"deploy.outputs_type": "BF16", "quantize": ["int8"]}, "needs a BF16 model"),
        ({"calibration.count": 0}, "at least 1"),
        ({"preprocess.pad_value": 300}, "0–255"),
    ],
)
def test_inconsistent_options_fail_before_any_work(tiny_onnx_path, tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        r = tiny_recipe(tiny_onnx_path, **over)
        pipeline.build(r, tmp_path)
    assert not (tmp_path / "work" / "export").exists()


def test_data_errors_before_the_long_steps(tiny_onnx_path, tmp_path):
    from duotpu.config.errors import DataError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty"):
        pipeline.build(
            tiny_recipe(tiny_onnx_path, **{"calibration.images": str(empty)}), tmp_path / "a"
        )
    with pytest.raises(DataError, match="neither a folder nor a list file"):
        pipeline.build(
            tiny_recipe(tiny_onnx_path, **{"calibration.images": str(tmp_path / "x")}),
            tmp_path / "b",
        )
    assert not (tmp_path / "a" / "work" / "export").exists()
    table = tmp_path / "mix.qtable"
    table.write_text("conv2 BF16\nno_such_layer BF16\n")
    with pytest.raises(DataError, match="no_such_layer"):
        pipeline.build(tiny_recipe(tiny_onnx_path, **{"mix.qtable": str(table)}), tmp_path / "c")
    assert not (tmp_path / "c" / "work" / "calibrate").exists()


def test_save_input_files_replays_the_build(tiny_onnx_path, tmp_path):
    """The archive holds the inputs and a script; run in tpu_mlir's environment, the script
    rebuilds the same cvimodels."""
    import subprocess
    import tarfile

    from conftest import run_cli
    from duotpu import compiler

    p = run_cli(
        "build",
        str(tiny_onnx_path),
        "--input-shape",
        "1,3,32,32",
        "--calib-count",
        "6",
        "--save-input-files",
        "--out",
        str(tmp_path / "out"),
    )
    assert p.returncode == 0, p.stderr
    archive = tmp_path / "out" / "tiny_inputs.tar.gz"
    assert archive.is_file() and "replay script" in p.stdout
    with tarfile.open(archive) as t:
        t.extractall(tmp_path / "x")
    root = tmp_path / "x" / "tiny_inputs"
    assert (root / "tiny.onnx").is_file() and len(list((root / "calibration").iterdir())) == 6
    script = (root / "replay.sh").read_text()
    assert str(tmp_path) not in script and "model_deploy.py" in script
    # model_deploy checks at the recipe's tolerances, as the old tool did (duotpu itself checks
    # them in its verify stage)
    r = tiny_recipe(tiny_onnx_path)
    for tol in (r.tolerance.int8, r.tolerance.bf16):
        assert f"--tolerance {tol[0]},{tol[1]}" in script
    assert str(compiler.NO_TOLERANCE[1]) not in script
    proc = subprocess.run(
        ["sh", str(root / "replay.sh")],
        env=compiler.tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for mode in ("int8", "bf16"):
        again = root / f"deploy-{mode}" / f"tiny_cv180x_{mode}.cvimodel"
        built = tmp_path / "out" / f"tiny_cv180x_{mode}.cvimodel"
        assert again.stat().st_size == built.stat().st_size
        assert cvimodel.read_cvimodel(again).ion_mb == cvimodel.read_cvimodel(built).ion_mb


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_tensor_test_input(tiny_onnx_path, tmp_path, suffix):
    """The old `--image` also took a preprocessed tensor (npz / npy): it is given to the
    compiler as is, and the build is verified on it."""
    from duotpu.core.images import builtin_photo
    from duotpu.core.preprocess import preprocess_image

    r0 = tiny_recipe(tiny_onnx_path)
    x = preprocess_image(builtin_photo("coffee"), r0.preprocess, (1, 3, 32, 32))
    f = tmp_path / f"coffee{suffix}"
    np.savez(f, input=x) if suffix == ".npz" else np.save(f, x)
    res = pipeline.build(
        tiny_recipe(tiny_onnx_path, test_image=str(f), quantize=["int8"]), tmp_path / "out"
    )
    np.testing.assert_allclose(next(iter(res.test_input.values())), x, rtol=1e-6)
    assert min(res.models["int8"].cosine.values()) > 0.9
    with pytest.raises(ConfigError, match="must be an image"):
        tiny_recipe(
            tiny_onnx_path,
            test_image=str(f),
            **{"deploy.fuse_preprocess": True, "deploy.pixel_format": "RGB_PLANAR"},
        )


def test_calibration_from_an_image_list(tiny_onnx_path, tmp_path):
    """calibration.images may be a text file of image paths (the old --image_list)."""
    from duotpu.config.errors import DataError
    from duotpu.core.images import write_calibration_set

    files = write_calibration_set(tmp_path / "imgs", 5, seed=4)
    lst = tmp_path / "list.txt"
    lst.write_text("# calibration images\n" + "\n".join(f"imgs/{p.name}" for p in files[:4]))
    res = pipeline.build(
        tiny_recipe(tiny_onnx_path, quantize=["int8"], **{"calibration.images": str(lst)}),
        tmp_path / "out",
    )
    cal = next(s for s in res.stages if s.name == "calibrate")
    assert cal.result.count == 4
    lst.write_text("imgs/missing.jpg\n")
    with pytest.raises(DataError, match="line 1"):
        pipeline.build(
            tiny_recipe(tiny_onnx_path, quantize=["int8"], **{"calibration.images": str(lst)}),
            tmp_path / "out2",
        )


def test_text_line_resize_matches_tpu_mlirs_and_paddleocrs(tmp_path):
    """resize_mode = "text_line" (PaddleOCR's recognizer input: the line scaled to the input
    height, the image at the left, padded on the right): the compiler's own preprocessing of the
    test image (tpu_mlir's letterbox with pad_type normal) equals duotpu's and PaddleOCR's resize
    for a line narrower than W/H; the model (a spatial map) verifies on it."""
    import cv2
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from duotpu.core.images import builtin_photo
    from duotpu.core.preprocess import load_bgr, preprocess_image

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["map"], pads=[1, 1, 1, 1])],
        "line",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 96])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 4, 32, 96])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "line.onnx"))
    r = tiny_recipe(
        tmp_path / "line.onnx",
        name="line",
        quantize=["bf16"],
        task="generic",
        **{
            "inputs": [{"name": "input", "shape": [1, 3, 32, 96]}],
            "preprocess.resize": None,
            "preprocess.resize_mode": "text_line",
            "preprocess.pad_value": 127,
            "preprocess.mean": [0.5, 0.5, 0.5],
            "preprocess.std": [0.5, 0.5, 0.5],
        },
    )
    res = pipeline.build(r, tmp_path / "b")
    assert res.models["bf16"].worst > 0.99  # the simulator (tpu_mlir's input) vs ONNX (ours)
    x = res.test_input["input"]
    img = load_bgr(builtin_photo("chelsea"), False)
    ih, iw = img.shape[:2]
    rw = int(iw * 32 / ih)
    assert rw < 96  # a line narrower than W/H: the image keeps the full height
    assert np.allclose(x[..., rw:], (127 / 255 - 0.5) / 0.5, atol=1e-6)  # padded on the right
    # PaddleOCR's resize_norm_img for such a line: resize to (ceil(32 * ratio), 32), pad right
    paddle_w = int(np.ceil(32 * iw / ih))
    line = cv2.resize(img, (paddle_w, 32))[:, :, ::-1].transpose(2, 0, 1) / 255.0
    ours = preprocess_image(builtin_photo("chelsea"), r.preprocess, (1, 3, 32, 96))
    # the compiler's preprocessing (the test input model_transform made) is duotpu's, exactly
    assert np.allclose(ours, x, atol=1e-5)
    same = min(rw, paddle_w)
    if paddle_w == rw:
        assert np.allclose(ours[0, :, :, :same], (line - 0.5) / 0.5, atol=1e-5)
    assert abs(paddle_w - rw) <= 1
