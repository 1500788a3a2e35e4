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
    out_text, err = proc.communicate(timeout=10)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    # the stage in progress is shown as interrupted, not as failed
    assert "calibrate" in out_text and "interrupted (rerun resumes)" in out_text
    assert "✗ calibrate" not in out_text
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


def test_kill_9_of_duotpu_leaves_no_orphan(tmp_path, tiny_onnx_path):
    # SIGKILL cannot be handled: the children die with their parent (the parent-death signal)
    r = tiny_recipe(tiny_onnx_path, name="k9", **{"calibration.count": 300})
    (tmp_path / "k9.toml").write_text(r.to_toml())
    proc = _start(tmp_path / "k9.toml", tmp_path / "b")
    _wait_for_child(proc, "run_calibration")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    _, alive = psutil.wait_procs(children, timeout=3.0)
    assert not alive, [c.cmdline() for c in alive]
    # the next build into the folder is not blocked by the dead one (its lock died with it)
    r2 = tiny_recipe(tiny_onnx_path, name="k9", **{"calibration.count": 8})
    (tmp_path / "k9.toml").write_text(r2.to_toml())
    again = _start(tmp_path / "k9.toml", tmp_path / "b")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err


def test_two_builds_into_one_folder_the_second_is_refused(tmp_path, tiny_onnx_path):
    r = tiny_recipe(tiny_onnx_path, name="two", **{"calibration.count": 300})
    (tmp_path / "two.toml").write_text(r.to_toml())
    first = _start(tmp_path / "two.toml", tmp_path / "b")
    try:
        _wait_for_child(first, "run_calibration")
        second = _start(tmp_path / "two.toml", tmp_path / "b")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1, err
        assert f"Another duotpu build (pid {first.pid}" in err and "--out" in err
        assert "Traceback" not in err
    finally:
        os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=30)
