"""A signal sent to the duotpu process alone (a supervisor, `timeout`, `kill PID`) stops every
child process within 2 s, keeps the finished stages, and exits 128 + the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import TESTS, tiny_recipe


def _start(recipe_path: Path, out: Path) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    # its own session, like a supervised process: no terminal sends the signal to the group
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duotpu.cli",
            "build",
            "--recipe",
            str(recipe_path),
            "--out",
            str(out),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_child(proc: subprocess.Popen, needle: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for c in psutil.Process(proc.pid).children(recursive=True):
            try:
                if needle in " ".join(c.cmdline()):
                    return
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    raise AssertionError(f"no {needle} child appeared")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_duotpu_alone_stops_every_child(tmp_path, tiny_onnx_path, sig, code):
    r = tiny_recipe(tiny_onnx_path, name="sig", **{"calibration.count": 300})
    (tmp_path / "sig.toml").write_text(r.to_toml())
    out = tmp_path / "b"
    proc = _start(tmp_path / "sig.toml", out)
    _wait_for_child(proc, "run_calibration")
    time.sleep(1.0)  # well inside the step
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    t0 = time.monotonic()
    os.kill(proc.pid, sig)  # duotpu alone, not its process group
    _, alive = psutil.wait_procs(children, timeout=2.0)
    stopped = time.monotonic() - t0
    assert not alive, [c.cmdline() for c in alive]
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    print(f"children stopped {stopped:.2f} s after the signal")
    assert not list(out.glob("*.cvimodel"))
    assert not (out / "work" / "calibrate").exists()  # the interrupted stage is not kept
    assert (out / "work" / "transform" / "stage.json").is_file()  # the finished ones are
    if sig == signal.SIGTERM:  # the rerun resumes after the finished stages
        r2 = tiny_recipe(tiny_onnx_path, name="sig", **{"calibration.count": 8})
        (tmp_path / "sig.toml").write_text(r2.to_toml())
        again = _start(tmp_path / "sig.toml", out)
        _, err = again.communicate(timeout=600)
        assert again.returncode == 0, err
        stages = {
            s["name"]: s["cached"]
            for s in json.loads((out / "manifest.json").read_text())["stages"]
        }
        assert stages["export"] and stages["transform"] and not stages["calibrate"]
