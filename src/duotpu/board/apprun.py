"""``duotpu board app push|run|bench``: a build's board app (`duotpu.board.app`) sent to a
board over SSH, run there by the board's own Python, and — for ``run`` — its answers compared
with the host's on the same images (the on-board accuracy check)."""

from __future__ import annotations

import json
import posixpath
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from duotpu.config.errors import BoardError, ConfigError
from duotpu.core import metrics
from duotpu.core.preprocess import load_bgr
from duotpu.inference import runtime
from duotpu.onboard import images as board_images

from .app import AppFolder, make_app
from .checks import doctor, model_problems
from .runner import RunFolder, explain_runtime_failure
from .ssh import Board
from .sync import PushResult, push_files

#: RAM the app needs beside the model's ION memory: Python + numpy + the app (measured RSS on
#: the host simulator is ~35 MB of which the simulator is most; bench/app.py prints it)
APP_RAM_MB = 24.0


@dataclass
class AppPush:
    """Where the app went on the board, what was sent and what the checks found."""

    remote: str
    sent: PushResult
    python: str
    numpy: str
    problems: list[str] = field(default_factory=list)


@dataclass
class AppRun:
    """The app's answers on the board and how they compare with the host's."""

    remote: str
    model: str
    results: list[dict[str, Any]]
    host: list[Any]
    agreement: float  # top-1 agreement (classify), mean box F1 (detect), 1.0 otherwise
    cosine: dict[str, float]  # the lowest output cosine board vs host, per output
    bench: dict[str, Any] | None = None
    peak_rss_mb: float | None = None  # the app's peak memory on the board (VmHWM)

    @property
    def agrees(self) -> bool:
        return self.agreement >= 0.999 and all(c >= 0.999 for c in self.cosine.values())


def _app_for(build: Path) -> AppFolder:
    return make_app(build)


def remote_app_dir(b: Board, app: AppFolder) -> str:
    return posixpath.join(b.profile.work_dir, "apps", app.config["name"])


def board_python(b: Board) -> tuple[str, str]:
    """The board's Python and numpy versions; a `BoardError` when either is missing."""
    r = b.run(
        b.sdk_command(
            'python3 -c \'import sys, numpy; print("%d.%d" % sys.version_info[:2], '
            "numpy.__version__)'"
        )
    )
    parts = r.stdout.split()
    if r.returncode != 0 or len(parts) < 2:
        missing = "numpy" if "numpy" in r.stderr else "python3"
        raise BoardError(
            f"The board has no usable {missing} ({(r.stderr or r.stdout).strip()[-200:]}). "
            "The board app needs python3 and numpy (the stock Milk-V Duo images have both); "
            "on an image without them, use the C application (duotpu app --c)."
        )
    return parts[-2], parts[-1]


def push_app(b: Board, build: Path, force: bool = False) -> AppPush:
    """Write the build's app and upload it, after checking the board: chip, runtime version
    and ION for every model, python3 + numpy, and free RAM for the app."""
    app = _app_for(build)
    d = doctor(b)
    models = [app.folder / m["file"] for m in app.config["models"].values()]
    problems = model_problems(models, d)
    py, npv = board_python(b)
    if d.mem_free_mb is not None and d.mem_free_mb < APP_RAM_MB:
        problems.append(
            f"The board has {d.mem_free_mb:.0f} MB of free RAM; the app needs about "
            f"{APP_RAM_MB:.0f} MB for Python and numpy. Stop other programs, or use the C "
            "application (duotpu app --c)."
        )
    if problems and not force:
        raise BoardError(" ".join(problems) + " Nothing was uploaded (--force to try anyway).")
    remote = remote_app_dir(b, app)
    files = [
        (p, posixpath.join(remote, *p.relative_to(app.folder).parts))
        for p in sorted(app.folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    sent = push_files(b, files)
    return AppPush(remote, sent, py, npv, problems)


def _board_images(items: list[Path], folder: Path) -> list[Path]:
    """Images as files the stock board reads without Pillow: PPM for JPEG/PNG/…, the rest as
    they are."""
    out = []
    for k, p in enumerate(items):
        if p.suffix.lower() in board_images.NATIVE:
            out.append(p)
        else:
            bgr = load_bgr(p, False)
            out.append(board_images.write_ppm(folder / f"{k:04d}.ppm", bgr))
    return out


def _host_answers(build: Path, app: AppFolder, mode: str, items: list[Path]) -> tuple[list, list]:
    model = runtime.open_model(build / Path(app.config["models"][mode]["file"]).name)
    outs = runtime.infer(model, runtime.tensors_for(model, items))
    if app.config["task"] == "classify":
        return outs, runtime.top_k(model, outs)
    if app.config["task"] == "detect":
        return outs, runtime.detect(model, items, outs)
    return outs, [None] * len(outs)


def run_app(
    b: Board,
    build: Path,
    items: list[Path],
    mode: str | None = None,
    count: int = 0,
    force: bool = False,
) -> AppRun:
    """Push the build's app, run it on the board on ``items`` (images are sent as PPM), and
    compare its answers and outputs with the host simulator's on the same files."""
    if not items:
        raise ConfigError("Give images (or a folder of them) to run the app on.")
    pushed = push_app(b, build, force)
    app = _app_for(build)
    mode = mode or app.config["default"]
    if mode not in app.config["models"]:
        raise ConfigError(f"The app has no {mode} model; it has {', '.join(app.config['models'])}.")
    with tempfile.TemporaryDirectory(prefix="duotpu-app-") as tmp, RunFolder(b) as run_dir:
        local = _board_images(items, Path(tmp))
        remote_items = [
            posixpath.join(run_dir, f"{k:04d}{p.suffix.lower()}") for k, p in enumerate(local)
        ]
        push_files(b, list(zip(local, remote_items)))
        saved = posixpath.join(run_dir, "outputs.npz")
        cmd = " ".join(
            [
                "python3",
                shlex.quote(posixpath.join(pushed.remote, "main.py")),
                "--json",
                "--model",
                shlex.quote(mode),
                "--save",
                shlex.quote(saved),
                *(["--count", str(count)] if count else []),
                *(shlex.quote(r) for r in remote_items),
            ]
        )
        r = b.run(b.sdk_command(cmd), timeout=3600)
        if r.returncode != 0:
            text = r.stderr.strip() or r.stdout.strip()
            advice = explain_runtime_failure(text)
            raise BoardError(
                f"The app failed on the board (exit code {r.returncode}): "
                f"{text.splitlines()[-1] if text else 'no output'}"
                + (f" {advice}" if advice else "")
            )
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            raise BoardError(f"The app printed no result on the board: {r.stdout[-300:]!r}")
        doc = json.loads(lines[-1])
        got = Path(tmp) / "outputs.npz"
        b.get(saved, got)
        with np.load(got) as z:
            board_outs: list[dict[str, np.ndarray]] = [{} for _ in items]
            for key in z.files:
                k, name = key.split("/", 1)
                board_outs[int(k)][name] = z[key]
        host_outs, host_answers = _host_answers(build, app, mode, local)
    results = doc["results"]
    cos: dict[str, float] = {}
    for bo, ho in zip(board_outs, host_outs):
        for name, v in ho.items():
            if name in bo:
                c = metrics.cosine(np.asarray(v).ravel(), bo[name].ravel())
                cos[name] = min(cos.get(name, 1.0), float(c))
    task = app.config["task"]
    if task == "classify":
        same = [r["result"][0]["class"] == h[0]["class"] for r, h in zip(results, host_answers)]
        agreement = float(np.mean(same))
    elif task == "detect":
        scores = []
        for r, h in zip(results, host_answers):
            mine = [_Det(tuple(d["box"]), d["class"]) for d in r["result"]]
            scores.append(_f1(mine, [_Det(tuple(d.box), d.cls) for d in h]))
        agreement = float(np.mean(scores))
    else:
        agreement = 1.0
    return AppRun(
        pushed.remote,
        mode,
        results,
        host_answers,
        agreement,
        cos,
        doc.get("bench"),
        doc.get("peak_rss_mb"),
    )


@dataclass
class _Det:
    box: tuple
    cls: int


def _iou(p: tuple, q: tuple) -> float:
    w = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
    h = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
    inter = w * h
    union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
    return inter / union if union > 0 else 0.0


def _f1(a: list[_Det], b: list[_Det], iou: float = 0.5) -> float:
    """Boxes of the same class matched one to one at IoU ≥ ``iou``: F1 (1.0 when both empty)."""
    if not a and not b:
        return 1.0
    free = list(b)
    hits = 0
    for d in a:
        best = max(
            (q for q in free if q.cls == d.cls), key=lambda q: _iou(d.box, q.box), default=None
        )
        if best is not None and _iou(d.box, best.box) >= iou:
            hits += 1
            free.remove(best)
    return 2 * hits / (len(a) + len(b))
