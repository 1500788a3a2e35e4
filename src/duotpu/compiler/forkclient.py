"""The client side of the fork server (`duotpu.compiler.forkserver`): one server per duotpu
process and per start-up environment, started in a thread of its own, asked over its socket to
fork a run, stopped so that every process it made is reaped by its own parent. `runner.spawn`
decides which runs go here; everything else about a child process stays in `runner`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
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
from typing import IO, Any, Callable, Sequence

from .env import preload_modules, preload_scripts, slow_to_start

#: how a command line is wrapped before it is started (runner's setpriv / nice wrappers):
#: (argv, background, parent-death signal) -> argv
Wrap = Callable[[Sequence[str], bool, str], list[str]]


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
    wrap: Wrap
    folder: Path = field(default_factory=lambda: _server_folder())
    ready: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None
    up: bool = False

    @property
    def socket_path(self) -> Path:
        return self.folder / "s"

    def usable(self) -> bool:
        """Started, ready and still running: it can take a run now."""
        return (
            self.ready.is_set() and self.up and self.proc is not None and self.proc.poll() is None
        )

    def alive(self) -> bool:
        """Still starting, or usable."""
        return not self.ready.is_set() or self.usable()

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
                    self.wrap(argv, False, "TERM"),
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


def server_for(
    env: dict[str, str], wrap: Wrap, wait: bool = True, start: bool = True
) -> _Server | None:
    """The running (or starting) server for ``env`` (started with ``wrap``-ped command line);
    None when servers are switched off or this one could not start. ``wait=False`` returns
    without waiting for it to be ready; ``start=False`` only returns one already there."""
    if os.environ.get("DUOTPU_FORK_SERVER", "1") == "0" or not hasattr(socket, "send_fds"):
        return None
    key = (os.getpid(), _signature(env))
    with _servers_lock:
        server = _servers.get(key)
        if server is None or not server.alive():
            if not start:
                return None
            server = _servers[key] = _Server(dict(env), wrap)
            threading.Thread(target=server.keep, name="duotpu-fork-server", daemon=True).start()
    if not wait:
        return server
    server.ready.wait(120)
    return server if server.usable() else None


def forked(
    wrap: Wrap,
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
    # a slow tool waits for a server still importing (a fresh start would spend the same 2-3 s);
    # the others (npz_tool, model_runner, duotpu's worker: 0.2-0.5 s) start afresh instead and
    # start no server (a rebuild that only verifies again runs nothing else)
    tool = slow_to_start(argv)
    for _ in range(2):  # once more with a new server when this one had just gone idle
        server = server_for(env, wrap, wait=tool, start=tool)
        if server is None or not server.usable():
            return None
        forked = server.run(argv, cwd, env, out, 10 if background else 0)
        if forked is not None or server.alive():
            return forked
    return None


def stop_servers() -> list[subprocess.Popen]:
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
    for p in stop_servers():
        try:
            p.wait(3)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
