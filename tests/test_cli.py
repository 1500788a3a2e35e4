"""The `duotpu` command: bad input gets one clear paragraph, a non-zero exit, no traceback and
no half-written final file; good input gets one line per stage and the result table."""

import json
import re

import pytest

import tinymodels
from conftest import run_cli

TINY_FLAGS = [
    "--input-shape",
    "1,3,32,32",
    "--calib-count",
    "6",
    "--mean",
    "0.5,0.5,0.5",
    "--std",
    "0.25,0.25,0.25",
]


def _assert_clean_failure(proc, code, *needles):
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_missing_model_file(tmp_path):
    proc = run_cli("build", str(tmp_path / "nope.onnx"), *TINY_FLAGS, "--out", str(tmp_path / "o"))
    _assert_clean_failure(proc, 1, "does not exist")
    assert not list((tmp_path).rglob("*.cvimodel"))


def test_corrupt_model_file(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 50)
    proc = run_cli("build", str(tmp_path / "bad.onnx"), *TINY_FLAGS, "--out", str(tmp_path / "o"))
    _assert_clean_failure(proc, 1, "corrupt")
    proc = run_cli(
        "build", str(tmp_path / "bad.onnx"), *TINY_FLAGS, "--out", str(tmp_path / "o"), "--debug"
    )
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_recipe_unknown_key_and_wrong_type(tmp_path):
    (tmp_path / "r.toml").write_text(
        'name = "m"\n[model]\nsource = "m.onnx"\n[calibration]\ncuont = 3\n'
    )
    proc = run_cli("build", "--recipe", str(tmp_path / "r.toml"))
    _assert_clean_failure(proc, 2, "calibration.cuont", "Valid keys")
    (tmp_path / "r.toml").write_text(
        'name = "m"\n[model]\nsource = "m.onnx"\n[calibration]\ncount = "ten"\n'
    )
    proc = run_cli("build", "--recipe", str(tmp_path / "r.toml"))
    _assert_clean_failure(proc, 2, "calibration.count", "whole number")
    # a recipe given where a model goes is read as the recipe
    proc = run_cli("build", str(tmp_path / "r.toml"))
    _assert_clean_failure(proc, 2, "calibration.count", "whole number")


def test_input_shape_mismatch(tmp_path, tiny_onnx_path):
    flags = list(TINY_FLAGS)
    flags[1] = "1,3,64,64"
    proc = run_cli("build", str(tiny_onnx_path), *flags, "--out", str(tmp_path / "o"))
    # the recipe's to fix (--input-shape): a usage error, exit 2 like other recipe errors
    _assert_clean_failure(proc, 2, "[1, 3, 64, 64]", "does not match")


def test_unsupported_operator_is_named(tmp_path):
    onnx_path = tinymodels.tiny_onnx(tmp_path / "hm.onnx", extra_op="Hardmax")
    proc = run_cli("build", str(onnx_path), *TINY_FLAGS, "--out", str(tmp_path / "o"))
    _assert_clean_failure(proc, 1, "Hardmax", "my_Hardmax")
    assert not list(tmp_path.rglob("*.cvimodel"))


def test_calibration_folder_without_images(tmp_path, tiny_onnx_path):
    empty = tmp_path / "imgs"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    proc = run_cli(
        "build",
        str(tiny_onnx_path),
        *TINY_FLAGS,
        "--calib-images",
        str(empty),
        "--quantize",
        "int8",
        "--out",
        str(tmp_path / "o"),
    )
    _assert_clean_failure(proc, 1, "no readable images", str(empty))


def test_build_with_some_unreadable_calibration_files_warns_and_succeeds(tmp_path, tiny_onnx_path):
    from duotpu.core import images

    folder = tmp_path / "imgs"
    images.write_calibration_set(folder, 5, seed=1)
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    (folder / "readme.txt").write_text("hello")
    out = tmp_path / "o"
    proc = run_cli(
        "build",
        str(tiny_onnx_path),
        *TINY_FLAGS,
        "--calib-images",
        str(folder),
        "--name",
        "tinyc",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 2 file(s)" in proc.stdout
    for stage in ("export", "transform", "calibrate", "deploy-int8", "deploy-bf16"):
        assert stage in proc.stdout
    assert (out / "tinyc_cv180x_int8.cvimodel").exists()
    assert (out / "tinyc_cv180x_bf16.cvimodel").exists()
    assert "cosine vs fp32" in proc.stdout
    again = run_cli(
        "build",
        str(tiny_onnx_path),
        *TINY_FLAGS,
        "--calib-images",
        str(folder),
        "--name",
        "tinyc",
        "--out",
        str(out),
        "--json",
    )
    assert again.returncode == 0
    data = json.loads(again.stdout[again.stdout.index("{") :])
    assert set(data["models"]) == {"int8", "bf16"}
    assert data["classification"][0]["model"] == "fp32 ONNX"


def test_verification_below_tolerance(tmp_path, tiny_onnx_path):
    out = tmp_path / "o"
    proc = run_cli(
        "build",
        str(tiny_onnx_path),
        *TINY_FLAGS,
        "--quantize",
        "int8",
        "--verify-int8",
        "0.9999999",
        "--out",
        str(out),
    )
    _assert_clean_failure(proc, 1, "verification failed", "'logits'", "0.9999999")
    assert not list(out.glob("*.cvimodel"))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["build"], "Nothing to build"),
        (["build", "x.onnx", "--set", "nokey=1"], "nokey"),
    ],
)
def test_usage_errors(args, needle):
    proc = run_cli(*args)
    _assert_clean_failure(proc, 2, needle)


def test_truncated_calibration_images_are_left_out_and_too_few_refused(tmp_path, tiny_onnx_path):
    from duotpu.core import images

    folder = tmp_path / "imgs"
    paths = images.write_calibration_set(folder, 6, seed=1)
    for p in paths[:3]:  # an interrupted copy: OpenCV would read them (grey where data ends)
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])
    args = [str(tiny_onnx_path), *TINY_FLAGS, "--quantize", "int8", "--calib-images", str(folder)]
    # in a process of its own: libjpeg writes its warnings to the file descriptor
    proc = run_cli("build", *args, "--out", str(tmp_path / "o"), fresh=True)
    # 3 whole images: under the minimum of 4
    _assert_clean_failure(proc, 1, "has 3 whole image(s)", "at least 4")
    assert "do not decode whole" in proc.stdout and "truncated" in proc.stdout
    assert "Premature end of JPEG" not in proc.stdout + proc.stderr
    images.write_calibration_set(tmp_path / "more", 2, seed=2)
    for p in (tmp_path / "more").iterdir():
        p.rename(folder / f"more-{p.name}")
    ok = run_cli("build", *args, "--calib-count", "10", "--out", str(tmp_path / "o"))
    assert ok.returncode == 0, ok.stderr
    assert "calibrating on 5 image(s), fewer than calibration.count = 10" in ok.stdout
    stage = json.loads((tmp_path / "o" / "work" / "calibrate" / "stage.json").read_text())
    assert stage["result"]["count"] == 5
    # the broken files are not verified on either
    listed = re.split(r"\n\S", ok.stdout.split("verifying on", 1)[1])[0]  # that event's lines
    names = set(re.findall(r"[\w.-]+\.jpg", listed))
    assert names and not names & {p.name for p in paths[:3]}, listed
