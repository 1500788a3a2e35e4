"""The old cvitek command lines, run as the tutorials print them, and the exact conversion of
the old preprocessing options."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from duotpu.builder.legacy import old_to_recipe_preprocess, run_legacy
from duotpu.config.errors import ConfigError
from duotpu.core.preprocess import preprocess_image


def _old_formula(rgb: np.ndarray, raw_scale, mean, std, input_scale, order, gray, resize, net):
    """The old tool's preprocessing, written out in numpy: resize, center crop, channel order,
    then x = (pixel * raw_scale / 255 - mean) / std * input_scale."""
    import cv2

    img = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None] if gray else rgb[:, :, ::-1]  # BGR
    img = cv2.resize(img, (resize[1], resize[0]))
    if img.ndim == 2:
        img = img[:, :, None]
    y0, x0 = resize[0] // 2 - net[0] // 2, resize[1] // 2 - net[1] // 2
    img = img[y0 : y0 + net[0], x0 : x0 + net[1]].astype(np.float64)
    if not gray and order == "rgb":
        img = img[:, :, ::-1]
    x = (img * raw_scale / 255.0 - np.array(mean)) / np.array(std) * input_scale
    return x.transpose(2, 0, 1)[None]


@pytest.mark.parametrize(
    "raw_scale,mean,std,input_scale,order,gray",
    [
        (1.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1.0, "rgb", False),  # the tutorial
        (255.0, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375], 1.0, "bgr", False),
        (255.0, [127.5, 127.5, 127.5], [1.0, 1.0, 1.0], 0.0078125, "rgb", False),  # MobileNet style
        (1.0, [0.5], [0.25], 2.0, "bgr", True),
        (2.0, [0.1, 0.2, 0.3], [0.5, 1.5, 2.5], 0.5, "bgr", False),
    ],
)
def test_old_preprocessing_converts_exactly(raw_scale, mean, std, input_scale, order, gray):
    from duotpu.core.images import builtin_photo

    rgb = builtin_photo("coffee")
    resize, net = [72, 96], [64, 80]
    pre = old_to_recipe_preprocess(raw_scale, mean, std, input_scale, order, gray, resize, net)
    got = preprocess_image(rgb, pre, (1, 1 if gray else 3, *net))
    want = _old_formula(rgb, raw_scale, mean, std, input_scale, order, gray, resize, net)
    span = float(want.max() - want.min())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * span)


def test_old_preprocessing_refuses_bad_values():
    with pytest.raises(ConfigError, match="raw_scale"):
        old_to_recipe_preprocess(0.0, [0.0], [1.0], 1.0)
    with pytest.raises(ConfigError, match="3 value"):
        old_to_recipe_preprocess(1.0, [0.1, 0.2], [1.0], 1.0)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory) -> Path:
    """model_resnet18/ with resnet18.onnx (torchvision resnet18 exported like the tutorial's
    getonnx.py: opset 13, input named 'input'; random weights) and workspace/ holding cat.jpg
    and images/."""
    import torch
    import torchvision

    from duotpu.core.images import builtin_photo, calibration_photos, random_crops, save_image

    root = tmp_path_factory.mktemp("model_resnet18")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    torch.onnx.export(
        model,
        torch.randn(1, 3, 224, 224),
        str(root / "resnet18.onnx"),
        opset_version=13,
        input_names=["input"],
        output_names=["output"],
        dynamo=False,
    )
    ws = root / "workspace"
    (ws / "images").mkdir(parents=True)
    save_image(ws / "cat.jpg", builtin_photo("chelsea"))
    for i, (_, crop) in enumerate(random_crops(calibration_photos(), 12, 5)):
        save_image(ws / "images" / f"img{i:02d}.jpg", crop)
    return ws


TUTORIAL = [
    "model_transform.py --model_type onnx --model_name resnet18 --model_def ../resnet18.onnx "
    "--image ./cat.jpg --image_resize_dims 256,256 --keep_aspect_ratio false --net_input_dims "
    "224,224 --raw_scale 1.0 --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --input_scale 1.0 "
    "--model_channel_order rgb --tolerance 0.99,0.99,0.99 --mlir resnet18_fp32.mlir",
    "model_deploy.py --model_name resnet18 --mlir resnet18_fp32.mlir --quantize BF16 --chip "
    "cv180x --image cat.jpg --tolerance 0.99,0.99,0.86 --correctness 0.99,0.99,0.93 --cvimodel "
    "resnet18_bf16.cvimodel",
    "run_calibration.py resnet18_fp32.mlir --dataset=./images --input_num=100 -o "
    "resnet18_calibration_table",
    "model_deploy.py --model_name resnet18 --mlir resnet18_fp32.mlir --calibration_table "
    "resnet18_calibration_table --chip cv180x --image cat.jpg --quantize INT8 --tolerance "
    "0.98,0.98,0.84 --correctness 0.99,0.99,0.99 --cvimodel resnet18_int8.cvimodel",
]


def test_tutorial_sequence(tutorial):
    """The four commands of the tutorial, as written, inside workspace/; both cvimodels then
    run on the simulator close to the fp32 ONNX model."""
    from duotpu.core.metrics import cosine
    from duotpu.core.onnxrt import onnx_outputs
    from duotpu.inference import runtime

    printed, said = [], []
    for line in TUTORIAL:
        p = run_cli("legacy", *line.split(), cwd=tutorial)
        assert p.returncode == 0, f"{line}\n{p.stdout}\n{p.stderr}"
        assert "the same in duotpu, as a recipe" in p.stdout
        said.append(p.stdout)
        printed.append(p.stdout.split("as a recipe (duotpu build --recipe FILE):\n", 1)[1])
    for f in (
        "resnet18_fp32.mlir",
        "resnet18_calibration_table",
        "resnet18_bf16.cvimodel",
        "resnet18_int8.cvimodel",
    ):
        assert (tutorial / f).is_file(), f
    assert "input_num 100: only 12 images" in said[2]
    recipe_file = tutorial / "printed.toml"
    recipe_file.write_text(printed[-1])
    from duotpu.config.recipe import load_recipe

    r = load_recipe(recipe_file)
    assert r.preprocess.resize == (256, 256) and r.preprocess.pixel_format == "rgb"
    assert r.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert r.calibration.count == 12 and r.quantize == ("int8",)
    for mode, need in (("int8", 0.95), ("bf16", 0.99)):
        m = runtime.open_model(tutorial / f"resnet18_{mode}.cvimodel", recipe_file)
        x = runtime.tensors_for(m, [tutorial / "cat.jpg"])
        sim = runtime.infer(m, x)[0]
        ref = onnx_outputs(tutorial.parent / "resnet18.onnx", x)[0][0]
        assert cosine(next(iter(sim.values())), ref) > need, mode


def test_legacy_errors_before_long_work(tutorial, tmp_path):
    ws = tmp_path / "model_resnet18" / "workspace"
    shutil.copytree(tutorial, ws)
    shutil.copyfile(tutorial.parent / "resnet18.onnx", ws.parent / "resnet18.onnx")
    if not (ws / "resnet18_fp32.mlir").is_file():  # the tutorial test made it already
        run_legacy(TUTORIAL[0].split(), ws)  # the fp32 MLIR the deploy lines start from
    bad = [
        (
            "model_deploy.py --mlir resnet18_fp32.mlir --quantize INT8 --chip cv180x --image "
            "cat.jpg --cvimodel x.cvimodel",
            "needs --calibration_table",
        ),
        (
            "model_deploy.py --mlir resnet18_fp32.mlir --quantize BF16 --chip cv180x --image "
            "cat.jpg --aligned_input --cvimodel x.cvimodel",
            "only applies with --fuse_preprocess",
        ),
        (
            "model_deploy.py --mlir resnet18_fp32.mlir --quantize BF16 --chip cv180x --image "
            "cat.jpg --fuse_preprocess --pixel_format GRAYSCALE --cvimodel x.cvimodel",
            "does not match",
        ),
        (
            "model_deploy.py --mlir resnet18_fp32.mlir --quantize MIX_BF16 --chip cv180x --image "
            "cat.jpg --calibration_table t --cvimodel x.cvimodel",
            "needs --mix_precision_table",
        ),
        (
            "model_deploy.py --mlir nothing.mlir --quantize BF16 --chip cv180x --image cat.jpg "
            "--cvimodel x.cvimodel",
            "Run that step first",
        ),
        ("run_calibration.py resnet18_fp32.mlir -o t", "exactly one of --dataset"),
        (
            "model_transform.py --model_name r --model_def ../resnet18.onnx --image cat.jpg "
            "--image_resize_dims 200,200 --net_input_dims 224,224 --mlir r.mlir",
            "smaller than",
        ),
    ]
    for line, message in bad:
        with pytest.raises(ConfigError, match=message):
            run_legacy(line.split(), ws)
    assert not (ws / "x.cvimodel").exists()
    p = run_cli(
        "legacy",
        "model_deploy.py",
        "--mlir",
        "resnet18_fp32.mlir",
        "--quantize",
        "FP8",
        "--chip",
        "cv180x",
        "--image",
        "cat.jpg",
        "--cvimodel",
        "y",
        cwd=ws,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr and "invalid choice" in p.stderr
