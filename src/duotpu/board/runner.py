"""Running models with the SDK's ``model_runner``: runs, benchmarks (timer and PMU lines), and
the runtime's errors in plain words."""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from duotpu.config.errors import BoardError
from duotpu.onboard.cvi import RETURN_CODES

from .ssh import Board, RemoteResult
from .sync import push_model, remote_model_path

# model_runner
# --------------------------------------------------------------------------------------------
_RUNTIME_ERRORS = [
    (
        r"cvimodel\((\S+)\) is not supported in runtime\((\S+)\)",
        "The board's runtime is older than the model's format; update the SDK on the board or "
        "rebuild with an older model_version.",
    ),
    (
        r"CANNOT run on platform",
        "The model was built for another chip; rebuild with the board's chip (--chip).",
    ),
    (
        r"alloc memory for weight failed|failed to alloc (private|shared) gmem"
        r"|failed to alloc io mem",
        "The board ran out of ION memory for this model; use a smaller input, INT8 instead of "
        "BF16, or an image with a bigger ION carveout.",
    ),
    (
        r"0xc0010102",
        "The runtime could not open the model (0xc0010102): usually a model from a "
        "newer compiler than the board's runtime; update the SDK on the board.",
    ),
]


def explain_runtime_failure(text: str) -> str:
    """Plain words for a known model_runner failure, or ''. The runtime's return codes are
    the board app's table (`duotpu.onboard.cvi.RETURN_CODES`): one table for both."""
    for pattern, advice in _RUNTIME_ERRORS:
        if re.search(pattern, text):
            return advice
    for code in re.findall(r"0x[0-9a-fA-F]{8}", text):
        words = RETURN_CODES.get(int(code, 16))
        if words:
            return f"The runtime returned {code.lower()}: {words}."
    return ""


@dataclass
class BenchResult:
    """Latency of a model on the board."""

    runs: int
    mean_ms: float
    fps: float
    inference_ms: list[float]
    tdma_ms: list[float]
    tiu_ms: list[float]
    median_ms: float
    p90_ms: float

    @property
    def tpu_split(self) -> str:
        if not self.tdma_ms:
            return ""
        return (
            f"TDMA (memory) {statistics.median(self.tdma_ms):.2f} ms, TIU (compute) "
            f"{statistics.median(self.tiu_ms):.2f} ms per subgraph run"
        )


def parse_timer(text: str) -> tuple[int, float, float] | None:
    """``Performance result: N runs take T ms, each run takes X ms, fps F``."""
    m = re.search(
        r"Performance result:\s*(\d+)\s*runs take\s*([\d.]+)\s*ms,\s*each run takes\s*"
        r"([\d.]+)\s*ms,\s*fps\s*([\d.]+)",
        text,
    )
    return (int(m.group(1)), float(m.group(3)), float(m.group(4))) if m else None


def parse_pmu(text: str) -> list[tuple[float, float, float]]:
    """(tdma_ms, tiu_ms, inference_ms) of every PMU block printed with TPU_ENABLE_PMU=1."""
    return [
        (float(a), float(b), float(c))
        for a, b, c in re.findall(
            r"tdma_exe_ms:\s*([\d.]+)ms,\s*tiu_exe_ms:\s*([\d.]+)ms,\s*inference_ms:\s*([\d.]+)ms",
            text,
        )
    ]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _failure(r: RemoteResult, what: str) -> BoardError:
    text = r.stdout + "\n" + r.stderr
    tail = "\n".join([ln for ln in text.splitlines() if ln.strip()][-12:])
    advice = explain_runtime_failure(text)
    return BoardError(
        f"{what} failed on the board (exit code {r.returncode}). "
        + (advice + " " if advice else "")
        + f"Last lines of its output:\n{tail}"
    )


class RunFolder:
    """A fresh folder under the work folder for one run, removed afterwards."""

    def __init__(self, b: Board):
        self.b = b
        self.path = posixpath.join(b.profile.work_dir, f"run-{os.getpid()}-{time.time_ns()}")

    def __enter__(self) -> str:
        self.b.run(f"mkdir -p {shlex.quote(self.path)}")
        return self.path

    def __exit__(self, *exc) -> None:
        try:
            self.b.run(f"rm -rf {shlex.quote(self.path)}")
        except Exception:  # cleaning up must not hide the real error
            pass


def to_float_outputs(outputs: dict, info) -> dict:
    """The board's output npz as fp32: int8 outputs are dequantized with their qscale, bf16
    outputs (stored as uint16) widened."""
    import numpy as np

    out = {}
    tensors = {t.name: t for p in info.programs for t in p.outputs}
    for name, v in outputs.items():
        t = tensors.get(name)
        v = np.asarray(v)
        if v.dtype == np.uint16 or (t is not None and t.dtype == "bf16"):
            v = (v.astype(np.uint32) << 16).view(np.float32)
        elif v.dtype in (np.int8, np.uint8) and t is not None and t.qscale:
            v = (v.astype(np.float32) - t.zero_point) * np.float32(t.qscale)
        out[name] = v.astype(np.float32)
    return out


def run_model(
    b: Board, cvimodel: Path, info, tensors: list, input_name: str, program: int = 0
) -> list[dict]:
    """Run input tensors through the model with the SDK's model_runner; fp32 outputs back. An
    item is the one input's array, or (a model of several inputs) the arrays by input name."""
    import tempfile

    import numpy as np

    push_model(b, cvimodel)
    model = remote_model_path(b, cvimodel)
    takes = {t.name for t in info.programs[program].inputs}
    results = []
    with RunFolder(b) as rdir, tempfile.TemporaryDirectory() as tmp:
        for i, x in enumerate(tensors):
            local_in = Path(tmp) / f"in{i}.npz"
            # the model's own inputs (a cut model's tail may read more of the sample)
            feed = {k: v for k, v in x.items() if k in takes} if isinstance(x, dict) else None
            np.savez(local_in, **(feed or {input_name: x}))
            rin, rout = posixpath.join(rdir, f"in{i}.npz"), posixpath.join(rdir, f"out{i}.npz")
            b.put(local_in, rin)
            cmd = (
                f"model_runner -m {shlex.quote(model)} -i {shlex.quote(rin)} "
                f"-o {shlex.quote(rout)}" + (f" -s {program}" if program else "")
            )
            r = b.run(b.sdk_command(cmd))
            if r.returncode != 0:
                raise _failure(r, "model_runner")
            local_out = b.get(rout, Path(tmp) / f"out{i}.npz")
            with np.load(local_out) as z:
                results.append(to_float_outputs({k: z[k] for k in z.files}, info))
    return results


def bench(b: Board, cvimodel: Path, tensor, input_name: str, count: int = 50) -> BenchResult:
    """Latency with ``model_runner --enable-timer -c COUNT`` and, with ``TPU_ENABLE_PMU=1``,
    the TPU's own counters per run (median, p90, TDMA/TIU split)."""
    import tempfile

    import numpy as np

    push_model(b, cvimodel)
    model = remote_model_path(b, cvimodel)
    with RunFolder(b) as rdir, tempfile.TemporaryDirectory() as tmp:
        local_in = Path(tmp) / "in.npz"
        np.savez(local_in, **{input_name: tensor})
        rin = posixpath.join(rdir, "in.npz")
        b.put(local_in, rin)
        cmd = (
            f"model_runner -m {shlex.quote(model)} -i {shlex.quote(rin)} -c {int(count)} "
            "--enable-timer"
        )
        r = b.run(b.sdk_command(cmd), env={"TPU_ENABLE_PMU": "1"})
        if r.returncode != 0:
            raise _failure(r, "model_runner --enable-timer")
    text = r.stdout + r.stderr
    timer = parse_timer(text)
    if timer is None:
        raise BoardError("model_runner printed no 'Performance result' line:\n" + text[-800:])
    runs, mean_ms, fps = timer
    blocks = parse_pmu(text)
    per_run, tdma, tiu = [], [], []
    if blocks and len(blocks) % runs == 0:
        k = len(blocks) // runs  # several TPU subgraphs per run when CPU ops split the model
        for i in range(runs):
            chunk = blocks[i * k : (i + 1) * k]
            per_run.append(sum(c[2] for c in chunk))
            tdma.append(sum(c[0] for c in chunk))
            tiu.append(sum(c[1] for c in chunk))
    dist = per_run or [mean_ms]
    return BenchResult(
        runs, mean_ms, fps, per_run, tdma, tiu, statistics.median(dist), percentile(dist, 0.9)
    )
