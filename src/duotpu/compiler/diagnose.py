"""Compiler and simulator failures in plain words: which layer, which op, which chip limit.

tpu_mlir stops on a model it cannot compile for CV18xx in a few recognisable ways (an assertion
in a code-generation kernel, ``UNREACHABLE`` in a lowering, the simulator refusing a command
buffer). The log rarely names the layer; the MLIR files beside it do, so the layers of the
failing op are looked up there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from duotpu.config.chips import CHIPS, LOCAL_MEMORY_KB

#: local memory and lanes per chip, as the messages say them
CHIP_LIMITS = {
    name: f"{c.lanes} lanes with {LOCAL_MEMORY_KB} KB of local memory each"
    for name, c in CHIPS.items()
}


@dataclass(frozen=True)
class Layer:
    """One op of a compiled MLIR: its name (the compiler's tensor name), type and output shape."""

    name: str
    op: str
    shape: tuple[int, ...]
    index: int  # position among the compute ops, in graph order
    last: int  # how many compute ops come after it


@dataclass(frozen=True)
class Failure:
    """A recognised compiler or simulator failure."""

    kind: str  # "kernel" | "lowering" | "simulator-cmdbuf" | "local-memory" | "tiu-parameter"
    op: str  # the ONNX-level op type ("Softmax"), "" when the log does not tell
    detail: str  # the log line that says it
    layers: tuple[Layer, ...] = ()  # the model's layers of that op type

    @property
    def tail_layer(self) -> Layer | None:
        """The failing layer when it is one of the model's last three compute ops (then running
        it on the CPU is a cheap way around); of several candidates (the log does not say which
        of the model's Softmax layers failed) all among the last three, the first: a cut
        before it puts every candidate on the CPU."""
        if self.layers and all(ly.last < 3 for ly in self.layers):
            return max(self.layers, key=lambda ly: ly.last)
        return None


_KERNEL = re.compile(
    r"Kernel/(Tg\w*?Kernel)\.cpp:(\d+):[^\n]*?(\w+)\(\)[^\n]*Assertion [`'](.+?)' failed"
)
_KERNEL_LOOSE = re.compile(r"(Tg\w*?Kernel)\.cpp:(\d+)[^\n]*Assertion [`'](.+?)' failed")
_UNREACHABLE_OP = re.compile(r'"top\.(\w+)"\([^\n]*loc\("([^"]+)"\)\s*\n[^\n]*\n?[^\n]*UNREACHABLE')
# the TDMA (line 168) or the TIU (line 164) command buffer beyond what the simulator reserves
_CMDBUF = re.compile(r"cmodel_cmdbuf[^\n]*Assertion [`']((?:tdma|tiu)_sz[^']*)' failed")
_LMEM = re.compile(
    r"[^\n]*(?:lmem|local ?mem(?:ory)?)[^\n]*(?:fail|exceed|not enough|overflow|too large)[^\n]*",
    re.IGNORECASE,
)
_TIU = re.compile(r"[^\n]*tiu[^\n]*wrong param[^\n]*", re.IGNORECASE)


def kernel_op(kernel: str) -> str:
    """``TgBf16SoftmaxKernel`` → ``Softmax``; ``TgInt8PoolingKernel`` → ``Pooling``."""
    name = re.sub(r"^Tg|Kernel$", "", kernel)
    return re.sub(r"^(?:Bf16|Int8|Fixed|Bf16Fixed|Fp32)+", "", name) or name


def recognise(log_text: str) -> Failure | None:
    """The failure a tool's log shows, when it is one duotpu knows."""
    m = _KERNEL.search(log_text)
    if m:
        return Failure("kernel", kernel_op(m.group(1)), m.group(0).strip())
    m = _KERNEL_LOOSE.search(log_text)
    if m:
        return Failure("kernel", kernel_op(m.group(1)), m.group(0).strip())
    m = _CMDBUF.search(log_text)
    if m:
        return Failure("simulator-cmdbuf", "", m.group(0).strip())
    if "UNREACHABLE" in log_text:
        m = _UNREACHABLE_OP.search(log_text)
        op = m.group(1) if m else ""
        line = next((ln for ln in log_text.splitlines() if "UNREACHABLE" in ln), "")
        return Failure("lowering", op, line.strip(), ())
    m = _TIU.search(log_text)
    if m:
        return Failure("tiu-parameter", "", m.group(0).strip())
    m = _LMEM.search(log_text)
    if m:
        return Failure("local-memory", "", m.group(0).strip())
    return None


_OP_LINE = re.compile(
    r'= "(?:tpu|top)\.(\w+)"\(.*?->\s*(?:tensor<([0-9x]+)x[a-z!]|\()?.*loc\((#loc\d+|"[^"]+")\)'
)
_LOC_DEF = re.compile(r'^(#loc\d+) = loc\("([^"]+)"\)', re.MULTILINE)
_SKIP = {"Weight", "None", "Input", "Yield", "Store", "Load"}


def mlir_layers(mlir: Path) -> list[Layer]:
    """The compute ops of an MLIR file in graph order (regular expressions over its text)."""
    try:
        text = Path(mlir).read_text(errors="replace")
    except OSError:
        return []
    locs = dict(_LOC_DEF.findall(text))
    found: list[tuple[str, str, tuple[int, ...]]] = []
    for line in text.splitlines():
        m = _OP_LINE.search(line)
        if not m or m.group(1) in _SKIP:
            continue
        loc = m.group(3)
        name = locs.get(loc, "") if loc.startswith("#") else loc.strip('"')
        shape = tuple(int(d) for d in m.group(2).split("x")) if m.group(2) else ()
        found.append((m.group(1), name, shape))
    n = len(found)
    return [Layer(name, op, shape, i, n - 1 - i) for i, (op, name, shape) in enumerate(found)]


def locate(failure: Failure, folder: Path, log_text: str = "") -> Failure:
    """The failure with the model's layers of its op type, read from the MLIR files in
    ``folder`` (the most lowered one that names them)."""
    if not failure.op:
        return failure
    if failure.kind == "lowering":
        m = _UNREACHABLE_OP.search(log_text)
        if m:
            return Failure(
                failure.kind,
                failure.op,
                failure.detail,
                (Layer(m.group(2), m.group(1), (), 0, 99),),
            )
    files = sorted(
        Path(folder).glob("*.mlir"),
        key=lambda p: ("final" not in p.name, "tpu" not in p.name, p.name),
    )
    for f in files:
        layers = [ly for ly in mlir_layers(f) if ly.op.lower() == failure.op.lower()]
        if layers:
            return Failure(failure.kind, failure.op, failure.detail, _widest(failure, layers))
    return failure


def _widest(failure: Failure, layers: list[Layer]) -> tuple[Layer, ...]:
    """The candidates a failure can be in: the softmax kernel's large-size handler runs only
    for the widest rows, so of a model's Softmax layers (a recognizer's small attention
    softmaxes beside its 18,385-way last one) those whose last dim is the largest."""
    if "LargeSize" not in failure.detail or len(layers) < 2:
        return tuple(layers)
    widest = max(ly.shape[-1] if ly.shape else 0 for ly in layers)
    return tuple(ly for ly in layers if (ly.shape[-1] if ly.shape else 0) == widest)


def explain(
    failure: Failure,
    chip: str,
    mode: str,
    *,
    other_chip_works: bool | None = None,
    cut_at: str = "",
    other_mode_built: bool | None = None,
) -> str:
    """One paragraph: what failed (layer, op), why (the chip's limit) and the ways around.
    ``other_chip_works``: whether a cv181x build of the same model was tried and worked;
    ``cut_at``: the model tensor to end the TPU model at, when the failing layer is a last one;
    ``other_mode_built``: whether the build makes the other mode (INT8 / BF16) too (``None``:
    not known)."""
    limit = CHIP_LIMITS.get(chip, "a small local memory")
    names = ", ".join(
        f"'{ly.name}'" + (f" (output {'×'.join(map(str, ly.shape))})" if ly.shape else "")
        for ly in failure.layers[:3]
    )
    where = (
        f"layer {names}"
        if len(failure.layers) == 1
        else (f"one of the layers {names}" if names else "a layer")
    )
    op = failure.op or "an op"
    ways: list[str] = []
    if chip == "cv180x":
        if other_chip_works is True:
            ways.append(
                "building for cv181x (Duo 256M / Duo S, 8 lanes: --chip cv181x) if that is your "
                "board: tried, it compiles"
            )
        elif other_chip_works is False:
            ways.append("(building for cv181x was tried: it fails too)")
        else:
            ways.append(
                "building for cv181x (Duo 256M / Duo S, 8 lanes: --chip cv181x) if that is "
                "your board"
            )
    tail = failure.tail_layer
    if tail is not None and cut_at and len(failure.layers) > 1:
        ways.append(
            f"running those {len(failure.layers)} layers on the CPU: they are among the model's "
            f"last layers, so --cut-at {cut_at} (model.outputs) ends the TPU model before the "
            f"first of them ('{tail.name}') and duotpu runs the rest in ONNX Runtime"
        )
    elif tail is not None and cut_at:
        ways.append(
            f"running '{tail.name}' on the CPU: it is among the model's last layers, so "
            f"--cut-at {cut_at} (model.outputs) ends the TPU model before it and duotpu runs the "
            "rest in ONNX Runtime"
        )
    else:
        ways.append(
            "ending the TPU model before the layer with --cut-at TENSOR and running the rest on "
            "the CPU"
        )
    other = "BF16" if mode.upper() == "INT8" else "INT8"
    if other_mode_built is False:  # not asked for: say how to ask, not "if it succeeded"
        other_way = f"a {other} build (--quantize {other.lower()}), whose kernels differ"
    else:
        other_way = f"the {other} build, if it succeeded"
    if failure.kind == "kernel":
        what = (
            f"The compiler's code generation for {op} ({where}) stopped in its {mode.upper()} "
            "kernel "
            f"({failure.detail.split('/')[-1][:160]}): the layer's working set does not fit the "
            f"local memory of {chip} ({limit})."
        )
        ways.append(other_way)
        ways.append("making the layer smaller (fewer classes or channels, a smaller input size)")
    elif failure.kind == "lowering":
        what = (
            f"tpu_mlir 1.30.2 has no {chip} {mode.upper()} implementation of {op} ({where}): "
            "it stopped with UNREACHABLE while lowering it."
        )
        ways.append(other_way)
        ways.append(f"exporting the model with {op} written as ops CV18xx runs")
    elif failure.kind == "simulator-cmdbuf":
        what = (
            f"The {mode.upper()} cvimodel was written, but the CV18xx simulator cannot load it: "
            "one "
            "of its command buffers is larger than the simulator reserves "
            f"({failure.detail[:120]}), so it cannot be verified on this machine."
        )
        ways = [
            "a smaller input size (--input-shape), which shortens the command buffers",
            other_way,
            *ways,
        ]
    elif failure.kind == "local-memory":
        what = (
            f"The compiler could not place {where} in {chip}'s local memory ({limit}): "
            f"{failure.detail[:160]}."
        )
        ways.append("a smaller input size (--input-shape)")
    else:
        what = (
            f"The compiler gave a TIU command a parameter {chip} does not take: "
            f"{failure.detail[:160]}."
        )
        ways.append(other_way)
    return what + " Ways around: " + "; ".join(ways) + "."
