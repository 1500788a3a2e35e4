"""The latency estimate for a board: with the constants fitted to it, and the fit itself."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from duotpu import latency
from duotpu.cvimodel import read_cvimodel

from .profiles import BoardProfile, save_profile
from .runner import BenchResult


def fitted(profile: BoardProfile) -> dict[str, float]:
    """The estimate's constants this board's profile overrides (0: not fitted)."""
    return {name: float(getattr(profile, name)) for name in latency.FITTED}


def estimate_for(profile: BoardProfile, cvimodel: Path) -> latency.Estimate:
    """The cvimodel's estimated time on this board (its fitted constants, else the chip's)."""
    chip = read_cvimodel(cvimodel).chip
    return latency.estimate(cvimodel, latency.constants_for(chip, fitted(profile)))


def calibrate(
    profile: BoardProfile, measured: list[tuple[Path, BenchResult]]
) -> tuple[BoardProfile, dict[str, float]]:
    """Fit the estimate's constants to a board's PMU measurements (every model's median TIU
    and TDMA busy time) and save them in its profile; (the saved profile, the constants)."""
    from duotpu.config.errors import BoardError

    rows = [
        latency.Measured(
            Path(p), statistics.median(r.tiu_ms) if r.tiu_ms else 0.0, statistics.median(r.tdma_ms)
        )
        for p, r in measured
        if r.tdma_ms
    ]
    if not rows:
        raise BoardError(
            "The board printed no PMU lines (TPU_ENABLE_PMU=1), so there is nothing to fit: "
            "check that its runtime was built with PMU support."
        )
    chips = {read_cvimodel(m.cvimodel).chip for m in rows}
    if len(chips) != 1:
        raise BoardError(f"Calibrate with models of one chip; got {', '.join(sorted(chips))}.")
    constants = latency.fit(rows, chips.pop())
    saved = dataclasses.replace(
        profile,
        tiu_scale=constants["tiu_scale"],
        ddr_bytes_per_cycle=constants["ddr_bytes_per_cycle"],
        tdma_overhead=constants["tdma_overhead"],
    )
    save_profile(saved)
    return saved, constants
