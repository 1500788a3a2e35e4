"""`make bench`: rerun, one after another, the benchmarks that fit in about 30 minutes on 2 cores,
then name the others with the time their last run took (each results file ends with a stamp
that says it: bench/_report.py). `--all` runs every one (hours); `--only NAME,...` some.

eval.py, scale.py and fidelity.py need the demo build (`make demo`); it is made first when
missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _report import recorded_seconds  # noqa: E402


@dataclass(frozen=True)
class Job:
    """One benchmark run: a script, its arguments and the results file it writes."""

    script: str
    result: str
    args: list[str] = field(default_factory=list)
    quick: bool = False  # in `make bench`'s set (about 30 minutes in all on 2 cores)
    first: str = ""  # a script that makes what this one needs (cached by it)


JOBS = [
    Job("build.py", "build.md", quick=True),
    Job("eval.py", "eval.md", quick=True),
    Job("app.py", "app.md", quick=True),
    Job("scale.py", "scale.md", ["--eval-build", "build/efficientnet_lite0"], quick=True),
    Job("latency.py", "latency.md", quick=True),
    Job("startup.py", "startup.md", quick=True),
    Job("fidelity.py", "fidelity.md"),
    Job("rounding.py", "rounding.md"),
    Job("calibration.py", "calibration.md"),
    Job("calibration.py", "calibration_dbnet_lite_640.md", ["--zoo", "dbnet_lite_640"]),
    Job("mix.py", "mix.md"),
    Job("mix.py", "mix_099.md", ["--target", "agree>=0.99", "--out", "bench/results/mix_099.md"]),
    Job(
        "mix.py",
        "mix_mnv3.md",
        [
            "--recipe",
            "build/bench-mix/mnv3_photos.toml",
            "--target",
            "cos>=0.999",
            "--held-out",
            "300",
            "--out",
            "bench/results/mix_mnv3.md",
        ],
        first="mnv3_photos.py",
    ),
    Job("mix_time.py", "mix_time.md", ["--before", "e6ea0f3^"]),
    Job("detect.py", "detect.md"),
    Job("zoo.py", "zoo_cv180x.md", ["--force"]),
    Job(
        "zoo.py",
        "zoo_cv180x_optimized.md",
        ["--rounding", "optimized", "--only", "efficientvit_b0,repvit_m0_9", "--force"],
    ),
]


def _label(job: Job) -> str:
    return f"bench/{job.script} {' '.join(job.args)}".strip()


def _recorded(job: Job) -> str:
    s = recorded_seconds(HERE / "results" / job.result)
    return f"{s / 60:.0f} min" if s is not None else "not timed yet (its results predate the stamp)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every benchmark (hours on 2 cores)")
    ap.add_argument("--only", default="", help="comma-separated results files, e.g. build.md")
    args = ap.parse_args()
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    chosen = [j for j in JOBS if (j.result in only if only else (args.all or j.quick))]
    if only - {j.result for j in JOBS}:
        sys.exit(f"unknown results file(s): {', '.join(sorted(only - {j.result for j in JOBS}))}")
    if any(j.script in ("eval.py", "scale.py", "fidelity.py") for j in chosen) and not (
        Path("build/efficientnet_lite0/manifest.json").is_file()
    ):
        print(
            "eval.py, scale.py and fidelity.py need the demo build: running `duotpu demo` first",
            flush=True,
        )
        subprocess.run([str(Path(sys.executable).parent / "duotpu"), "demo"], check=True)
    t_all = time.monotonic()
    failed = []
    for i, job in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {_label(job)} (last run: {_recorded(job)})", flush=True)
        t0 = time.monotonic()
        rc = 0
        if job.first:
            rc = subprocess.run([sys.executable, str(HERE / job.first)]).returncode
        if rc == 0:
            argv = [sys.executable, str(HERE / job.script), *job.args]
            rc = subprocess.run(argv).returncode
        print(f"[{i}/{len(chosen)}] {_label(job)}: exit {rc} after {time.monotonic() - t0:.0f} s")
        if rc:
            failed.append(job)
    print(
        f"\n{len(chosen) - len(failed)} of {len(chosen)} benchmarks rerun in "
        f"{(time.monotonic() - t_all) / 60:.1f} min."
    )
    rest = [j for j in JOBS if j not in chosen]
    if rest:
        print(
            "Not rerun (run one with `.venv/bin/python bench/NAME.py`, all with "
            "`bench/run.py --all`):"
        )
        for job in rest:
            print(f"  {_label(job):60s} {_recorded(job)}")
    for job in failed:
        print(f"FAILED: {_label(job)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
