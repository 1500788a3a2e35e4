"""The one runner: every child process duotpu starts (tpu_mlir's tools, its worker, flatc) goes
through `spawn` / `run_argv` here.

A Python tool (tpu_mlir's scripts, duotpu's worker) is started as a fork of the fork server
(`duotpu.compiler.forkserver`), which has imported what the tools import once, instead of as a
fresh interpreter that spends 2–3 s importing torch and transformers every time. The fork behaves
as the fresh process would (its own process group, the parent-death signal, its environment, its
priority, its exit status); ``DUOTPU_FORK_SERVER=0`` starts fresh processes instead. The
server's client (starting it, asking it, stopping it) is `duotpu.compiler.forkclient`.

Each child runs in its own process group and is registered, so `stop_children` (called on
SIGINT or SIGTERM) stops all of them and their own children at once, and no new one starts after.
`run_tool` runs a tpu_mlir tool with `tool_env`, writes its
output to a log file (first line: the command) and raises `ToolchainError` with the log's
tail when it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from duotpu.config.errors import Interrupted, ToolchainError

from . import forkclient
from .env import tool_argv, tool_env
from .forkclient import Child


# --------------------------------------------------------------------------------------------
# Running a tool
# --------------------------------------------------------------------------------------------
def log_tail(log_path: Path, lines: int = 25) -> str:
    """The last lines of a log, with progress-bar carriage returns folded away."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines():
        line = line.rsplit("\r", 1)[-1].rstrip()
        if line:
            out.append(line)
    return "\n".join(out[-lines:])


def _diagnose(step: str, log_text: str) -> str:
    """A plain-words hint for failures we recognise in a tool's log."""
    if "GLIBC_" in log_text and "not found" in log_text or "stack smashing" in log_text:
        return (
            "The compiler loaded tpu_mlir's bundled glibc instead of the system's: "
            "LD_PRELOAD of the system libc was lost. Run the tool through duotpu."
        )
    m = re.search(r"(?:not support|unsupported|Unsupported|not supported)[^\n]*?op[^\n]*", log_text)
    m = m or re.search(
        r"[^\n]*(?:op_type|OpType|operator)[^\n]*not (?:support|implement)[^\n]*", log_text
    )
    if m:
        return f"The compiler rejected an operator: {m.group(0).strip()}."
    return ""


# --------------------------------------------------------------------------------------------
# Child processes: every one is started by `spawn`, in its own process group, and known
# here, so that a signal to duotpu alone (a supervisor, `timeout`, `kill PID`) stops them all.
# --------------------------------------------------------------------------------------------
_children: dict[int, Child] = {}
# re-entrant: stop_children runs in a signal handler, which may interrupt the main thread
# while it holds the lock in spawn or finish
_children_lock = threading.RLock()
_cancelled = threading.Event()
_cancel_signal: list[int] = [int(signal.SIGINT)]


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    background: bool = False,
) -> Child:
    """Start a child process in its own process group, registered for `stop_children`.
    Refuses (raises `Interrupted`) once the run was cancelled, so no stage starts after
    Ctrl-C or SIGTERM. ``background`` runs it at a lower CPU priority (``nice 10``)."""
    if _cancelled.is_set():
        raise Interrupted(_cancel_signal[0])
    forked = forkclient.forked(_wrapped, argv, cwd, env, stdout, stderr, background)
    if forked is not None:
        with _children_lock:
            _children[forked.pid] = forked
        if _cancelled.is_set():
            _kill_group(forked, signal.SIGKILL)
        return forked
    proc = subprocess.Popen(
        _wrapped(argv, background),
        cwd=cwd,
        env=env,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # (set up by Popen itself: safe with threads running)
    )
    with _children_lock:
        _children[proc.pid] = proc
    if _cancelled.is_set():  # cancelled while it started
        _kill_group(proc, signal.SIGKILL)
    return proc


_SETPRIV = shutil.which("setpriv")  # util-linux: Debian has it on every system
_NICE = shutil.which("nice")


def _wrapped(argv: Sequence[str], background: bool, death_signal: str = "KILL") -> list[str]:
    """``argv`` behind two exec wrappers instead of a ``preexec_fn`` (which can deadlock a child
    forked while other threads hold locks): ``setpriv --pdeathsig KILL`` so the child dies with
    duotpu even under ``kill -9`` (or a signal between its start and its registration), and
    ``nice -n 10`` for background work. Both exec the tool: its pid is the child's."""
    out = list(argv)
    if background and _NICE:
        out = [_NICE, "-n", "10", *out]
    if _SETPRIV:
        out = [_SETPRIV, "--pdeathsig", death_signal, "--", *out]
    return out


def finish(proc: Child, timeout: float | None = None) -> int:
    """Wait for a child from `spawn`; kill its whole group if the wait is interrupted
    (Ctrl-C in this thread) or times out (returns -9 then). Raises `Interrupted` when the
    run was cancelled while it ran."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        rc = -9
    except BaseException:
        _kill_group(proc, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        with _children_lock:
            _children.pop(proc.pid, None)
    if _cancelled.is_set():
        raise Interrupted(_cancel_signal[0])
    return rc


def _kill_group(proc: Child, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_children(signum: int = signal.SIGINT, grace: float = 1.0) -> None:
    """Cancel the run: no new child starts, every running one (and its own children) gets
    SIGTERM, then SIGKILL after ``grace`` seconds. Safe to call from a signal handler."""
    _cancel_signal[0] = signum
    _cancelled.set()
    with _children_lock:
        procs: list[Child] = list(_children.values())
    for p in procs:
        _kill_group(p, signal.SIGTERM)
    # a fork server stops the runs it forked and reaps them before it exits (see forkserver.py)
    servers = forkclient.stop_servers()

    def reap() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs + servers):
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGKILL)
        for server in servers:
            if server.poll() is None:
                server.kill()

    if procs or servers:
        threading.Thread(target=reap, daemon=True).start()


def check_cancelled() -> None:
    """Raise `Interrupted` when the run was cancelled (Ctrl-C, SIGTERM): long work done
    in this process, not in a child, calls it between its steps."""
    if _cancelled.is_set():
        raise Interrupted(_cancel_signal[0])


def clear_cancel() -> None:
    """Allow children again (a new run after a cancelled one in the same Python process)."""
    _cancelled.clear()


def start_fork_server(env: dict[str, str] | None = None, wait: bool = False) -> bool:
    """Start the fork server for tpu_mlir's tools in the background (an export that runs calls
    it, so the server's 3 s of imports overlap with it instead of delaying the transform).
    ``wait`` waits until it is ready; True when it is (or is starting, without ``wait``)."""
    if _cancelled.is_set():
        return False
    env = tool_env() if env is None else env
    return forkclient.server_for(env, _wrapped, wait=wait) is not None


@dataclass
class ToolRun:
    """What one finished tool call left behind."""

    step: str
    argv: list[str]
    log_path: Path
    seconds: float
    cwd: Path = Path(".")


_recording = threading.local()


@contextlib.contextmanager
def recording() -> Iterator[list[ToolRun]]:
    """Collect every tool this thread runs inside the block (the commands a stage ran, kept in
    its record so nothing has to read them back from log text)."""
    stack = getattr(_recording, "stack", None)
    if stack is None:
        stack = _recording.stack = []
    runs: list[ToolRun] = []
    stack.append(runs)
    try:
        yield runs
    finally:
        stack.remove(runs)


def run_tool(
    step: str,
    tool: str,
    args: Sequence[str],
    cwd: Path,
    log_path: Path,
    env_extra: dict[str, str] | None = None,
    timeout: float | None = None,
    background: bool = False,
) -> ToolRun:
    """Run one tpu_mlir tool in ``cwd`` with its output in ``log_path``.

    ``background`` runs it at a lower CPU priority (``nice 10``), for work off the critical path
    of a build (``deploy`` also gives such a run one OpenMP thread). Raises
    `ToolchainError` (with the tail of the log) when the tool exits non-zero.
    """
    return run_argv(
        step, tool_argv(tool, args), cwd, log_path, tool_env(env_extra), timeout, background
    )


def run_argv(
    step: str,
    argv: list[str],
    cwd: Path,
    log_path: Path,
    env: dict[str, str],
    timeout: float | None = None,
    background: bool = False,
    append: bool = False,
) -> ToolRun:
    """Run a command line in tpu_mlir's environment ``env`` with its output in ``log_path``
    (first line: the command; ``append`` keeps what the log held); `ToolchainError`
    when it fails."""
    cwd, log_path = Path(cwd), Path(log_path)
    cwd.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "a" if append else "w") as log:
        log.write("$ (cd " + str(cwd) + " && " + " ".join(_quote(a) for a in argv) + ")\n")
        log.flush()
        rc = finish(
            spawn(
                argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, background=background
            ),
            timeout,
        )
        if rc == -9 and timeout is not None:
            log.write(f"\n[duotpu] {Path(argv[0]).name} timed out after {timeout} s\n")
    seconds = time.monotonic() - t0
    if rc != 0:
        text = log_path.read_text(errors="replace")
        raise ToolchainError(step, argv, rc, log_path, log_tail(log_path), _diagnose(step, text))
    run = ToolRun(step, argv, log_path, seconds, cwd)
    for runs in getattr(_recording, "stack", []):
        runs.append(run)
    return run


def _quote(arg: str) -> str:
    return (
        arg if re.fullmatch(r"[\w@%+=:,./\[\]-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"
    )
