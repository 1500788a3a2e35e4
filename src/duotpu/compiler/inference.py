"""Running models with tpu_mlir's tools: the CV18xx simulator on a cvimodel, tpu_mlir's
interpreter on an MLIR file (the fast path), in parallel worker processes; the op graph of an
MLIR file; the raw input of a fused-preprocess model. Every process goes through the runner.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from duotpu.config.errors import ToolchainError

from .env import tool_env
from .runner import _kill_group, finish, log_tail, run_argv, run_tool, spawn


def fused_input_file(
    top_mlir: Path, image: Path, fmt: str, aligned: bool, chip: str, out: Path, log_path: Path
) -> Path:
    """The raw input of a fused-preprocess model for ``image`` (an npz), made by tpu_mlir's own
    preprocessing from the settings stored in the top MLIR: resize and crop, then ``fmt``
    (YUV420_PLANAR, YUV_NV21, … included), rows aligned as the VPSS delivers them if
    ``aligned``."""
    cmd, env = _worker(
        [
            "--backend",
            "mlir",
            "--model",
            str(Path(top_mlir).resolve()),
            "--fused-input",
            str(Path(image).resolve()),
            fmt,
            "1" if aligned else "0",
            chip,
            str(Path(out).resolve()),
        ]
    )
    with open(log_path, "a") as log:
        log.write(f"\n[duotpu] raw {fmt} input for {image} by tpu_mlir's preprocessing\n")
    run_argv(f"make the {fmt} input", cmd, Path(out).parent, log_path, env, append=True)
    return Path(out)


def run_cvimodel(cvimodel: Path, inputs_npz: Path, outputs_npz: Path, log_path: Path) -> Path:
    """Run a cvimodel on the CV18xx cmodel simulator (``model_runner``)."""
    args = [
        "--model",
        str(Path(cvimodel).resolve()),
        "--input",
        str(Path(inputs_npz).resolve()),
        "--output",
        str(Path(outputs_npz).resolve()),
    ]
    run_tool("simulate", "model_runner", args, Path(outputs_npz).parent, log_path)
    return Path(outputs_npz)


def _worker(
    args: list[str], env_extra: dict[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of duotpu's worker inside tpu_mlir's environment."""
    env = tool_env(env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env["PYTHONPATH"]])
    return [sys.executable, "-m", "duotpu.compiler.worker", *args], env


def run_many(
    backend: str,
    model: Path,
    jobs: list[tuple[Path, Path]],
    folder: Path,
    output_names: list[str],
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    program: int = 0,
) -> list[Path]:
    """Run many input npz files through one model, in ``workers`` parallel processes.

    ``backend``: ``cvimodel`` (the CV18xx simulator) or ``mlir`` (tpu_mlir's interpreter on a
    quantized ``*_tpu.mlir``, run in that file's folder since it names its weights relatively).
    Each job is (input npz, output npz); outputs keep only ``output_names``. ``progress(n)`` is
    called with the number of finished jobs.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers, len(jobs)))
    per = math.ceil(len(jobs) / workers) if jobs else 0
    procs = []
    model = Path(model).resolve()
    cwd = model.parent
    for w in range(workers):
        chunk = jobs[w * per : (w + 1) * per]
        if not chunk:
            continue
        jobfile = folder / f"jobs-{program}-{w}.txt"
        jobfile.write_text("".join(f"{Path(a).resolve()}\t{Path(b).resolve()}\n" for a, b in chunk))
        log = folder / f"{backend}-{program}-worker-{w}.log"
        argv, env = _worker(
            [
                "--backend",
                backend,
                "--model",
                str(model),
                "--jobs",
                str(jobfile),
                "--outputs",
                ",".join(output_names),
                "--program",
                str(program),
            ],
            {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // workers))},
        )
        fh = open(log, "w")
        procs.append(
            (spawn(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT), fh, log, argv)
        )
    outs = [Path(b) for _, b in jobs]
    codes = []
    try:
        while any(p.poll() is None for p, *_ in procs):
            if progress:
                progress(sum(o.exists() for o in outs))
            time.sleep(0.2)
    finally:
        for p, fh, *_ in procs:
            if p.poll() is None:
                _kill_group(p, signal.SIGKILL)
            codes.append(finish(p))
            fh.close()
    if progress:
        progress(sum(o.exists() for o in outs))
    for rc, (_, _, log, argv) in zip(codes, procs):
        if rc:
            raise ToolchainError(f"{backend} inference", argv, rc, log, log_tail(log))
    return outs


def mlir_graph(mlir: Path, log_path: Path) -> dict[str, dict]:
    """The ops of an MLIR file with their types and input ops (tpu_mlir's MlirParser)."""
    argv, env = _worker(["--backend", "mlir", "--model", str(Path(mlir).resolve()), "--graph"])
    out = Path(log_path).with_name(Path(log_path).name + ".json")
    run_argv(
        "read the MLIR graph",
        [*argv, "--graph-out", str(out.resolve())],
        Path(mlir).parent,
        log_path,
        env,
    )
    return json.loads(out.read_text())


def run_tensors(
    backend: str,
    target: Path,
    input_name: str,
    tensors: Sequence[np.ndarray | Mapping[str, np.ndarray]],
    names: list[str],
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    program: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Run input tensors through a cvimodel (``backend="cvimodel"``) or an MLIR file (``mlir``)
    with tpu_mlir's tools; per input, the tensors named in ``names`` (every tensor if empty).
    An item is the one input's array (named ``input_name``) or, for a model of several inputs,
    every input's array by name."""
    workers = workers or min(os.cpu_count() or 1, 2)
    with tempfile.TemporaryDirectory(prefix="duotpu-infer-") as tmpdir:
        tmp = Path(tmpdir)
        jobs = []
        for i, x in enumerate(tensors):
            src = tmp / f"in{i:05d}.npz"
            np.savez(src, **(dict(x) if isinstance(x, Mapping) else {input_name: x}))
            jobs.append((src, tmp / f"out{i:05d}.npz"))
        outs = run_many(backend, target, jobs, tmp / "work", names, workers, progress, program)
        results = []
        for o in outs:
            with np.load(o) as z:
                results.append({k: np.array(z[k]) for k in z.files})
    return results
