"""Shared by the benchmarks: print a result table and save it, stamped with the run's time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

#: the stamp's form: `make bench` (bench/run.py) reads the seconds back
STAMP = re.compile(
    r"^_Written by `bench/(?P<script>[\w.]+)` after (?P<s>\d+) s on (?P<cores>\d+) cores"
)


def checkout_commit(code: Sequence[str] = ()) -> str:
    """The checkout's commit, short, with "+changes" when the code the running script measured
    (``src`` and the script) differs from it ("" outside git).
    ``code``: git pathspecs of the code a result depends on — then the last commit that changed
    them, so that commits of other files (docs, other benchmarks) made during a long run do not
    make its rows look measured on different code."""
    git = ["git", "-C", str(Path(__file__).parent)]
    ask = (
        [*git, "log", "-1", "--format=%h", "--", *code]
        if code
        else [*git, "rev-parse", "--short", "HEAD"]
    )
    head = subprocess.run(ask, capture_output=True, text=True)
    if head.returncode:
        return ""
    dirty = subprocess.run(
        [
            *git,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            *(code or (":/src", f":/bench/{Path(sys.argv[0]).name}", ":/bench/_report.py")),
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return head.stdout.strip() + ("+changes" if dirty else "")


def emit(lines: list[str], out: str | Path, echo: bool = True, seconds: float | None = None) -> str:
    """Print the lines (unless not ``echo``) and write them to ``out``, with a last line that
    names the script, the seconds it has run so far (the whole run, for a script that writes
    once at its end; a script that writes as rows finish stamps each write), the day and the
    commit of the code it measured. ``seconds``: what a whole run takes, for a script that
    keeps finished rows and reruns only some (bench/zoo.py: the sum of its rows' times)."""
    script = Path(sys.argv[0]).name
    if seconds is None:
        seconds = time.time() - psutil.Process().create_time()
    cores = os.cpu_count() or 1
    day = time.strftime("%Y-%m-%d")
    commit = checkout_commit()
    at = f", commit {commit}" if commit else ""
    stamp = f"_Written by `bench/{script}` after {seconds:.0f} s on {cores} cores, {day}{at}._"
    text = "\n".join(lines) + "\n\n" + stamp + "\n"
    if echo:
        print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_name(Path(out).name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return text


def recorded_seconds(result: Path) -> int | None:
    """The seconds the run that wrote ``result`` took, from its stamp (None: not stamped)."""
    if not result.is_file():
        return None
    for line in reversed(result.read_text().splitlines()):
        m = STAMP.match(line)
        if m:
            return int(m["s"])
    return None
