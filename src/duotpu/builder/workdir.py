"""A build's work directory: one folder per stage, each with its ``stage.json``.

A stage is a function ``fn(folder) -> R`` where ``R`` is a frozen dataclass of the stage's
results (`StageResult`). `WorkDir.run` runs it in a hidden temporary folder that is
renamed into place only when it succeeded, and records in ``stage.json`` its cache key, its time
and its result — paths relative to the stage folder, so a work directory can be moved. A stage
whose key did not change and whose result's files all exist is not run again: its result is read
back, typed, from ``stage.json``. So an interrupted build resumes at the first unfinished stage
and a final name never holds a half-written file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
import types
import typing
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from duotpu.compiler.runner import recording
from duotpu.config.errors import BusyError, ConfigError
from duotpu.core.files import atomic_copy, atomic_write

__all__ = ["atomic_copy", "atomic_write"]  # re-exported for the build's modules

LOCK_FILE = ".lock"  # held by the build working in the folder
RESUME_FILE = ".resume-key"  # in an unfinished resumable stage: the key its work is for
STAGE_FILE = "stage.json"


# --------------------------------------------------------------------------------------------
# Events (the CLI renders them; the API ignores them unless asked)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageEvent:
    """A stage started, finished, was found in the cache, failed, or has a warning."""

    stage: str
    # "start" | "done" | "cached" | "failed" | "interrupted" | "warning" | "info" | "progress"
    status: str
    seconds: float = 0.0
    message: str = ""


EventSink = Callable[[StageEvent], None]

# tqdm's bar in a tool's log: "activation_collect_and_calc_th for sample: 7:  45%|…| 45/100 [..."
# (the words before it are read back from the bar's start: a lazy group in front of the bar made
# the search quadratic in a line's length, 0.24 s of a core for 4 KB, once a second)
_BAR = re.compile(r"\d+%\|[^|\r\n]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[")
_LINE_END = re.compile(r"[\r\n|]")
# what a bar counts, by the words tpu_mlir's tools put before it
_COUNTED = (
    ("sample", "images"),
    ("threshold", "layers"),
    ("tune op", "layers tuned"),
    ("compare", "tensors compared"),
)


def log_progress(text: str) -> str:
    """What the last progress bar in a tool's log says, in words ("45/100 images"), or ""."""
    bar = collections.deque(_BAR.finditer(text), maxlen=1)
    if not bar:
        return ""
    last = bar[0]
    desc = _LINE_END.split(text[max(0, last.start() - 200) : last.start()])[-1]
    unit = next((u for word, u in _COUNTED if word in desc), "")
    return f"{last['n']}/{last['total']}" + (f" {unit}" if unit else "")


@contextlib.contextmanager
def watching(folder: Path, stage: str, events: EventSink, every: float = 1.0) -> Iterator[None]:
    """While the block runs, a "progress" event whenever the newest log in ``folder`` shows a
    new count in its progress bar (run_calibration's images, say)."""
    stop = threading.Event()

    def watch() -> None:
        said = ""
        while not stop.wait(every):
            logs = sorted(folder.glob("*.log"), key=lambda p: p.stat().st_mtime)
            if not logs:
                continue
            try:
                with open(logs[-1], "rb") as f:
                    f.seek(max(0, logs[-1].stat().st_size - 4096))
                    now = log_progress(f.read().decode(errors="replace"))
            except OSError:  # the folder is being renamed into place
                continue
            if now and now != said:
                said = now
                events(StageEvent(stage, "progress", message=now))

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def no_events(_: StageEvent) -> None:
    """An `EventSink` that ignores everything."""


# --------------------------------------------------------------------------------------------
# Names and paths the compiler can take
# --------------------------------------------------------------------------------------------
# tpu_mlir joins its commands into shell lines without quoting and lower-cases some of the file
# names it derives from the model name: the compiler sees only these characters.
_SHELL_SAFE = re.compile(r"[A-Za-z0-9_./+,=@%:-]")


def unsafe_characters(path: Path) -> str:
    """The characters of ``path`` (made absolute) that tpu_mlir's shell lines cannot take."""
    chars = (c for c in str(Path(path).absolute()) if not _SHELL_SAFE.fullmatch(c))
    return "".join(dict.fromkeys(chars))


def tool_name(name: str) -> str:
    """The name tpu_mlir's files get for a model called ``name``: lower-case ASCII letters,
    digits and ``_`` (``MyNet`` → ``mynet``, ``my nét 猫`` → ``my_net``). The user's name is
    kept for every delivered file."""
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = re.sub(r"[^a-z0-9_]+", "_", plain.lower()).strip("_")
    return safe if safe and not safe[0].isdigit() else f"model_{safe}".rstrip("_")


def work_root(out_dir: Path, given: Path | None, name: str) -> tuple[Path, str]:
    """The work directory of a build into ``out_dir`` and a note when it is not where it
    would be. ``given`` (the user's ``--work-dir``) is taken as it is or refused, naming the
    character; the default ``out_dir/work`` moves to duotpu's cache folder when the output path
    holds characters the compiler cannot take (spaces, accents, shell characters)."""
    if given is not None:
        bad = unsafe_characters(given)
        if bad:
            raise ConfigError(
                f"The work directory {given} contains {_describe(bad)}, which tpu_mlir cannot "
                "take in a path (it joins its commands into shell lines). Choose a work "
                "directory made of letters, digits and _ . / - (e.g. --work-dir /tmp/work), or "
                "leave --work-dir out: duotpu then picks one."
            )
        return Path(given), ""
    default = Path(out_dir) / "work"
    bad = unsafe_characters(default)
    if not bad:
        return default, ""
    digest = hashlib.sha256(str(Path(out_dir).absolute()).encode()).hexdigest()[:12]
    leaf = f"{tool_name(name)}-{digest}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "duotpu" / "work"
    root = cache / leaf
    if unsafe_characters(root):
        root = Path("/tmp") / f"duotpu-work-{os.getuid()}" / leaf
    note = (
        f"the output path holds {_describe(bad)}, which the compiler cannot take: intermediate "
        f"files go to {root} (--work-dir sets another place)"
    )
    return root, note


def check_writable(folder: Path) -> None:
    """Refuse, before any work, an output folder that cannot be made or written: it is the
    user's folder, so the message says which and what to do."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".duotpu-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise ConfigError(
            f"The output folder {folder} cannot be written ({why}). It is your folder, not "
            "duotpu's: make it writable (e.g. chmod u+w), or choose another with --out."
        ) from None


@contextlib.contextmanager
def exclusive(root: Path) -> Iterator[None]:
    """Hold the work directory for one build: a second build into it (another terminal, a
    second `duotpu build` of the same output) is refused, naming the process that holds it.
    The lock (``flock`` on ``root/.lock``) dies with its process, even under ``kill -9``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        who = f.read().strip() or "another process"
        f.close()
        raise BusyError(
            f"Another duotpu build ({who}) is working in {root}. One build per work folder at "
            "a time: wait for it to finish, or build into another --out folder."
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}, started {time.strftime('%H:%M:%S')}")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _describe(chars: str) -> str:
    names = {" ": "a space", "\t": "a tab", "\n": "a line break"}
    return "the characters " + " ".join(names.get(c, repr(c)) for c in chars)


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str))


# --------------------------------------------------------------------------------------------
# Typed results <-> stage.json
# --------------------------------------------------------------------------------------------
class StageResult:
    """Base of every stage's frozen result dataclass. Its ``Path`` fields (also inside nested
    dataclasses, tuples and dicts) are the files the stage made or reads; a cached stage is
    used only while all of them exist."""


R = TypeVar("R", bound=StageResult)
S = TypeVar("S", bound=StageResult)


def to_json(obj: Any, folder: Path) -> Any:
    """Plain JSON data of a result: paths under the work directory relative to ``folder``."""
    if isinstance(obj, Path):
        return os.path.relpath(obj.absolute(), Path(folder).absolute())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name), folder) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v, folder) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v, folder) for k, v in obj.items()}
    return obj


def from_json(tp: Any, data: Any, folder: Path) -> Any:
    """The value of type ``tp`` that `to_json` wrote, paths made absolute again. Raises
    `KeyError` for a record that lacks a field of its type (an older duotpu wrote it): a stage's
    cached result whose type has grown since is run again, not read with defaults."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        return from_json(next(a for a in args if a is not type(None)), data, folder)
    if tp is Path:
        return Path(os.path.normpath(folder / data))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        missing = [f.name for f in dataclasses.fields(tp) if f.name not in data]
        if missing:  # written before the type had these fields: not this result
            raise KeyError(f"{tp.__name__} record without {', '.join(missing)}")
        return tp(
            **{
                f.name: from_json(hints[f.name], data[f.name], folder)
                for f in dataclasses.fields(tp)
            }
        )
    if origin is tuple:
        inner = args[0] if args else Any
        return tuple(from_json(inner, v, folder) for v in data)
    if origin is list:
        inner = args[0] if args else Any
        return [from_json(inner, v, folder) for v in data]
    if origin is dict:
        inner = args[1] if len(args) == 2 else Any
        return {k: from_json(inner, v, folder) for k, v in data.items()}
    return data


def result_files(obj: Any) -> list[Path]:
    """Every path a result holds."""
    if isinstance(obj, Path):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [p for f in dataclasses.fields(obj) for p in result_files(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [p for v in obj for p in result_files(v)]
    if isinstance(obj, dict):
        return [p for v in obj.values() for p in result_files(v)]
    return []


# --------------------------------------------------------------------------------------------
# The work directory
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One external command a stage ran: its working folder and argument list."""

    cwd: Path
    argv: tuple[str, ...]


@dataclass(frozen=True)
class Stage(Generic[R]):
    """One stage of a build: where it ran, whether it came from the cache, its typed result,
    and the commands it ran (from the record when cached)."""

    name: str
    cached: bool
    seconds: float
    folder: Path
    result: R
    key: dict[str, Any]
    commands: tuple[Command, ...] = ()

    def part(self, result: S) -> Stage[S]:
        """The same stage seen through one part of its result (a stage that makes two)."""
        return Stage(self.name, self.cached, self.seconds, self.folder, result, self.key,
                     self.commands)  # fmt: skip


def key_hash(key: dict[str, Any]) -> str:
    """The cache key's digest."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class WorkDir:
    """A build's work directory: one folder per stage, each with its ``stage.json``."""

    def __init__(self, root: Path, events: EventSink = no_events):
        self.root = Path(root).absolute()  # results hold absolute paths, whatever the cwd
        self.root.mkdir(parents=True, exist_ok=True)
        self.events = events
        self.stages: dict[str, Stage[Any]] = {}
        self.failed: dict[str, float] = {}  # stages that raised: name → seconds they ran
        self._lock = threading.Lock()

    def shared_folder(self, name: str) -> Path:
        """A folder of the work directory that outlives the stages' own (which each run
        replaces): what one build keeps for the next, e.g. calibration tables for cuts."""
        return self.root / name

    def run(
        self,
        name: str,
        key: dict[str, Any],
        fn: Callable[[Path], R],
        result_type: type[R],
        resumable: bool = False,
    ) -> Stage[R]:
        """Run stage ``name`` unless its ``stage.json`` has the same ``key`` and every file of its
        result exists. ``fn(folder)`` does the work in a temporary folder and returns the
        result, with paths in that folder (or elsewhere in the work directory). A
        ``resumable`` stage finds in that folder what an interrupted run with the same key
        finished (its own markers say what is complete)."""
        folder = self.root / name
        khash = key_hash(key)
        cached = self._cached(folder, khash, result_type)
        if cached is not None:
            seconds, result, commands = cached
            stage = Stage(name, True, seconds, folder, result, key, commands)
            self._keep(stage)
            self.events(StageEvent(name, "cached", seconds))
            return stage
        tmp = self.root / f".{name}.tmp"
        marker = tmp / RESUME_FILE
        if not (resumable and marker.is_file() and marker.read_text() == khash):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            if resumable:
                marker.write_text(khash)
        self.events(StageEvent(name, "start"))
        t0 = time.monotonic()
        try:
            with recording() as runs, watching(tmp, name, self.events):
                made = fn(tmp)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Interrupted): not the stage's failure
            self.events(StageEvent(name, "interrupted", time.monotonic() - t0))
            raise
        except BaseException:
            self.failed[name] = time.monotonic() - t0
            self.events(StageEvent(name, "failed", self.failed[name]))
            raise
        seconds = time.monotonic() - t0
        data = to_json(made, tmp)
        # the commands as they will read once the temporary folder is renamed into place
        moved = [
            (
                str(run.cwd).replace(str(tmp), str(folder)),
                [a.replace(str(tmp), str(folder)) for a in run.argv],
            )
            for run in runs
        ]
        record = {
            "stage": name,
            "key_hash": khash,
            "key": key,
            "seconds": round(seconds, 3),
            "finished": time.time(),
            "result": data,
            "commands": [{"cwd": cwd, "argv": argv} for cwd, argv in moved],
        }
        write_json(tmp / STAGE_FILE, record)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        commands = tuple(Command(Path(cwd), tuple(argv)) for cwd, argv in moved)
        result = from_json(result_type, data, folder)
        stage = Stage(name, False, seconds, folder, result, key, commands)
        self._keep(stage)
        self.events(StageEvent(name, "done", seconds))
        return stage

    def _cached(
        self, folder: Path, khash: str, result_type: type[R]
    ) -> tuple[float, R, tuple[Command, ...]] | None:
        try:
            old = json.loads((folder / STAGE_FILE).read_text())
            if old.get("key_hash") != khash:
                return None
            result = from_json(result_type, old["result"], folder)
            commands = tuple(
                Command(Path(c["cwd"]), tuple(c["argv"])) for c in old.get("commands", [])
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no record, or one an older duotpu wrote: run the stage
        if not all(p.exists() for p in result_files(result)):
            return None
        return float(old.get("seconds", 0.0)), result, commands

    def _keep(self, stage: Stage[Any]) -> None:
        with self._lock:
            self.stages[stage.name] = stage
