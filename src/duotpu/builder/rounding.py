"""Optimized INT8 weight rounding (``calibration.rounding = "optimized"``, ``--rounding``).

tpu_mlir quantizes a CV18xx model's weights by rounding each to the nearest step: a convolution's
per output channel, ``q = round(w · 127 / max|w_c|)``; a matrix multiplication's per tensor,
``q = round(w · 127 / max|w|)`` (checked on deployed models: NOTES.md). Round-to-nearest is not
the rounding that keeps a layer's output closest to fp32 on real inputs: choosing, weight by
weight, between rounding down and up to minimise the layer's output error on calibration inputs
(AdaRound, Nagel et al. 2020) does better, most where a layer has few weights per output (depthwise
convolutions).

This module makes that choice layer by layer, in PyTorch on the CPU, on the fp32 inputs each layer
sees (tpu_mlir's own fp32 interpreter runs the transformed MLIR on the calibration images), and
then writes each chosen integer back as the float ``q · max|w_c| / 127``, so that tpu_mlir's own
round-to-nearest lands on it (the largest weight of each channel keeps its value, and with it the
scale). The model's other weights, its graph and its calibration table are untouched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.typing import NDArray

#: input values a layer's rounding is fitted on at most (a few images of a stem, all of a head)
BUDGET = 1_500_000

#: AdaRound's rectified sigmoid stretch and its schedule (the paper's values)
_ZETA, _GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class Layer:
    """A layer whose weights are rounded: its op, the weight's name in the weight file and its
    attributes (convolution: strides, pads, dilations, group, relu)."""

    name: str
    op: str  # "Conv" | "MatMul"
    input: str
    weight: str
    bias: str | None
    attrs: dict[str, Any]


@dataclass(frozen=True)
class Rounded:
    """How one layer's rounding came out: its output error against fp32 with round-to-nearest
    and with the chosen rounding (mean squared, on the calibration inputs), the share of its
    weights rounded the other way, and the seconds it took."""

    layer: str
    op: str
    weight: str  # its name in the weight file
    mse_nearest: float
    mse_optimized: float
    flipped: float
    seconds: float


_OP = re.compile(r'"top\.(Conv|MatMul)"\([^)]*\)\s*(\{[^}]*\})?.*loc\((#loc\d+|"[^"]+")\)\s*$')
_LOC = re.compile(r'^(#loc\d+) = loc\("([^"]+)"\)', re.MULTILINE)
_TYPES = re.compile(r":\s*\((tensor<[^>]*>)(?:,\s*(tensor<[^>]*>))?")
_FLOAT = re.compile(r"(\w+) = (-?[\d.]+(?:e[-+]?\d+)?) : f64")
_INTS = re.compile(r"(\w+) = \[([-\d, ]*)\]")
_INT = re.compile(r"(\w+) = (-?\d+) : i64")
_BOOL = re.compile(r"(\w+) = (true|false)")


def layers(mlir: Path, graph: dict[str, dict[str, Any]], weights: set[str]) -> list[Layer]:
    """The convolutions and matrix multiplications of a transformed (top) MLIR whose weight is
    a constant of the weight file, with what PyTorch needs to run them."""
    text = mlir.read_text(errors="replace")
    locs = dict(_LOC.findall(text))
    attrs: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        m = _OP.search(line)
        if not m:
            continue
        name = locs.get(m.group(3), "") if m.group(3).startswith("#") else m.group(3).strip('"')
        a: dict[str, Any] = {k: [int(x) for x in v.split(",") if x.strip()]
                             for k, v in _INTS.findall(m.group(2) or "")}  # fmt: skip
        a.update({k: int(v) for k, v in _INT.findall(m.group(2) or "")})
        a.update({k: float(v) for k, v in _FLOAT.findall(m.group(2) or "")})
        a.update({k: v == "true" for k, v in _BOOL.findall(m.group(2) or "")})
        types = _TYPES.search(line[m.end(2) if m.group(2) else 0 :])
        if types and types.group(2):  # the weight's shape (the weight file may hold it flat)
            dims = re.findall(r"(\d+)x", types.group(2))
            a["weight_shape"] = [int(d) for d in dims]
        attrs[name] = a
    found = []
    for name, op in graph.items():
        kind = op.get("type", "").removeprefix("top.")
        ins = op.get("inputs", [])
        if kind not in ("Conv", "MatMul") or len(ins) < 2 or ins[1] not in weights:
            continue
        a = attrs.get(name, {})
        if kind == "MatMul" and (a.get("right_transpose") or a.get("hdim_is_batch")):
            continue  # layouts the rounding does not model: left to round-to-nearest
        if kind == "Conv" and len(a.get("kernel_shape", [])) != 2:
            continue
        bias = ins[2] if len(ins) > 2 and ins[2] in weights else None
        found.append(Layer(name, kind, ins[0], ins[1], bias, a))
    return found


def _scale(w: NDArray[Any], op: str) -> NDArray[Any]:
    """tpu_mlir's weight step: per output channel for a convolution, per tensor otherwise."""
    if op == "Conv":
        amax = np.abs(w).reshape(w.shape[0], -1).max(1)
        step: NDArray[Any] = (np.maximum(amax, 1e-30) / 127.0).reshape(-1, *([1] * (w.ndim - 1)))
        return step
    return np.full((1,) * w.ndim, max(float(np.abs(w).max()), 1e-30) / 127.0)


def _forward(layer: Layer, x: Any, w: Any, b: Any) -> Any:
    import torch
    import torch.nn.functional as F

    if layer.op == "Conv":
        a = layer.attrs
        pads = a.get("pads", [0, 0, 0, 0])  # tpu_mlir: top, left, bottom, right
        if len(pads) == 4 and (pads[0] != pads[2] or pads[1] != pads[3]):
            x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
            padding: Any = 0
        else:
            padding = (pads[0], pads[1]) if len(pads) >= 2 else 0
        y = F.conv2d(
            x,
            w,
            b,
            stride=tuple(a.get("strides", [1, 1])),
            padding=padding,
            dilation=tuple(a.get("dilations", [1, 1])),
            groups=int(a.get("group", 1)),
        )
    else:
        y = torch.matmul(x, w) + (b if b is not None else 0)
    if layer.attrs.get("do_relu"):
        limit = float(layer.attrs.get("relu_limit", -1.0))
        y = torch.clamp(y, 0, limit) if limit > 0 else torch.relu(y)
    return y


def round_layer(
    layer: Layer,
    w: NDArray[Any],
    b: NDArray[Any] | None,
    inputs: NDArray[Any],
    iterations: int = 400,
    seed: int = 0,
    stop: Callable[[], None] = lambda: None,
) -> tuple[NDArray[Any], Rounded]:
    """Choose the rounding of ``w`` that keeps the layer's output on ``inputs`` closest to fp32;
    returns the float weights that tpu_mlir rounds to the chosen integers, and the numbers."""
    import torch

    t0 = time.monotonic()
    torch.manual_seed(seed)
    step = _scale(w, layer.op)
    ratio = w / step
    base = np.floor(ratio)
    nearest = np.round(ratio)
    # the largest weight of each channel keeps its value: the step is computed from it
    pinned = np.abs(np.abs(ratio) - 127.0) < 1e-4
    x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
    wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))
    bt = None if b is None else torch.from_numpy(np.ascontiguousarray(b, np.float32))
    with torch.no_grad():
        target = _forward(layer, x, wt, bt)
    st, bs = torch.from_numpy(step.astype(np.float32)), torch.from_numpy(base.astype(np.float32))
    pin = torch.from_numpy(pinned)
    near_h = torch.from_numpy((nearest - base).astype(np.float32))
    # AdaRound's start: h(V) equals the fractional part, so the first step is the exact weight
    rest = np.clip((ratio - base - _GAMMA) / (_ZETA - _GAMMA), 1e-4, 1 - 1e-4)
    v = torch.nn.Parameter(torch.from_numpy(np.log(rest / (1 - rest)).astype(np.float32)))
    opt = torch.optim.Adam([v], lr=1e-2)

    def soft() -> Any:
        return torch.clamp(torch.sigmoid(v) * (_ZETA - _GAMMA) + _GAMMA, 0, 1)

    def output(h: Any) -> Any:
        return _forward(layer, x, st * (bs + torch.where(pin, near_h, h)), bt)

    scale = float(target.pow(2).mean()) or 1.0
    warm = iterations // 5
    for it in range(iterations):
        if it % 25 == 0:
            stop()  # raises when the run was cancelled (Ctrl-C): the layer is given up
        opt.zero_grad()
        h = soft()
        loss = (output(h) - target).pow(2).mean() / scale
        if it >= warm:  # the regulariser pushes every h to 0 or 1, its exponent annealed
            beta = 20 - (20 - 2) * (it - warm) / max(iterations - warm, 1)
            loss = loss + 0.01 * (1 - (2 * h - 1).abs().pow(beta)).sum() / h.numel()
        loss.backward()
        opt.step()
    with torch.no_grad():
        chosen = (soft() >= 0.5).float()
        q_opt = bs + torch.where(pin, near_h, chosen)
        mse_opt = float((_forward(layer, x, st * q_opt, bt) - target).pow(2).mean())
        q_near = torch.from_numpy(nearest.astype(np.float32))
        mse_near = float((_forward(layer, x, st * q_near, bt) - target).pow(2).mean())
    q = q_opt.numpy()
    if mse_opt >= mse_near:  # never worse than round-to-nearest on the data it was chosen on
        q, mse_opt = nearest.astype(np.float32), mse_near
    flipped = float(np.mean(q != nearest))
    return (q * step).astype(np.float32), Rounded(
        layer.name, layer.op, layer.weight, mse_near, mse_opt, flipped, time.monotonic() - t0
    )


def tpu_integers(w: NDArray[Any], op: str) -> NDArray[Any]:
    """The integers tpu_mlir makes of float weights ``w`` (its round-to-nearest)."""
    step = _scale(w, op)
    q: NDArray[Any] = np.clip(np.sign(w) * np.floor(np.abs(w / step) + 0.5), -127, 127)
    return q.astype(np.int8)


def optimize(
    found: list[Layer],
    weights: dict[str, NDArray[Any]],
    activations: list[dict[str, NDArray[Any]]],
    progress: Callable[[int, int], None] = lambda done, total: None,
    iterations: int = 300,
    stop: Callable[[], None] = lambda: None,
) -> tuple[dict[str, NDArray[Any]], list[Rounded]]:
    """The rounding of every layer in ``found`` (its inputs from ``activations``, one dict of
    tensors per calibration sample); returns the new weight arrays by name and the numbers.
    ``stop`` is called every few steps and raises to cancel (Ctrl-C)."""
    new: dict[str, NDArray[Any]] = {}
    report = []
    for k, layer in enumerate(found):
        xs = [a[layer.input] for a in activations if layer.input in a]
        if not xs:
            continue
        # as many samples as keep one pass small: a stem's activations are large
        per = max(int(np.asarray(xs[0]).size), 1)
        x = np.concatenate([np.asarray(v, np.float32) for v in xs[: max(1, BUDGET // per)]], 0)
        stored = np.asarray(weights[layer.weight], np.float32)
        shape = layer.attrs.get("weight_shape") or list(stored.shape)
        if int(np.prod(shape)) != stored.size:
            continue
        w = stored.reshape(shape)
        b = None if layer.bias is None else np.asarray(weights[layer.bias], np.float32).ravel()
        if layer.op == "Conv" and (x.ndim != 4 or w.ndim != 4):
            continue
        rounded, done = round_layer(layer, w, b, x, iterations, stop=stop)
        new[layer.weight] = rounded.reshape(stored.shape)
        report.append(done)
        progress(k + 1, len(found))
    return new, report
