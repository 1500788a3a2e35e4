"""The fork server: runs inside tpu_mlir's environment (started by `duotpu.compiler.runner`, by
its path, never imported by duotpu), imports once what tpu_mlir's Python tools import (3 s:
torch, transformers, onnx, onnxruntime, tpu_mlir's own modules), then forks a fresh copy of
itself for every tool run. A run that would have spent 2–3 s importing starts in ~0.1 s.

Protocol, over a SOCK_SEQPACKET Unix socket in a folder only this user can enter: a run is one
connection. The client sends one JSON message (``argv``, ``cwd``, ``env``, ``nice``) with the open
file descriptor the tool's output goes to; the server answers ``pid N`` once the tool runs and
``rc N`` when it ended (N as `subprocess.Popen.returncode`: negative for a signal).

Per run, the server forks a *manager*, which forks the *tool*: the manager waits for the tool
and reports its exit status (a tool killed by a signal or a crash cannot report its own). The
tool runs in its own process group (so ``killpg`` stops it with its children), with the parent
death signal at every link (duotpu → server → manager → tool), so ``kill -9`` of duotpu leaves
nothing behind. Only this file's standard-library code runs before the tool's own.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import ctypes
import importlib
import json
import os
import runpy
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int, sig: int) -> None:
    """Get ``sig`` when the parent ends; exit at once if the parent already has."""
    _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(137)


# --------------------------------------------------------------------------------------------
# Preloading: every module a tool script imports at its top, not the script itself
# --------------------------------------------------------------------------------------------
def _top_imports(script: Path) -> list[str]:
    names: list[str] = []
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


def _preload(scripts: list[str], modules: list[str]) -> None:
    for script in scripts:
        folder = str(Path(script).parent)
        sys.path.insert(0, folder)  # as when the script runs: its folder first
        try:
            for name in _top_imports(Path(script)):
                _try_import(name)
        finally:
            sys.path.remove(folder)
    for name in modules:
        _try_import(name)


def _try_import(name: str) -> None:
    # a module that fails to import here fails in the tool too, with the tool's own message
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        print(f"forkserver: preloading {name} failed: {e!r}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------
class _State:
    """What the server knew before and after preloading (the tool's environment is derived
    from both)."""

    env_before: dict[str, str] = {}
    env_after: dict[str, str] = {}
    path_before: list[str] = []


def _environment(requested: dict[str, str]) -> dict[str, str]:
    """The tool's environment: the requested one, plus what the preloaded imports changed in the
    server's own (tpu_mlir's ``__init__`` rewrites PATH and LD_LIBRARY_PATH and sets KMP_*,
    as it would have in a fresh tool process), except where the request asks otherwise."""
    before, after = _State.env_before, _State.env_after
    out: dict[str, str] = {}
    for key in set(before) | set(after) | set(requested):
        if requested.get(key) == before.get(key):
            if key in after:
                out[key] = after[key]
        elif key in requested:
            out[key] = requested[key]
    return out


def _openmp_threads(n: str) -> None:
    """OpenMP runtimes read OMP_NUM_THREADS when they are loaded (here, before the request):
    set the count the tool asked for on every runtime already in this process."""
    try:
        count = int(n)
    except ValueError:
        return
    seen = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        path = fields[-1] if len(fields) >= 6 else ""
        name = os.path.basename(path)
        if path in seen or not name.startswith(("libgomp", "libomp", "libiomp")):
            continue
        seen.add(path)
        try:
            ctypes.CDLL(path).omp_set_num_threads(count)
        except (OSError, AttributeError):
            pass


def _title(argv: list[str] | None) -> None:
    """Show ``argv`` as this process's command line (``ps``, psutil); without ``argv``, set up
    the title's memory while the process's environment is still where it started."""
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(" ".join(argv) if argv else setproctitle.getproctitle())


def _run_tool(request: dict[str, Any], out_fd: int) -> NoReturn:
    """In the forked tool process: become the tool's fresh process and run it."""
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.close(out_fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if request.get("nice"):
        os.nice(int(request["nice"]))
    argv: list[str] = request["argv"]
    env = _environment(request["env"])
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS") != _State.env_after.get("OMP_NUM_THREADS"):
        _openmp_threads(env.get("OMP_NUM_THREADS", ""))
    os.chdir(request["cwd"])
    _title(argv)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    module = argv[2] if len(argv) > 2 and argv[1] == "-m" else None
    first = os.getcwd() if module else str(Path(argv[1]).resolve().parent)
    sys.path[:] = [first, *extra, *(p for p in _State.path_before if p not in extra)]
    rc = 0
    try:
        if module:
            sys.argv = ["-m", *argv[3:]]
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv[1:])
            runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:
        if e.code is None:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code
        else:
            print(e.code, file=sys.stderr)
            rc = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        rc = 130
    except BaseException:
        etype, value, tb = sys.exc_info()
        # the traceback a fresh process prints starts in the tool, not in this file or runpy
        while tb is not None and tb.tb_frame.f_code.co_filename in (__file__, runpy.__file__):
            tb = tb.tb_next
        if value is not None:
            value.__traceback__ = tb
        sys.excepthook(etype, value, tb)  # type: ignore[arg-type]
        rc = 1
    try:
        atexit._run_exitfuncs()
    finally:
        _flush()
        os._exit(rc & 0xFF)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _manage(conn: socket.socket, request: dict[str, Any], out_fd: int) -> NoReturn:
    """In the forked manager: fork the tool, report its pid, wait for it, report how it ended.
    SIGTERM (from the server stopping, or its parent-death signal) kills the tool's group and
    still reaps it, so no tool outlives its manager as an orphan."""
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        conn.close()
        os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        _die_with_parent(me, signal.SIGKILL)
        _run_tool(request, out_fd)
    os.close(out_fd)
    try:
        os.setpgid(pid, pid)  # (both sides: the group exists before the client can signal it)
    except OSError:
        pass

    def stop(signum: int, frame: object) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
    try:
        conn.send(f"pid {pid}".encode())
    except OSError:
        stop(0, None)
    _, status = os.waitpid(pid, 0)
    try:
        conn.send(f"rc {os.waitstatus_to_exitcode(status)}".encode())
    except OSError:
        pass
    os._exit(0)


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve(path: str, idle: float, me: int) -> int:
    """Accept runs on the socket at ``path`` until ``idle`` seconds pass without one running,
    or SIGTERM: then stop the runs still going and reap their managers before exiting (each
    process here is reaped by its own parent, never left to init)."""
    managers: set[int] = set()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    sock.listen(16)
    signal.signal(signal.SIGTERM, _raise_stop)
    # a manager is reaped as soon as it ends (a zombie would look like a live child to psutil)
    signal.signal(signal.SIGCHLD, lambda signum, frame: _reap(managers, block=False))
    print("ready", flush=True)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    last = time.monotonic()
    try:
        while True:
            if managers:
                last = time.monotonic()
            elif time.monotonic() - last > idle:
                return 0
            if not select.select([sock], [], [], 0.5)[0]:
                continue
            conn, _ = sock.accept()
            try:
                data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 1)
                request = json.loads(data)
            except (OSError, ValueError):
                conn.close()
                continue
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                conn.close()
                continue
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
            pid = os.fork()
            if pid == 0:
                sock.close()  # (SIGTERM stays blocked until the manager handles it)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _die_with_parent(me, signal.SIGTERM)
                _manage(conn, request, fds[0])
            managers.add(pid)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
            conn.close()
            os.close(fds[0])
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for pid in managers:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        _reap(managers, block=True)
        return 0
    finally:
        sock.close()
        shutil.rmtree(Path(path).parent, ignore_errors=True)  # the folder is this server's


def _reap(managers: set[int], block: bool) -> None:
    deadline = time.monotonic() + 2.0
    while managers:
        try:
            pid, _ = os.waitpid(-1, 0 if block and time.monotonic() < deadline else os.WNOHANG)
        except ChildProcessError:
            managers.clear()
            return
        if pid == 0:
            if not block:
                return
            for left in managers:  # past the deadline: the tool would not die
                try:
                    os.kill(left, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
            continue
        managers.discard(pid)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--idle", type=float, default=300.0)
    ap.add_argument("--preload", help="JSON: the tool scripts and modules to import first")
    args = ap.parse_args()
    _title(None)  # before anything edits the environment (which moves it off the title's memory)
    _State.env_before = dict(os.environ)
    _State.path_before = list(sys.path[1:])  # without this file's folder
    if args.preload:
        preload = json.loads(Path(args.preload).read_text())
        _preload(preload["scripts"], preload["modules"])
    _State.env_after = dict(os.environ)
    rc = serve(args.socket, args.idle, os.getpid())
    _flush()
    os._exit(rc)  # no interpreter teardown: with torch loaded it takes ~0.8 s


if __name__ == "__main__":
    sys.exit(main())
