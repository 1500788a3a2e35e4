"""The compiler's fork server: a Python tool forked from it runs as the fresh process would (exit
status, output, environment, working folder, priority, OpenMP threads, process group), is
stopped by a timeout or a cancel with its children, and builds the same files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import tiny_recipe
from duotpu import compiler
from duotpu.builder.pipeline import build
from duotpu.config.errors import Interrupted, ToolchainError

SCRIPT = """
import os, sys, time
print("argv", sys.argv[1:], "path0", sys.path[0] == os.path.dirname(os.path.abspath(__file__)))
print("cwd", os.getcwd())
print("x", os.environ.get("DUOTPU_TEST_X"), "omp", os.environ.get("OMP_NUM_THREADS"))
print("wait policy", os.environ.get("OMP_WAIT_POLICY"))
print("nice", os.nice(0), "own group", os.getpgid(0) == os.getpid())
print("main", __name__)
print("forked", "compiler/forkserver.py" in open(f"/proc/{os.getppid()}/cmdline").read())
mode = sys.argv[1]
if mode == "torch":
    import torch
    print("torch threads", torch.get_num_threads())
elif mode == "exit3":
    sys.exit(3)
elif mode == "raise":
    raise ValueError("boom")
elif mode == "segv":
    import ctypes
    ctypes.string_at(0)
elif mode == "sleep":
    import subprocess
    child = subprocess.Popen(["sleep", "120"])
    print("child", child.pid, flush=True)
    time.sleep(120)
"""


def _run(tmp_path: Path, mode: str, fork: bool, monkeypatch, **kw) -> tuple[int, str, str]:
    """Exit status, output without the "forked" line, the whole output."""
    monkeypatch.setenv("DUOTPU_FORK_SERVER", "1" if fork else "0")
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    cwd = tmp_path / f"in {mode}"
    cwd.mkdir(exist_ok=True)
    log = tmp_path / f"{mode}-{fork}.log"
    env = compiler.tool_env({"DUOTPU_TEST_X": "été 1", **kw.pop("extra", {})})
    # a script that starts fast is forked by a server that is up, and never waits for one
    assert compiler.start_fork_server(env, wait=True) == fork
    with open(log, "w") as out:
        proc = compiler.spawn(
            [sys.executable, str(script), mode],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            **kw,
        )
        rc = compiler.runner.finish(proc)
    text = log.read_text()
    return rc, text.replace("forked True\n", "").replace("forked False\n", ""), text


@pytest.mark.parametrize("mode,code", [("ok", 0), ("exit3", 3), ("raise", 1), ("segv", -11)])
def test_a_forked_tool_ends_as_a_fresh_process_would(tmp_path, monkeypatch, mode, code):
    fresh = _run(tmp_path, mode, False, monkeypatch)
    forked = _run(tmp_path, mode, True, monkeypatch)
    assert fresh[0] == forked[0] == code, (fresh, forked)
    assert "forked True" in forked[2] and "forked False" in fresh[2]
    # the same lines: arguments, sys.path[0], folder, environment, priority, own process group
    assert forked[1] == fresh[1], (forked[1], fresh[1])
    assert "x été 1" in forked[1] and "nice 0 own group True" in forked[1]
    assert "main __main__" in forked[1]
    # idle OpenMP threads sleep: spinning ones took the core of the work beside them
    assert "wait policy PASSIVE" in forked[1]
    if mode == "raise":
        assert "ValueError: boom" in forked[1]


def test_the_fork_server_runs_the_tool_with_its_title_priority_and_threads(tmp_path, monkeypatch):
    # a background run: nice 10 and one OpenMP thread, also in the libraries the server loaded
    # before the run asked for them (torch's OpenMP read OMP_NUM_THREADS when it was loaded)
    rc, text, whole = _run(
        tmp_path, "torch", True, monkeypatch, background=True, extra={"OMP_NUM_THREADS": "1"}
    )
    assert rc == 0, text
    assert "forked True" in whole  # not started afresh
    assert "nice 10" in text and "omp 1" in text and "torch threads 1" in text
    rc, text, _ = _run(tmp_path, "torch", True, monkeypatch, extra={"OMP_NUM_THREADS": "2"})
    assert "torch threads 2" in text


def test_a_timeout_and_a_cancel_stop_a_forked_tool_with_its_children(tmp_path, monkeypatch):
    monkeypatch.setenv("DUOTPU_FORK_SERVER", "1")
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = compiler.tool_env()
    assert compiler.start_fork_server(env, wait=True)
    log = tmp_path / "sleep.log"
    t0 = time.monotonic()
    with pytest.raises(ToolchainError) as e:
        compiler.run_argv(
            "probe", [sys.executable, str(script), "sleep"], tmp_path, log, env, timeout=3
        )
    assert e.value.returncode == -9 and time.monotonic() - t0 < 10
    child = int(re.search(r"child (\d+)", log.read_text()).group(1))
    assert not _alive(child)
    # Ctrl-C from another thread (as the signal handler does): no child is left, and a new run
    # after clear_cancel starts a new server
    log2 = tmp_path / "sleep2.log"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            compiler.run_argv("probe", [sys.executable, str(script), "sleep"], tmp_path, log2, env)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    assert compiler.start_fork_server(env, wait=True)
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while "child" not in (log2.read_text() if log2.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    child = int(re.search(r"child (\d+)", log2.read_text()).group(1))
    servers = [p for p in psutil.Process().children() if "forkserver.py" in " ".join(p.cmdline())]
    assert servers
    compiler.stop_children()
    worker.join(10)
    assert errors and isinstance(errors[0], Interrupted)
    psutil.wait_procs(servers, timeout=3)
    assert not _alive(child) and not any(_alive(p.pid) for p in servers)
    compiler.clear_cancel()
    # the folder of a server whose duotpu is gone (killed before it cleaned up) is removed when
    # the next server starts
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"duotpu-fork-{dead.pid}-x"
    stale.mkdir()
    rc, _, whole = _run(tmp_path, "ok", True, monkeypatch)
    assert rc == 0 and "forked True" in whole
    assert not stale.exists()


def _alive(pid: int) -> bool:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            return False
        time.sleep(0.05)
    return True


def test_a_build_through_the_fork_server_makes_the_same_files(
    tmp_path, tiny_onnx_path, monkeypatch
):
    made = {}
    for fork in (False, True):
        monkeypatch.setenv("DUOTPU_FORK_SERVER", "1" if fork else "0")
        out = tmp_path / f"fork-{fork}"
        build(tiny_recipe(tiny_onnx_path, name="same"), out_dir=out)
        files = sorted(
            p
            for p in (out / "work").rglob("*")
            if p.suffix in (".mlir", ".npz") or p.name.endswith("cali_table")
        )
        made[fork] = {str(p.relative_to(out)): _without_times(p.read_bytes()) for p in files}
    assert len(made[True]) > 10
    assert made[True] == made[False]


def _without_times(data: bytes) -> bytes:
    return re.sub(rb"# genetated time: [^\n]*", b"", data)


def test_the_fork_server_can_be_switched_off(tmp_path, monkeypatch):
    rc, _, whole = _run(tmp_path, "ok", False, monkeypatch)
    assert rc == 0 and "forked False" in whole
    assert os.environ["DUOTPU_FORK_SERVER"] == "0"


def test_a_fast_script_neither_starts_nor_waits_for_a_server(tmp_path, monkeypatch):
    # a rebuild that only verifies again runs npz_tool and duotpu's worker (0.2–0.5 s each):
    # starting the server for them would cost more than it saves
    from duotpu.compiler import forkclient

    for p in forkclient.stop_servers():
        p.wait(10)
    monkeypatch.setenv("DUOTPU_FORK_SERVER", "1")
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    log = tmp_path / "fast.log"
    compiler.run_argv(
        "probe", [sys.executable, str(script), "ok"], tmp_path, log, compiler.tool_env()
    )
    assert "forked False" in log.read_text()
    assert not [p for p in psutil.Process().children() if "forkserver" in " ".join(p.cmdline())]
