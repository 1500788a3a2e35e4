"""Names and paths every user has: capitals, spaces, accents, shell characters, read-only
folders (issue 25, items 1–3). The compiler is given only names and paths it can take; the
user's names are kept for every delivered file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import tinymodels
from conftest import run_cli


def _build(src: Path, out: Path, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(
        "build",
        str(src),
        "--quantize",
        "int8",
        "--calib-count",
        "4",
        "--out",
        str(out),
        *extra,
        cwd=cwd,
        env={"XDG_CACHE_HOME": str(cwd / "cache")},
    )


def test_capitals_spaces_accents_and_shell_characters_build_under_the_users_names(tmp_path):
    # before: MyNet -> FileNotFoundError ... MyNet_top_f32_all_weight.npz (tpu_mlir lower-cases
    # it); a space or an accent -> a raw tpu_mlir traceback at deploy; $(touch X) ran the touch
    src = tinymodels.tiny_onnx(tmp_path / "My nét 猫.onnx")
    out = tmp_path / "o" / "out dir $(touch PWNED)"
    proc = _build(src, out, tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert not list(tmp_path.rglob("PWNED")), "a shell character in the path ran a command"
    cvimodel = out / "My_nét_猫_cv180x_int8.cvimodel"
    assert cvimodel.is_file()
    assert "intermediate files go to" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    work = Path(manifest["work_dir"])
    assert work.is_relative_to(tmp_path / "cache" / "duotpu" / "work")
    assert work.name.startswith("my_net-")
    # the other commands read such a build
    photo = tmp_path / "a photo é.png"
    _save_photo(photo)
    pred = run_cli("predict", str(cvimodel), str(photo), "--json", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    assert json.loads(pred.stdout)
    # a rebuild into the same folder is all cache (the work folder is found again)
    again = _build(src, out, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "cached" in again.stdout and "✓ transform" not in again.stdout


def _save_photo(path: Path) -> None:
    from PIL import Image
    from skimage import data

    Image.fromarray(data.chelsea()).save(path)


def test_capital_letters_in_the_model_name(tmp_path):
    src = tinymodels.tiny_onnx(tmp_path / "ResNet50.onnx")
    proc = _build(src, tmp_path / "build", tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert (tmp_path / "build" / "ResNet50_cv180x_int8.cvimodel").is_file()
    # a safe path keeps the work folder where it always was
    assert (tmp_path / "build" / "work" / "transform" / "resnet50.mlir").is_file()


def test_a_work_dir_the_compiler_cannot_take_is_refused_naming_the_character(tmp_path):
    src = tinymodels.tiny_onnx(tmp_path / "net.onnx")
    proc = _build(src, tmp_path / "out", tmp_path, "--work-dir", str(tmp_path / "w;x"))
    assert proc.returncode == 2
    assert "';'" in proc.stderr and "--work-dir" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert not (tmp_path / "w;x").exists()


@pytest.mark.skipif(os.geteuid() != 0 and shutil.which("chattr") is None, reason="needs chattr")
def test_a_read_only_output_folder_is_the_users_not_an_internal_error(tmp_path):
    src = tinymodels.tiny_onnx(tmp_path / "net.onnx")
    ro = tmp_path / "ro"
    ro.mkdir()
    # root writes through mode bits: the immutable flag stops it (as a read-only mount would)
    locked = os.geteuid() == 0
    if locked:
        subprocess.run(["chattr", "+i", str(ro)], check=True)
    else:
        ro.chmod(0o555)
    try:
        proc = _build(src, ro / "x", tmp_path)
    finally:
        if locked:
            subprocess.run(["chattr", "-i", str(ro)], check=True)
        ro.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"output folder {ro / 'x'} cannot be written" in proc.stderr
    assert "--out" in proc.stderr
    assert not list(ro.iterdir())
