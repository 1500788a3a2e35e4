"""How long a cvimodel takes on the board's TPU, estimated from its command buffers.

Every TIU command is costed in cycles from its kind and shape (the structure of tpu-mlir's
CV18xx cycle model, ``lib/Backend/CV18xx/CV18xx_profiling.cpp``: lanes × EU lanes in parallel, a
loop over the kernel and input channels per output position, fixed per-command latencies), every
TDMA command from the DRAM bytes it moves (64-byte granules, each row or plane a burst) and the
local-memory cycles it takes. Unlike tpu-mlir's model, which adds TIU and TDMA time, the two
engines run side by side here: each command starts when its engine is free and the command of the
other engine it waits for (its ``cmd_id`` dependency) is done.

The constants of each chip live in `CHIPS`, with their sources; ``board bench --calibrate``
fits the DDR bandwidth and the per-command overheads of a user's board and stores them in its
profile (see `estimate`'s ``constants``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from duotpu.config import chips
from duotpu.cvimodel import read_cvimodel
from duotpu.cvimodel.cmdbuf import Routine, TdmaCommand, TiuCommand, routines

#: TPU lanes (NPU_NUM) per chip and local memory per lane: the chip table's
LANES = {name: c.lanes for name, c in chips.CHIPS.items()}
LOCAL_MEMORY_KB = chips.LOCAL_MEMORY_KB


@dataclass(frozen=True)
class ChipConstants:
    """The numbers the estimate uses for one chip."""

    chip: str
    lanes: int  # NPU_NUM (cvikernel cv18xx_tpu_cfg.h)
    eu_bytes: int  # EU_NUM: INT8 elements per lane per cycle (BF16: half)
    clock_mhz: float  # TPU clock (tpu-mlir's profiling code; the board's PMU line)
    ddr_bytes_per_cycle: float  # sustained DRAM bytes per TPU cycle
    tdma_overhead: float  # cycles per TDMA command (descriptor fetch, DRAM latency)
    tiu_overhead: float  # cycles per TIU command beyond its compute
    # how much faster a conv with double_conv = 1 (two input channels per cycle) runs: 2 in
    # tpu-mlir's cycle model; fitted per chip on published times (see CHIPS)
    double_conv_gain: float = 1.0
    double_conv_gain_1x1: float = 1.5
    tiu_scale: float = 1.0  # a board's measured compute time over the model's (fitted)
    lmem_bytes_per_cycle: int = 16  # local memory width (LOCAL_MEM_WIDTH)
    sources: str = ""


#: Per chip. Lanes, EU width and clock come from the chip headers and tpu-mlir; the DDR bandwidth
#: and how much ``double_conv`` speeds a convolution up are fitted per chip (``bench/latency.py
#: --fit``) on the published times of resnet18, mobilenet_v2, squeezenet_v1.1 and
#: efficientnet-lite_b0 (latency-facts.md), and refitted per board by ``duotpu board bench
#: --calibrate``. The published cv181x times are ~1.8× faster per lane than cv180x's: a faster
#: clock or a working double_conv on cv181x, which the fit cannot tell apart.
CHIPS: dict[str, ChipConstants] = {
    "cv180x": ChipConstants(
        "cv180x",
        lanes=LANES["cv180x"],
        eu_bytes=16,
        clock_mhz=500.0,
        ddr_bytes_per_cycle=6.0,
        tdma_overhead=60.0,
        tiu_overhead=20.0,
        double_conv_gain=1.0,
        double_conv_gain_1x1=1.2,
        sources="lanes/EU: cvikernel cv180x_tpu_cfg.h; clock: tpu-mlir CV18xx_profiling.cpp; "
        "DDR and double_conv gains: `bench/latency.py --fit` on the 4 published cv180x rows",
    ),
    "cv181x": ChipConstants(
        "cv181x",
        lanes=LANES["cv181x"],
        eu_bytes=16,
        clock_mhz=500.0,
        ddr_bytes_per_cycle=8.0,
        tdma_overhead=60.0,
        tiu_overhead=20.0,
        double_conv_gain=1.7,
        double_conv_gain_1x1=1.7,
        sources="lanes/EU: cvikernel cv181x_tpu_cfg.h; clock: tpu-mlir CV18xx_profiling.cpp; "
        "DDR and double_conv gains: `bench/latency.py --fit` on the cv181x rows of the same 4 "
        "models (the other published cv181x rows check it)",
    ),
}

_ELTWISE = {  # cycles per EU step, (INT8, BF16): tpu-mlir's element-wise latencies
    "mul": (5.5, 4.5),
    "mac": (9, 11),
    "add": (5, 7),
    "sub": (5, 7),
    "max": (3, 5),
    "min": (3, 5),
    "shift": (4, 4),
    "and": (3, 5),
    "or": (3, 5),
    "xor": (3, 5),
    "copy": (2, 4),
    "ge": (3, 5),
}


def tiu_cycles(t: TiuCommand, k: ChipConstants) -> float:
    """Cycles of one TIU command."""
    eu = k.eu_bytes // 2 if t.bf16 else k.eu_bytes
    n, c, h, w = t.out
    lanes_used = math.ceil((t.lane_start + c) / k.lanes)
    spatial = math.ceil(h * w / eu) if h * w else 0
    kh, kw = t.kernel
    shift = 2 if t.bf16 else (1 if t.per_channel else 4)
    bias = 2 if t.operands == 3 and not t.per_channel else 0
    psum = {0: 0, 1: 4, 2: 4}.get(t.ps32, 8)
    post = 31 if t.per_channel else 12
    if t.kind == "conv":
        ic = t.inp[1]
        gain = k.double_conv_gain_1x1 if kh * kw == 1 else k.double_conv_gain
        per_cycle = gain if t.double_conv and not t.bf16 else 1.0
        fetch = math.ceil(((k.eu_bytes - 1) * t.stride[1] / (t.x_insert + 1) + 1) / k.eu_bytes) + 1
        bubble = kh * kw * (fetch - ic) if fetch > ic else 0
        loop = kh * kw * math.ceil(ic / per_cycle) + bubble + bias + shift + psum
        if t.per_channel and not t.bf16:
            loop = max(loop, k.eu_bytes)
        return 41 + n * lanes_used * spatial * loop + post
    if t.kind in ("depthwise", "avg_pool", "max_pool", "min_pool"):
        ow = float(min(w, k.eu_bytes) if w else 1)
        rows = 1 if w >= k.eu_bytes else k.eu_bytes / max(w, 1)
        misc = ((ow - 1) * t.stride[1] / (t.x_insert + 1) + 1) / k.eu_bytes * rows
        misc += (k.eu_bytes - 1) / k.eu_bytes
        misc = 1.0 if kh * kw == 1 or h * w == 1 else max(misc, 1.0)
        steps = kh * kw * misc
        if t.kind in ("max_pool", "min_pool"):
            return n * lanes_used * spatial * (steps + 2)
        if t.per_channel:
            steps = max(steps, float(k.eu_bytes))
        return n * lanes_used * spatial * (steps + bias + 3) + post
    if t.kind == "matmul":
        rows = math.ceil(c / k.lanes)
        return 41 + n * rows * math.ceil(w / eu) * (kh + bias + shift + psum) + post
    if t.kind == "lut":
        return n * lanes_used * spatial * (3 + t.kernel[0]) + 26 + post
    lat8, lat16 = _ELTWISE.get(t.kind, (4, 6))
    return n * lanes_used * spatial * (lat16 if t.bf16 else lat8) + 26 + post


def _dram_bytes(
    dram_shape: tuple[int, int, int, int],
    stride: tuple[int, int, int],
    esize: int,
    total: int,
) -> int:
    """DRAM bytes a transfer of ``total`` bytes touches: 64-byte granules of every contiguous
    run, the runs read off the DRAM side's shape and strides (a row of W elements; rows
    contiguous when the h-stride is a row; planes when the c-stride is a plane — a matrix load
    is C rows of W with a c-stride of one row)."""
    _, c, h, w = (max(v, 1) for v in dram_shape)
    ns, cs, hs = stride
    # strides count bytes, except in BF16 transfers, whose descriptors count elements
    run = w
    if h == 1 or hs in (run, run * esize):
        run *= h
        if cs in (run, run * esize):
            run *= c
    run *= esize
    run = max(min(run, total), 1)
    runs = math.ceil(total / run)
    return runs * (math.ceil(run / 64) * 64 + (32 if run % 64 else 0))


def tdma_cycles(t: TdmaCommand, k: ChipConstants) -> float:
    """Cycles of one TDMA command: the larger of its DRAM and local-memory time. The element
    count is the local side's (DRAM-side shapes are views with their own strides); DRAM is
    read or written in 64-byte granules per contiguous run."""
    local = t.dst if t.direction in ("load", "local") else t.src
    n, c, h, w = (max(v, 1) for v in local)
    sram = n * c * math.ceil(h * w * t.element_bytes / k.lmem_bytes_per_cycle)
    total = n * c * h * w * t.element_bytes
    if t.direction == "local" or (t.direction == "load" and t.special == 4):
        dram = 0
    elif t.direction == "load":
        dram = _dram_bytes(t.src, t.src_stride, t.element_bytes, total)
    elif t.direction == "store":
        dram = _dram_bytes(t.dst, t.dst_stride, t.element_bytes, total)
    else:
        total = max(1, math.prod(max(v, 1) for v in t.src)) * t.element_bytes
        dram = _dram_bytes(t.src, t.src_stride, t.element_bytes, total)
        dram += _dram_bytes(t.dst, t.dst_stride, t.element_bytes, total)
    return max(dram / k.ddr_bytes_per_cycle, sram) + k.tdma_overhead


@dataclass(frozen=True)
class LayerTime:
    """The commands of one compiler layer (by id) and their busy time."""

    layer: int
    tiu_ms: float
    tdma_ms: float
    macs: int


@dataclass(frozen=True)
class Estimate:
    """A cvimodel's estimated time on the board's TPU for one inference (batch of its input)."""

    chip: str
    ms: float  # wall time of the TPU routines, TIU and TDMA overlapped
    tiu_ms: float  # busy time of the compute engine
    tdma_ms: float  # busy time of the memory engine
    macs: int
    peak_gmacs: float
    routines: int
    cpu_routines: int
    layers: tuple[LayerTime, ...] = field(repr=False, default=())
    constants: ChipConstants | None = field(repr=False, default=None)

    @property
    def fps(self) -> float:
        return 1000.0 / self.ms if self.ms > 0 else 0.0

    @property
    def bound(self) -> str:
        """``compute`` when the TIU is the busier engine, else ``memory``."""
        return "compute" if self.tiu_ms >= self.tdma_ms else "memory"

    @property
    def mac_utilization(self) -> float:
        """MACs done per second against the chip's INT8 peak (lanes × EU × 2 per cycle)."""
        return self.macs / (self.ms * 1e-3) / (self.peak_gmacs * 1e9) if self.ms > 0 else 0.0

    def top_layers(self, n: int = 10) -> list[LayerTime]:
        """The layers with the most busy time (TIU + TDMA)."""
        return sorted(self.layers, key=lambda lt: lt.tiu_ms + lt.tdma_ms, reverse=True)[:n]


def simulate(r: Routine, k: ChipConstants) -> tuple[float, float, float, dict[int, list[float]]]:
    """(wall, TIU busy, TDMA busy) cycles of one routine, the engines overlapped as their
    dependencies allow, and per layer id [TIU cycles, TDMA cycles]."""
    tiu_end: dict[int, float] = {}
    tdma_end: dict[int, float] = {}
    free = {0: 0.0, 2: 0.0}
    busy = {0: 0.0, 2: 0.0}
    per_layer: dict[int, list[float]] = {}
    order = r.order or tuple(
        [(0, i) for i in range(len(r.tiu))] + [(2, i) for i in range(len(r.tdma))]
    )
    for engine, i in order:
        if engine == 0:
            t = r.tiu[i]
            cyc = tiu_cycles(t, k) * k.tiu_scale + k.tiu_overhead
            ready = tdma_end.get(t.wait_tdma, 0.0) if t.wait_tdma else 0.0
            start = max(free[0], ready)
            free[0] = start + cyc
            tiu_end[t.cmd_id] = free[0]
            per_layer.setdefault(t.layer, [0.0, 0.0])[0] += cyc
        else:
            d = r.tdma[i]
            cyc = tdma_cycles(d, k)
            ready = tiu_end.get(d.wait_tiu, 0.0) if d.wait_tiu else 0.0
            start = max(free[2], ready)
            free[2] = start + cyc
            tdma_end[d.cmd_id] = free[2]
            per_layer.setdefault(d.layer, [0.0, 0.0])[1] += cyc
        busy[engine] += cyc
    return max(free.values()), busy[0], busy[2], per_layer


def estimate(path: str | Path, constants: ChipConstants | None = None) -> Estimate:
    """The estimated board time of a cvimodel's first program (its TPU routines; CPU routines
    are counted, not timed). ``constants``: a board's fitted constants, else the chip's."""
    info = read_cvimodel(path)
    rs = routines(path, info)
    chip = rs[0].chip if rs else info.chip
    k = constants or constants_for(chip)
    wall = tiu = tdma = 0.0
    macs = 0
    layers: dict[int, list[float]] = {}
    for r in rs:
        w, a, b, per = simulate(r, k)
        wall, tiu, tdma = wall + w, tiu + a, tdma + b
        macs += sum(t.macs for t in r.tiu if t.kind in ("conv", "depthwise", "matmul"))
        for lid, (x, y) in per.items():
            acc = layers.setdefault(lid, [0.0, 0.0, 0.0])
            acc[0] += x
            acc[1] += y
        for t in r.tiu:
            if t.kind in ("conv", "depthwise", "matmul"):
                layers[t.layer][2] += t.macs
    to_ms = 1e-3 / k.clock_mhz
    cpu = sum(1 for p in info.programs[:1] for name in p.routines if name == "cpu")
    return Estimate(
        chip=chip,
        ms=wall * to_ms,
        tiu_ms=tiu * to_ms,
        tdma_ms=tdma * to_ms,
        macs=macs,
        peak_gmacs=k.lanes * k.eu_bytes * 2 * k.clock_mhz / 1000,
        routines=len(rs),
        cpu_routines=cpu,
        layers=tuple(
            LayerTime(lid, v[0] * to_ms, v[1] * to_ms, int(v[2])) for lid, v in layers.items()
        ),
        constants=k,
    )


def layer_names(tensor_info: Path | None) -> dict[int, str]:
    """Layer id → the compiler's tensor name, from the ``*_tensor_info.txt`` model_deploy writes
    beside the cvimodel (empty when the file is not there)."""
    names: dict[int, str] = {}
    if tensor_info is None or not Path(tensor_info).is_file():
        return names
    for line in Path(tensor_info).read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names.setdefault(int(parts[0]), parts[1])
    return names


def as_dict(e: Estimate, names: dict[int, str] | None = None, top: int = 10) -> dict:
    """The estimate as plain data (``info --json``, ``predict --json``)."""
    return {
        "chip": e.chip,
        "ms": round(e.ms, 3),
        "fps": round(e.fps, 2),
        "tiu_ms": round(e.tiu_ms, 3),
        "tdma_ms": round(e.tdma_ms, 3),
        "bound": e.bound,
        "gmac": round(e.macs / 1e9, 4),
        "mac_utilization": round(e.mac_utilization, 4),
        "peak_gmac_per_s": e.peak_gmacs,
        "cpu_routines": e.cpu_routines,
        "top_layers": [
            {
                "layer": lt.layer,
                "name": (names or {}).get(lt.layer, ""),
                "tiu_ms": round(lt.tiu_ms, 3),
                "tdma_ms": round(lt.tdma_ms, 3),
                "macs": lt.macs,
            }
            for lt in e.top_layers(top)
        ],
    }


#: the constants a board profile may override (fitted by ``board bench --calibrate``)
FITTED = ("tiu_scale", "ddr_bytes_per_cycle", "tdma_overhead")


def constants_for(chip: str, overrides: dict[str, float] | None = None) -> ChipConstants:
    """The chip's constants with a board's fitted values (zero or missing: the chip's)."""
    k = CHIPS.get(chip) or replace(
        CHIPS["cv181x"],
        chip=chip,
        lanes=LANES.get(chip, CHIPS["cv181x"].lanes),
        sources=f"not fitted for {chip}: cv181x's fitted constants with {chip}'s lane count",
    )
    given: dict[str, Any] = {n: float(v) for n, v in (overrides or {}).items() if n in FITTED and v}
    return replace(k, **given) if given else k


@dataclass(frozen=True)
class Measured:
    """One model's times on a board: the PMU's busy times of the two engines, per inference."""

    cvimodel: Path
    tiu_ms: float
    tdma_ms: float


def fit(measured: list[Measured], chip: str) -> dict[str, float]:
    """Constants that make the estimate match a board's measurements: the TIU scale from the
    compute times (least squares through 0), the DDR bandwidth and per-command TDMA overhead
    from the memory times (a grid search on the relative error; with one model only the
    bandwidth is fitted, the overhead stays the chip's)."""
    import numpy as np

    base = constants_for(chip)
    rs = [routines(m.cvimodel) for m in measured]
    one = replace(base, tiu_scale=1.0, tiu_overhead=0.0)
    tiu_est = np.array([sum(simulate(r, one)[1] for r in x) / base.clock_mhz / 1e3 for x in rs])
    tiu_meas = np.array([m.tiu_ms for m in measured])
    n_tiu = np.array([sum(len(r.tiu) for r in x) for x in rs], float)
    # measured = scale * compute + overhead * commands (ms): overhead kept, scale fitted
    over_ms = n_tiu * base.tiu_overhead / base.clock_mhz / 1e3
    scale = float(np.dot(tiu_est, tiu_meas - over_ms) / max(np.dot(tiu_est, tiu_est), 1e-12))
    tdma_meas = np.array([m.tdma_ms for m in measured])

    def tdma_ms(bw: float, ovh: float) -> np.ndarray:
        k = replace(base, ddr_bytes_per_cycle=bw, tdma_overhead=ovh)
        return np.array(
            [sum(tdma_cycles(d, k) for r in x for d in r.tdma) / base.clock_mhz / 1e3 for x in rs]
        )

    bws = np.geomspace(0.25, 32, 60)
    ovhs = np.linspace(0, 400, 41) if len(measured) > 1 else np.array([base.tdma_overhead])
    best = (np.inf, base.ddr_bytes_per_cycle, base.tdma_overhead)
    for bw in bws:
        for ovh in ovhs:
            err = float(np.sum((tdma_ms(bw, ovh) / tdma_meas - 1) ** 2))
            if err < best[0]:
                best = (err, float(bw), float(ovh))
    # refine the bandwidth around the best grid point
    _, bw0, ovh0 = best
    for bw in np.geomspace(bw0 / 1.1, bw0 * 1.1, 41):
        err = float(np.sum((tdma_ms(bw, ovh0) / tdma_meas - 1) ** 2))
        if err < best[0]:
            best = (err, float(bw), ovh0)
    return {
        "tiu_scale": round(scale, 4),
        "ddr_bytes_per_cycle": round(best[1], 3),
        "tdma_overhead": round(best[2], 1),
    }
