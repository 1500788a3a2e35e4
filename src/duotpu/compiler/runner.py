"""The one runner: every child process duotpu starts (tpu_mlir's tools, its worker, flatc) goes
through `spawn` / `run_argv` here.

A Python tool (tpu_mlir's scripts, duotpu's worker) is started as a fork of the fork server
(`duotpu.compiler.forkserver`), which has imported what the tools import once, instead of as a
fresh interpreter that spends 2–3 s importing torch and transformers every time. The fork behaves
as the fresh process would (its own process group, the parent-death signal, its environment, its
priority, its exit status); ``DUOTPU_FORK_SERVER=0`` starts fresh processes instead.

Each child runs in its own process group and is registered, so `stop_children` (called on
SIGINT or SIGTERM) stops all of them and their own children at once, and no new one starts after.
`run_tool` runs a tpu_mlir tool with `tool_env`, writes its
output to a log file (first line: the command) and raises `ToolchainError` with the log's
tail when it fails.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from duotpu.config.errors import Interrupted, ToolchainError

from .env import preload_modules, preload_scripts, tool_argv, tool_env


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
_children: dict[int, subprocess.Popen | ForkedProc] = {}
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
    forked = _forked(argv, cwd, env, stdout, stderr, background)
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


def finish(proc: subprocess.Popen | ForkedProc, timeout: float | None = None) -> int:
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


def _kill_group(proc: subprocess.Popen | ForkedProc, sig: int) -> None:
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
        procs: list[subprocess.Popen | ForkedProc] = list(_children.values())
    for p in procs:
        _kill_group(p, signal.SIGTERM)
    # a fork server stops the runs it forked and reaps them before it exits (see forkserver.py)
    servers = _stop_servers()

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


# --------------------------------------------------------------------------------------------
# The fork server (see forkserver.py): one per duotpu process and per environment signature
# --------------------------------------------------------------------------------------------
class ForkedProc:
    """A tool run forked by the fork server: what `finish` and `stop_children` use of a
    `subprocess.Popen` (``pid``, ``poll``, ``wait``, ``returncode``). Its exit status comes from
    the server over the run's connection."""

    def __init__(self, conn: socket.socket, pid: int, args: Sequence[str]) -> None:
        self.pid = pid
        self.args = list(args)
        self.returncode: int | None = None
        self._conn = conn
        self._lock = threading.Lock()

    def _read(self, timeout: float) -> None:
        with self._lock:
            if self.returncode is not None:
                return
            self._conn.settimeout(timeout)
            try:
                data = self._conn.recv(64)
            except (socket.timeout, BlockingIOError):
                return
            except OSError:
                data = b""
            # no report: the manager itself was killed (with the server), and the tool with it
            self.returncode = int(data.split()[1]) if data.startswith(b"rc ") else -9
            self._conn.close()

    def poll(self) -> int | None:
        """The exit status, or None while the tool runs."""
        if self.returncode is None and self._lock.acquire(blocking=False):
            self._lock.release()
            self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the tool to end; `subprocess.TimeoutExpired` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._read(left)
        return self.returncode


Child = subprocess.Popen | ForkedProc
_IDLE_SECONDS = 120.0  # then it exits: 450 MB of its own memory, 600 MB of page cache


def _server_folder() -> Path:
    """A private folder for a new server's socket, named for this process; the folders of
    processes that are gone (a server killed before it could clean up) are removed first."""
    for old in Path(tempfile.gettempdir()).glob("duotpu-fork-*-*"):
        try:
            os.kill(int(old.name.split("-")[2]), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, OSError):
            pass
    return Path(tempfile.mkdtemp(prefix=f"duotpu-fork-{os.getpid()}-"))


@dataclass
class _Server:
    """A running (or starting) fork server."""

    env: dict[str, str]
    folder: Path = field(default_factory=lambda: _server_folder())
    ready: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None
    up: bool = False

    @property
    def socket_path(self) -> Path:
        return self.folder / "s"

    def alive(self) -> bool:
        return not self.ready.is_set() or (
            self.up and self.proc is not None and self.proc.poll() is None
        )

    def keep(self) -> None:
        """Start the server and wait for it to end, in a thread of its own that lives as long as
        the server: the parent-death signal is tied to the thread that started a process."""
        argv = [sys.executable, str(Path(__file__).with_name("forkserver.py"))]
        argv += ["--socket", str(self.socket_path), "--idle", str(_IDLE_SECONDS)]
        # in a file, not on its command line: `ps` shows a tool's name only for the tool
        preload = self.folder / "preload.json"
        scripts = [str(p) for p in preload_scripts()]
        preload.write_text(json.dumps({"scripts": scripts, "modules": preload_modules()}))
        argv += ["--preload", str(preload)]
        try:
            with open(self.folder / "server.log", "w") as log:
                self.proc = subprocess.Popen(
                    # TERM: the server stops its runs and reaps them before it exits
                    _wrapped(argv, False, death_signal="TERM"),
                    # (Ray's workers set SPT_NOENV, which would leave setproctitle only the
                    # server's own short command line to write the tools' into)
                    env={k: v for k, v in self.env.items() if k != "SPT_NOENV"},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )
            self.up = self.proc.stdout is not None and self.proc.stdout.readline() == b"ready\n"
        except OSError:
            self.up = False
        finally:
            self.ready.set()
        if self.proc is not None:
            self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run(
        self, argv: Sequence[str], cwd: Path | None, env: dict[str, str], out: int, nice: int
    ) -> ForkedProc | None:
        """Fork ``argv`` from the server; None when the server cannot take it."""
        request = {"argv": list(argv), "cwd": str(cwd or os.getcwd()), "env": env, "nice": nice}
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(str(self.socket_path))
            socket.send_fds(conn, [json.dumps(request).encode()], [out])
            conn.settimeout(30)
            answer = conn.recv(64)
        except OSError:
            conn.close()
            return None
        if not answer.startswith(b"pid "):
            conn.close()
            return None
        return ForkedProc(conn, int(answer.split()[1]), argv)


_servers: dict[tuple[int, tuple[tuple[str, str], ...]], _Server] = {}
_servers_lock = threading.RLock()  # (stop_children may run in a signal handler)


def _signature(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    # what a process reads once, at its start: a server serves only runs that agree on it
    return tuple(
        sorted(
            (k, v)
            for k, v in env.items()
            if k.startswith("LD_") or (k.startswith("PYTHON") and k != "PYTHONPATH")
        )
    )


def _server_for(env: dict[str, str], wait: bool = True) -> _Server | None:
    if os.environ.get("DUOTPU_FORK_SERVER", "1") == "0" or not hasattr(socket, "send_fds"):
        return None
    key = (os.getpid(), _signature(env))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive():
            server = _servers[key] = _Server(dict(env))
            threading.Thread(target=server.keep, name="duotpu-fork-server", daemon=True).start()
    if not wait:
        return server
    server.ready.wait(120)
    return server if server.alive() and server.up else None


def start_fork_server(env: dict[str, str] | None = None) -> None:
    """Start the fork server for tpu_mlir's tools in the background (a build calls it first,
    so the server's 3 s of imports overlap with the export instead of delaying the transform)."""
    if not _cancelled.is_set():
        _server_for(tool_env() if env is None else env, wait=False)


def _forked(
    argv: Sequence[str],
    cwd: Path | None,
    env: dict[str, str] | None,
    stdout: IO[Any] | int | None,
    stderr: IO[Any] | int | None,
    background: bool,
) -> ForkedProc | None:
    """``argv`` run by the fork server, when it is a Python script or module run in a tool
    environment with its output in a file; None otherwise (or when the server is unavailable)."""
    if env is None or len(argv) < 2 or argv[0] != sys.executable or stderr != subprocess.STDOUT:
        return None
    if not (argv[1].endswith(".py") or (argv[1] == "-m" and len(argv) > 2)):
        return None
    try:
        out = stdout if isinstance(stdout, int) else stdout.fileno()  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return None
    if out < 0:
        return None
    for _ in range(2):  # once more with a new server when this one had just gone idle
        server = _server_for(env)
        if server is None:
            return None
        forked = server.run(argv, cwd, env, out, 10 if background else 0)
        if forked is not None or server.alive():
            return forked
    return None


def _stop_servers() -> list[subprocess.Popen]:
    """Send SIGTERM to every fork server of this process (to the server alone: it stops its
    runs itself, so that each process is reaped by its own parent)."""
    with _servers_lock:
        procs = [s.proc for s in _servers.values() if s.proc is not None]
        _servers.clear()
    for p in procs:
        with contextlib.suppress(OSError):
            p.send_signal(signal.SIGTERM)
    return procs


@atexit.register
def _stop_servers_at_exit() -> None:
    # reaped here, by their parent, rather than killed by the parent-death signal as orphans
    for p in _stop_servers():
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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
