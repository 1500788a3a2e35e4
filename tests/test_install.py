"""The package as a user installs it: the built wheel in a fresh Python 3.10 venv.

`pyproject.toml` must declare every runtime dependency (tpu_mlir's wheel does not declare torch,
onnx, onnxruntime or onnxsim); this installs the wheel with the `[board]` extra into an empty
venv — nothing from the project's `.venv`, no `PYTHONPATH` — and runs `duotpu build` and
`duotpu info` there. The other extras are resolved (pip's dry run) against the same pins.

torch with its CUDA libraries, triton and tpu_mlir are 5.4 GB: the fresh venv resolves them from
the wheel's own requirements (the dry run's report must list them at the pinned releases), and
then takes them from the project's `.venv` through a path file instead of a second copy, which
once filled CI's disk. Everything else is installed from the index.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tinymodels

REPO = Path(__file__).parents[1]


def _run(cmd: list[str], cwd: Path | None = None, timeout: int = 900) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


# the distributions the venv borrows from the running .venv (by name; all of CUDA's are listed)
_BORROWED = ("torch", "triton", "tpu_mlir", "tpu-mlir")
_BORROWED_PREFIXES = ("nvidia-", "cuda-")


def _borrow_heavy(into: Path) -> set[str]:
    """Link torch, triton and the CUDA wheels' top-level folders from this .venv into ``into``."""
    into.mkdir()
    names = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"].lower()
        if name not in _BORROWED and not name.startswith(_BORROWED_PREFIXES):
            continue
        names.add(name)
        site = Path(str(dist.locate_file("")))
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            link = into / top
            if not link.exists():
                link.symlink_to(site / top)
    return names


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_builds_a_model(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(REPO)])
    wheel = next(dist.glob("duotpu-*.whl"))
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)])
    pip = [str(venv / "bin/python"), "-m", "pip"]
    # every extra resolves against the same pins, from nothing (not installed: ultralytics, timm,
    # ray); the compiler's undeclared needs are among what would be installed
    report = json.loads(
        _run(
            [*pip, "install", "-q", "--dry-run", "--report", "-", f"{wheel}[all,dev]"], timeout=600
        )
    )
    would = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in report["install"]
    }
    for name, version in [
        ("tpu-mlir", "1.30.2"),
        ("torch", "2.11.0"),
        ("torchvision", "0.26.0"),
        ("onnx", "1.14.1"),
        ("onnxruntime", "1.16.3"),
        ("onnxsim", "0.4.17"),
        ("paramiko", None),
    ]:
        assert name in would and version in (None, would[name]), (name, would.get(name))
    borrowed = _borrow_heavy(tmp_path / "borrowed")
    assert {"torch", "tpu_mlir"} <= {n.replace("-", "_") for n in borrowed}
    site = next((venv / "lib").glob("python3.*/site-packages"))
    (site / "borrowed-torch.pth").write_text(f"{tmp_path / 'borrowed'}\n")
    # --no-compile: byte-compiling is most of an install's time; Python compiles what the build
    # imports on first use
    _run([*pip, "install", "-q", "--no-compile", f"{wheel}[board]"], timeout=1800)
    assert not (site / "torch").exists(), "pip installed a second torch beside the borrowed one"

    work = tmp_path / "user"
    work.mkdir()
    model = tinymodels.tiny_onnx(work / "tiny.onnx")
    duotpu = str(venv / "bin/duotpu")
    out = _run(
        [duotpu, "build", str(model), "--calib-count", "4", "--mean", "0.5", "--std", "0.5"],
        cwd=work,
    )
    assert "verified on the CV18xx simulator" in out
    cvimodel = work / "build/tiny/tiny_cv180x_int8.cvimodel"
    assert cvimodel.is_file() and (work / "build/tiny/report.html").is_file()
    info = json.loads(_run([duotpu, "info", str(cvimodel), "--json"], cwd=work))
    assert info["chip"] == "cv180x" and info["md5_status"] == "ok"
    # the library imports from the venv itself, with the board extra
    where = _run(
        [str(venv / "bin/python"), "-c", "import duotpu, paramiko; print(duotpu.__file__)"],
        cwd=work,
    )
    assert where.strip().startswith(str(venv))
