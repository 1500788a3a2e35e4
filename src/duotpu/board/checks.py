"""What the board says about itself (OS, SoC and TPU chip, TPU device, memory, ION heap,
runtime SDK), and whether a cvimodel can run there."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from duotpu.config.chips import chip_of_soc
from duotpu.config.errors import BoardError

from .ssh import Board


# What the board says
# --------------------------------------------------------------------------------------------
@dataclass
class Doctor:
    """The board's state, and problems in plain words with the fix."""

    os: str = ""
    arch: str = ""
    soc: str = ""
    chip: str = ""
    runtime_version: str = ""
    tpu_device: bool = False
    mem_total_mb: float = 0.0
    mem_free_mb: float = 0.0
    ion_mb: float | None = None
    sdk_ok: bool = False
    problems: list[str] = field(default_factory=list)


def runtime_version(text: str) -> str:
    m = re.search(r"Cvitek Runtime\s*\(?\s*v?(\d+\.\d+(?:\.\d+)?)", text)
    return m.group(1) if m else ""


def doctor(b: Board) -> Doctor:
    """Inspect the board: OS, CPU, SoC, TPU device, memory, ION heap, SDK and runtime."""
    d = Doctor()
    p = b.profile
    script = "; ".join(
        [
            "uname -sr",
            "uname -m",
            f"tr -d '\\0' < {shlex.quote(p.soc_path)} 2>/dev/null | tr '\\n' ' '; echo",
            f"ls {shlex.quote(p.tpu_device)} >/dev/null 2>&1 && echo tpu:yes || echo tpu:no",
            "grep -E '^(MemTotal|MemAvailable):' /proc/meminfo",
            f"cat {shlex.quote(p.ion_path)} 2>/dev/null || echo ion:unreadable",
        ]
    )
    r = b.run(script)
    lines = r.stdout.splitlines()
    if len(lines) >= 4:
        d.os, d.arch, d.soc = lines[0].strip(), lines[1].strip(), lines[2].strip()
        d.tpu_device = "tpu:yes" in r.stdout
    d.chip = chip_of_soc(d.soc)
    for key, attr in (("MemTotal", "mem_total_mb"), ("MemAvailable", "mem_free_mb")):
        m = re.search(rf"{key}:\s*(\d+)\s*kB", r.stdout)
        if m:
            setattr(d, attr, int(m.group(1)) / 1024)
    m = re.search(r"^\s*(\d+)\s*$", lines[-1] if lines else "")
    if "ion:unreadable" not in r.stdout and m:
        d.ion_mb = int(m.group(1)) / (1024 * 1024)
    if not d.tpu_device:
        d.problems.append(
            f"No TPU device ({p.tpu_device}): the TPU driver is not loaded. Use a "
            "Duo image with TPU support (the official Milk-V buildroot images)."
        )
    if d.ion_mb is None:
        d.problems.append(
            f"The ION heap size is unreadable ({p.ion_path}); mount debugfs "
            "(`mount -t debugfs none /sys/kernel/debug`) to let duotpu check that "
            "models fit."
        )
    elif d.ion_mb == 0:
        d.problems.append(
            "The ION heap is 0 MB: this image reserves no memory for the TPU. "
            "Flash an image with an ION carveout (the Duo's are 16–27 MB)."
        )
    sdk = b.run(f"test -f {shlex.quote(p.sdk_dir)}/envs_tpu_sdk.sh && echo sdk:yes || echo sdk:no")
    if "sdk:yes" not in sdk.stdout:
        d.problems.append(
            f"The runtime SDK is not at {p.sdk_dir} on the board. Upload it with "
            "`duotpu board push --sdk PATH/TO/tpu-sdk-cv180x`."
        )
        return d
    # run it with no arguments: it prints its "Cvitek Runtime (x.y.z)" line, then its usage
    rr = b.run(
        b.sdk_command(
            'out=$(model_runner 2>&1); rc=$?; printf "%s\\n" "$out" | '
            'head -20; echo "duotpu-rc:$rc"'
        )
    )
    text = rr.stdout + rr.stderr
    d.runtime_version = runtime_version(text)
    d.sdk_ok = sdk_usable(text)
    if not d.sdk_ok:
        shown = re.sub(r"duotpu-rc:\d+\s*$", "", text.strip()).strip()[-300:]
        d.problems.append(
            "The SDK's model_runner does not start on the board "
            f"({shown or 'no output'}). Upload a complete SDK for the board's "
            "chip with `duotpu board push --sdk PATH/TO/tpu-sdk-cv180x`."
        )
    return d


def sdk_usable(text: str) -> bool:
    """Whether ``model_runner``'s output (run with no arguments, followed by a
    ``duotpu-rc:N`` line with its exit code) shows a working runtime: it printed the runtime's
    version line, and the shell could run it (not 126/127, no loader error)."""
    rc = re.search(r"duotpu-rc:(\d+)", text)
    if rc and int(rc.group(1)) in (126, 127):
        return False
    if re.search(
        r"not found|No such file|cannot execute|error while loading shared libraries|"
        r"Exec format error|Segmentation fault|Illegal instruction",
        text,
    ):
        return False
    return bool(runtime_version(text))


# --------------------------------------------------------------------------------------------
# Checks before pushing a model
# --------------------------------------------------------------------------------------------
def check_model_for_board(info, d: Doctor) -> list[str]:
    """Reasons a cvimodel cannot run on this board (empty when it can)."""
    out = []
    if d.chip and info.chip != d.chip:
        out.append(
            f"{Path(info.path).name} is built for {info.chip}, but the board's SoC "
            f"({d.soc.split()[0] if d.soc else '?'}) is {d.chip}: the runtime would say "
            f"'cvimodel built for {info.chip} CANNOT run on platform {d.chip}'. Rebuild "
            f"with --chip {d.chip}."
        )
    if d.runtime_version:
        rv = tuple(int(x) for x in d.runtime_version.split(".")[:2])
        mv = tuple(int(x) for x in info.version.split(".")[:2])
        if mv > rv:
            out.append(
                f"{Path(info.path).name} is cvimodel {info.version}, newer than the "
                f"board's runtime {d.runtime_version}: the runtime would refuse it "
                f"('cvimodel({mv[0]}.{mv[1]}) is not supported in runtime"
                f"({rv[0]}.{rv[1]})'). Update the SDK on the board, or rebuild the model "
                f"with model_version {rv[0]}.{rv[1]}."
            )
    if d.ion_mb is not None and info.ion_mb > d.ion_mb:
        out.append(
            f"{Path(info.path).name} needs {info.ion_mb:.2f} MB of ION memory; the board "
            f"has {d.ion_mb:.2f} MB. Use a smaller input, INT8 instead of BF16, or an "
            "image with a bigger ION carveout."
        )
    return out


def model_problems(models: list[Path], d: Doctor) -> list[str]:
    """Reasons any of the cvimodels ``models`` cannot run on the board ``d`` describes."""
    from duotpu.cvimodel import read_cvimodel

    return [p for m in models for p in check_model_for_board(read_cvimodel(m), d)]


def check_models(b: Board, models: list[Path], force: bool = False) -> list[str]:
    """Check ``models`` against the board before they are run: raises `BoardError`
    with every problem, or with ``force`` returns them."""
    problems = model_problems(models, doctor(b))
    if problems and not force:
        raise BoardError(" ".join(problems) + " (--force to try anyway)")
    return problems
