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
scale). The model's other weights and its graph are untouched.

The layer's input is what the chip gives it: the fp32 activation quantized to INT8 with its
calibration threshold (per tensor, symmetric, step ``T / 127``). The rounding is fitted on that
input against the fp32 output, and before it the threshold itself is tuned, between the table's
(tpu_mlir's KL choice, which clips) and the largest value calibration saw, against the same
error. A threshold is tuned only where every reader of the tensor is a layer this module rounds
(the error it minimises is then the whole effect of the change) and the tensor is a
convolution's or matrix multiplication's own output (its INT8 requantization is where the
threshold applies).
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

#: optimisation steps of one layer's rounding
ITERATIONS = 300

#: fits of every layer: the first on the fp32 inputs quantized, the second on the inputs the
#: INT8 model computes with the layers before it refitted
PASSES = 2

#: layers refitted at a time in the second pass (the INT8 model is lowered and run once a group)
GROUP = 1

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
    #: the input's calibration threshold from tpu_mlir's table and the one chosen (same if kept)
    threshold_table: float | None = None
    threshold_tuned: float | None = None
    #: the error of today's layer: round-to-nearest with the table's threshold
    mse_table: float | None = None
    #: fitted on the inputs the INT8 model computes (the second pass), not on fp32 inputs
    on_int8_inputs: bool = False


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
    threshold: float | None = None,
    table_threshold: float | None = None,
    actual: NDArray[Any] | None = None,
) -> tuple[NDArray[Any], Rounded]:
    """Choose the rounding of ``w`` that keeps the layer's output on ``inputs`` closest to fp32,
    fed ``inputs`` quantized with ``threshold`` as the chip does (when given); returns the float
    weights that tpu_mlir rounds to the chosen integers, and the numbers. ``table_threshold``
    (the calibration table's, when ``threshold`` is a tuned one) gives the error of today's layer
    too. ``actual``: the layer's inputs as the INT8 model computes them (its layers before this
    one quantized, in the order of ``inputs``), fitted against the fp32 output of ``inputs``:
    the rounding then also makes up for the error that reaches the layer."""
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
    x_table = x if table_threshold is None else fake_quant(x, table_threshold)
    if actual is not None:
        x = torch.from_numpy(np.ascontiguousarray(actual, np.float32))
        x_table = x
    elif threshold is not None:
        x = fake_quant(x, threshold)
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
        mse_table = mse_near
        if x_table is not x:
            mse_table = float((_forward(layer, x_table, st * q_near, bt) - target).pow(2).mean())
    q = q_opt.numpy()
    if mse_opt >= mse_near:  # never worse than round-to-nearest on the data it was chosen on
        q, mse_opt = nearest.astype(np.float32), mse_near
    flipped = float(np.mean(q != nearest))
    return (q * step).astype(np.float32), Rounded(
        layer.name,
        layer.op,
        layer.weight,
        mse_near,
        mse_opt,
        flipped,
        time.monotonic() - t0,
        table_threshold,
        threshold,
        mse_table,
        actual is not None,
    )


def fake_quant(x: Any, threshold: float) -> Any:
    """An activation as the chip holds it: CV18xx INT8, symmetric per tensor, step T / 127."""
    import torch

    step = threshold / 127.0
    return torch.clamp(torch.round(x / step), -128, 127) * step


#: where between the table's threshold (0) and the largest value calibration saw (1) a
#: tensor's threshold is tried
STEPS = tuple(float(f) for f in np.linspace(0.0, 1.0, 9))


def tune_threshold(
    uses: list[tuple[Layer, NDArray[Any], NDArray[Any] | None, NDArray[Any]]],
    threshold: float,
    ceiling: float,
) -> tuple[float, float, float]:
    """The threshold of one tensor, between the table's ``threshold`` and ``ceiling`` (the
    largest magnitude calibration saw), that keeps the outputs of the layers reading it (each
    given as layer, weights, bias, its inputs) closest to fp32 with those weights in INT8 and the
    tensor quantized with it; returns it with the error at the table's threshold and at it.

    Never below the table's threshold: a threshold tuned lower on the few samples the rounding
    sees clipped the rare large values of other images (NOTES.md, session 29). It is chosen on
    every other sample (each input's first dimension is its samples) and taken only where, on
    those and on the rest alike, it lowers the mean error by 2 % or more without raising the
    error of the worst sample."""
    import torch

    if ceiling <= threshold * 1.0001:  # nothing clipped: a larger step would only be coarser
        return threshold, 0.0, 0.0

    prepared = []
    with torch.no_grad():
        for layer, w, b, x in uses:
            xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
            bt = None if b is None else torch.from_numpy(np.ascontiguousarray(b, np.float32))
            wt = torch.from_numpy(np.ascontiguousarray(w, np.float32))
            target = _forward(layer, xt, wt, bt)
            q = tpu_integers(w, layer.op).astype(np.float32) * _scale(w, layer.op)
            wq = torch.from_numpy(q.astype(np.float32))
            prepared.append((layer, xt, wq, bt, target, float(target.pow(2).mean()) or 1.0))
        per_sample: dict[float, NDArray[Any]] = {}
        for share in STEPS:
            t = threshold + (ceiling - threshold) * share
            per_sample[share] = sum(
                (
                    (_forward(ly, fake_quant(xt, t), wq, bt) - target)
                    .pow(2)
                    .reshape(len(target), -1)
                    .mean(1)
                    .numpy()
                    / power
                )
                for ly, xt, wq, bt, target, power in prepared
            )
    errors = {k: float(v.mean()) for k, v in per_sample.items()}
    # chosen on half the samples and kept only if the other half agrees: a lower mean error and
    # no sample worse off than with tpu_mlir's threshold (a threshold fitted to a few samples
    # must not clip the rare large values of others)
    fit, check = slice(0, None, 2), slice(1, None, 2)

    def better(k: float, part: slice) -> bool:
        new, old = per_sample[k][part], per_sample[0.0][part]
        return bool(len(new)) and new.mean() < old.mean() * 0.98 and new.max() <= old.max()

    fair = [k for k in STEPS if better(k, fit)]
    best = min(fair, key=lambda k: per_sample[k][fit].mean()) if fair else 0.0
    if best != 0.0 and not better(best, check):
        best = 0.0
    return threshold + (ceiling - threshold) * best, errors[0.0], errors[best]


def tunable(
    found: list[Layer], graph: dict[str, dict[str, Any]], thresholds: dict[str, float]
) -> set[str]:
    """The input tensors of ``found`` whose threshold may be tuned: a Conv's or MatMul's output
    with a threshold in the table, read only by layers in ``found``."""
    readers: dict[str, set[str]] = {}
    for name, op in graph.items():
        for i in op.get("inputs", []):
            readers.setdefault(i, set()).add(name)
    ours = {ly.name for ly in found}
    return {
        ly.input
        for ly in found
        if ly.input in thresholds
        and graph.get(ly.input, {}).get("type", "").removeprefix("top.") in ("Conv", "MatMul")
        and readers.get(ly.input, set()) <= ours
    }


def _table_rows(table: Path) -> list[tuple[str, float, float | None]]:
    """Each tensor of a tpu_mlir calibration table (``name threshold min max`` lines): its
    name, threshold and the largest magnitude calibration saw (None without min and max)."""
    rows = []
    for line in table.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) < 2 or line.startswith("#"):
            continue
        try:
            threshold = float(parts[1])
        except ValueError:
            continue
        try:
            ceiling: float | None = max(abs(float(parts[2])), abs(float(parts[3])))
        except (IndexError, ValueError):
            ceiling = None
        rows.append((parts[0], threshold, ceiling))
    return rows


def read_thresholds(table: Path) -> dict[str, float]:
    """The thresholds of a tpu_mlir calibration table (``name threshold min max`` lines)."""
    return {name: threshold for name, threshold, _ in _table_rows(table)}


def read_ceilings(table: Path) -> dict[str, float]:
    """The largest magnitude calibration saw of each tensor of a calibration table (its ``min``
    and ``max`` columns)."""
    return {name: top for name, _, top in _table_rows(table) if top is not None}


def write_thresholds(table: Path, out: Path, changed: dict[str, float]) -> None:
    """A copy of ``table`` with the thresholds in ``changed`` (min and max kept)."""
    lines = []
    for line in table.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and parts[0] in changed:
            parts[1] = f"{changed[parts[0]]:.7f}"
            line = " ".join(parts)
        lines.append(line)
    out.write_text("\n".join(lines) + "\n")


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
    iterations: int | None = None,
    stop: Callable[[], None] = lambda: None,
    thresholds: dict[str, float] | None = None,
    tune: set[str] = frozenset(),  # type: ignore[assignment]
    ceilings: dict[str, float] | None = None,
    actual: list[dict[str, NDArray[Any]]] | None = None,
) -> tuple[dict[str, NDArray[Any]], list[Rounded], dict[str, float]]:
    """The rounding of every layer in ``found`` (its inputs from ``activations``, one dict of
    tensors per calibration sample); returns the new weight arrays by name, the numbers and the
    tuned thresholds. With ``thresholds`` (the calibration table's) each layer's input is
    quantized as on the chip; the thresholds of the tensors in ``tune`` are tuned first, up to
    their ``ceilings`` (the largest magnitude calibration saw). ``actual`` (one dict per
    sample, as ``activations``): the layers' inputs as the INT8 model computes them, each
    layer's rounding then fitted on those against the fp32 output (`round_layer`); a layer
    whose input is missing there is fitted as without it.
    ``stop`` is called every few steps and raises to cancel (Ctrl-C)."""
    thresholds, ceilings = thresholds or {}, ceilings or {}
    iterations = ITERATIONS if iterations is None else iterations
    ready = []
    for layer in found:
        xs = [a[layer.input] for a in activations if layer.input in a]
        if not xs:
            continue
        # as many samples as keep one pass small: a stem's activations are large
        per = max(int(np.asarray(xs[0]).size), 1)
        take = max(1, BUDGET // per)
        x = np.concatenate([np.asarray(v, np.float32) for v in xs[:take]], 0)
        stored = np.asarray(weights[layer.weight], np.float32)
        shape = layer.attrs.get("weight_shape") or list(stored.shape)
        if int(np.prod(shape)) != stored.size:
            continue
        w = stored.reshape(shape)
        b = None if layer.bias is None else np.asarray(weights[layer.bias], np.float32).ravel()
        if layer.op == "Conv" and (x.ndim != 4 or w.ndim != 4):
            continue
        xq = None
        if actual is not None and all(layer.input in a for a in actual[: len(xs[:take])]):
            xq = np.concatenate(
                [np.asarray(a[layer.input], np.float32) for a in actual[: len(xs[:take])]], 0
            )
            if xq.shape != x.shape:
                xq = None
        ready.append((layer, w, b, x, stored.shape, xq))
    tuned: dict[str, float] = {}
    for tensor in sorted(tune):
        stop()
        uses = [(ly, w, b, x) for ly, w, b, x, _, _ in ready if ly.input == tensor]
        if uses and tensor in thresholds:
            ceiling = ceilings.get(tensor, thresholds[tensor])
            t, _, _ = tune_threshold(uses, thresholds[tensor], ceiling)
            if t != thresholds[tensor]:
                tuned[tensor] = t
    new: dict[str, NDArray[Any]] = {}
    report = []
    for k, (layer, w, b, x, stored_shape, xq) in enumerate(ready):
        before = thresholds.get(layer.input)
        after = tuned.get(layer.input, before)
        rounded, done = round_layer(
            layer,
            w,
            b,
            x,
            iterations,
            stop=stop,
            threshold=after,
            table_threshold=before,
            actual=xq,
        )
        new[layer.weight] = rounded.reshape(stored_shape)
        report.append(done)
        progress(k + 1, len(ready))
    return new, report, tuned
