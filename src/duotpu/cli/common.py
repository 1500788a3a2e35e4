"""What every command shares: consoles, stage progress, recipe flags, tables, exit codes."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duotpu
from duotpu import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2  # interrupted: 128 + the signal (130, 143)
EXIT_PARTIAL = 3  # some modes delivered (verified), others failed


def _console():
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 100)


def _err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
# Progress: one line per stage, with its time
# --------------------------------------------------------------------------------------------
class StageProgress:
    """Renders pipeline events: a spinner with each running stage's elapsed time on a
    terminal (a "started" line and a line a minute when the output is piped), one line per
    finished stage."""

    HEARTBEAT = 60.0  # seconds between "still running" lines when the output is not a terminal

    def __init__(self, console):
        from rich.status import Status

        self.console = console
        self.running: dict[str, float] = {}  # stage → when it started
        self.counts: dict[str, str] = {}  # stage → its tool's last count ("45/100 images")
        self.lock = threading.Lock()
        self.status = Status("", console=console, spinner="dots")
        self.started = False
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(1.0):
            with self.lock:
                if not self.running:
                    last_beat = time.monotonic()
                    continue
                if self.console.is_terminal:
                    self._refresh()
                elif time.monotonic() - last_beat >= self.HEARTBEAT:
                    last_beat = time.monotonic()
                    self.console.print(f"… still running: {self._running_text()}")

    def _running_text(self) -> str:
        now = time.monotonic()
        return ", ".join(
            f"{s} ({now - t0:.0f} s" + (f", {self.counts[s]}" if s in self.counts else "") + ")"
            for s, t0 in self.running.items()
        )

    def __call__(self, ev) -> None:
        from rich.markup import escape as markup_escape

        with self.lock:
            if ev.status == "start":
                self.running[ev.stage] = time.monotonic()
                if not self.console.is_terminal:
                    self.console.print(f"… {ev.stage:<14} started")
            elif ev.status in ("done", "failed", "cached", "interrupted"):
                self.running.pop(ev.stage, None)
                self.counts.pop(ev.stage, None)
            elif ev.status == "progress":
                self.counts[ev.stage] = ev.message
            if ev.status == "interrupted":
                self.console.print(
                    f"[yellow]■[/] {ev.stage:<14} {ev.seconds:6.1f} s  interrupted (rerun resumes)"
                )
            elif ev.status == "done":
                self.console.print(f"[green]✓[/] {ev.stage:<14} {ev.seconds:6.1f} s")
            elif ev.status == "cached":
                self.console.print(
                    f"[cyan]↺[/] {ev.stage:<14}   cached [dim](ran in {ev.seconds:.1f} s)[/]"
                )
            elif ev.status == "failed":
                self.console.print(f"[red]✗[/] {ev.stage:<14} {ev.seconds:6.1f} s")
            elif ev.status == "warning":
                self.console.print(f"[yellow]![/] {ev.stage:<14} {markup_escape(ev.message)}")
            elif ev.status == "info":
                self.console.print(f"[dim]·[/] {ev.stage:<14} [dim]{markup_escape(ev.message)}[/]")
            self._refresh()

    def _refresh(self) -> None:
        if self.running and self.console.is_terminal:
            self.status.update("running " + self._running_text() + " …")
            if not self.started:
                self.status.start()
                self.started = True
        elif self.started:
            self.status.stop()
            self.started = False

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            if self.started:
                self.status.stop()
                self.started = False


# --------------------------------------------------------------------------------------------
# Arguments → recipe overrides
# --------------------------------------------------------------------------------------------
def _flag_type(flag):
    def parse(text: str) -> Any:
        try:
            return flag.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _add_recipe_flags(p: argparse.ArgumentParser) -> None:
    """One flag per recipe field that has one (the recipe dataclasses' field metadata)."""
    g = p.add_argument_group("recipe fields (override the recipe file)")
    for f in duotpu.recipe_flags():
        dest = "flag:" + f.key
        if f.kind == "bool":
            g.add_argument(f.option, dest=dest, action="store_true", default=None, help=f.help)
            continue
        metavar = f.metavar or f.option.lstrip("-").upper().replace("-", "_")
        kw: dict[str, Any] = {"dest": dest, "help": f.help or None, "metavar": metavar}
        if f.choices and f.kind == "str":
            kw["choices"] = f.choices
            if f.metavar:  # argparse shows the choices only in place of a metavar
                kw["help"] = f"{f.help} ({', '.join(f.choices)})"
            else:
                kw["metavar"] = None
        else:
            kw["type"] = _flag_type(f)
        g.add_argument(f.option, **kw)
    g.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any recipe key, e.g. --set calibration.seed=3 (TOML value)",
    )


def _table(title: str, header: list[str], rows: list[list[str]], numeric_from: int = 1):
    """A rich table of ``rows`` under ``header`` without the columns that are empty in every
    row (no labels → no accuracy columns); headers never wrap or get cut."""
    from rich.table import Table

    keep = [i for i in range(len(header)) if i == 0 or any(r[i] for r in rows)]
    t = Table(title=title)
    for i in keep:
        t.add_column(
            header[i],
            justify="right" if i >= numeric_from else "left",
            no_wrap=True,
            min_width=len(header[i]),
        )
    for r in rows:
        t.add_row(*(r[i] for i in keep))
    return t


def _add_scale_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run independent work as N parallel tasks on a local Ray instance "
        "(started and stopped here)",
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="join this Ray cluster instead (default $RAY_ADDRESS); its nodes need duotpu",
    )


def _executor(args: argparse.Namespace):
    """The executor the flags ask for (serial without them; demo has none)."""
    return duotpu.executor(getattr(args, "workers", 0) or 0, getattr(args, "ray_address", None))


def _class_names(args, n_classes: int):
    if getattr(args, "labels", None):
        return duotpu.read_labels(Path(args.labels))
    return duotpu.imagenet_classes() if n_classes == 1000 else None


def _top_k(args, model, items, outs, key: str) -> list[dict]:
    """Per input: the top-k classes of the model's first output, with names."""
    names = _class_names(args, 0) if getattr(args, "labels", None) else None
    tops = duotpu.top_k(model, outs, args.topk, names)
    return [{key: str(item), "top": top} for item, top in zip(items, tops)]


def _detect_results(args, model, items, outs, key: str) -> list[dict]:
    """Per input: the detector's boxes (decoded and NMS-ed on the CPU, in image pixels); with
    ``--save``, the images with their boxes drawn."""
    found = duotpu.detect(model, [Path(i) for i in items], outs, conf=args.conf, iou=args.iou)
    results = []
    for item, dets in zip(items, found):
        p = Path(item)
        results.append({key: str(item), "detections": [d.to_json() for d in dets]})
        if args.save and p.suffix.lower() not in (".npz", ".npy"):
            target = Path(args.save)
            if len(items) > 1 or target.is_dir():
                target = target / f"{p.stem}.jpg"
            results[-1]["saved"] = str(duotpu.draw_detections(p, dets, target))
    return results


def _print_detections(con, results: list[dict], key: str, where: str) -> None:
    from rich.table import Table

    for r in results:
        t = Table(
            title=f"{r[key]} ({where}): {len(r['detections'])} object(s)", title_justify="left"
        )
        points = any(d.get("keypoints") for d in r["detections"])
        cols = ("#", "class", "score", "box x1, y1, x2, y2") + (
            ("landmarks x, y",) if points else ()
        )
        for col in cols:
            t.add_column(col, justify="left" if col in ("class", "landmarks x, y") else "right")
        for k, d in enumerate(r["detections"], 1):
            t.add_row(
                str(k),
                f"{d['name']} ({d['class']})",
                f"{d['score']:.3f}",
                ", ".join(f"{v:.0f}" for v in d["box"]),
                *(
                    [" ".join(f"{x:.0f},{y:.0f}" for x, y in d.get("keypoints", []))]
                    if points
                    else []
                ),
            )
        con.print(t)
        if "saved" in r:
            con.print(f"drawn: {r['saved']}")


def _results(args, model, items, outs, key: str, tensors=None) -> list[dict]:
    if model.head is not None:
        return _detect_results(args, model, items, outs, key)
    if model.recipe.task == "generic":
        return _generic_results(args, model, items, outs, key, tensors)
    if getattr(args, "save", None):
        raise ConfigError(
            '--save draws boxes; it is for detectors (task = "detect"), and '
            f"{model.cvimodel.name} is a classifier."
        )
    return _top_k(args, model, items, outs, key)


def _generic_results(args, model, items, outs, key: str, tensors) -> list[dict]:
    """Per input: each output's shape, range and cosine to fp32; with --save, an npz each."""
    save = getattr(args, "save", None)
    if save and len(items) > 1 and Path(save).suffix == ".npz":
        raise ConfigError(
            f"--save {save} names one .npz file, but {len(items)} inputs were given: give a "
            "folder (one NAME.npz per input is written there) or one input."
        )
    results = []
    for item, (out, described) in zip(items, duotpu.describe_generic(model, outs, tensors)):
        row: dict[str, Any] = {key: str(item), "outputs": described}
        if getattr(args, "save", None):
            target = Path(args.save)
            if len(items) > 1 or target.is_dir() or target.suffix != ".npz":
                target = target / f"{Path(str(item)).stem}.npz"
            row["saved"] = str(duotpu.save_outputs(out, target))
        results.append(row)
    return results


def _print_generic(con, results: list[dict], key: str, where: str) -> None:
    from rich.table import Table

    for r in results:
        t = Table(title=f"{r[key]} ({where})", title_justify="left")
        for col in ("output", "shape", "min", "max", "mean", "cos vs fp32"):
            t.add_column(col, justify="left" if col == "output" else "right")
        for o in r["outputs"]:
            cos = o.get("cosine_vs_fp32")
            t.add_row(
                o["name"],
                "×".join(map(str, o["shape"])),
                f"{o['min']:.4g}",
                f"{o['max']:.4g}",
                f"{o['mean']:.4g}",
                f"{cos:.4f}" if cos is not None else "—",
            )
        con.print(t)
        if "saved" in r:
            con.print(f"outputs: {r['saved']}")


def _add_detect_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--save",
        metavar="OUT|DIR",
        help="detectors: draw the boxes on the image (OUT.jpg); generic models: the outputs "
        "as OUT.npz (a folder for several inputs)",
    )
    p.add_argument(
        "--conf",
        type=float,
        help="detectors: lowest score kept (default: the recipe's detect.conf)",
    )
    p.add_argument("--iou", type=float, help="detectors: NMS overlap (default: detect.iou)")
