"""The CPU tail of a model cut with ``--cut-at``, run in numpy on the board.

``duotpu app`` turns ``NAME.tail.onnx`` into a plain graph (``tail.json``: nodes in order with
their op, inputs, outputs and attributes; ``tail.npz``: the constants), refusing a tail with an
op not in `OPS` by naming it. No ONNX package is needed on the board.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping

import numpy as np

Fn = Callable[[List[np.ndarray], Dict[str, Any]], List[np.ndarray]]


def _axis(a: Dict[str, Any], default: int = -1) -> int:
    return int(a.get("axis", default))


def _softmax(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    v = x[0].astype(np.float32)
    e = np.exp(v - v.max(axis=_axis(a), keepdims=True))
    return [e / e.sum(axis=_axis(a), keepdims=True)]


def _reshape(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    shape = [int(d) for d in x[1]]
    shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x[0].reshape(shape)]


def _gemm(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    A = x[0].T if a.get("transA") else x[0]
    B = x[1].T if a.get("transB") else x[1]
    y = float(a.get("alpha", 1.0)) * (A @ B)
    if len(x) > 2:
        y = y + float(a.get("beta", 1.0)) * x[2]
    return [y.astype(np.float32)]


def _flatten(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    ax = _axis(a, 1)
    ax = ax if ax >= 0 else x[0].ndim + ax
    lead = int(np.prod(x[0].shape[:ax])) if ax else 1
    return [x[0].reshape(lead, -1)]


def _slice(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    starts, ends = [int(v) for v in x[1]], [int(v) for v in x[2]]
    axes = [int(v) for v in x[3]] if len(x) > 3 else list(range(len(starts)))
    steps = [int(v) for v in x[4]] if len(x) > 4 else [1] * len(starts)
    sl = [slice(None)] * x[0].ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        sl[ax] = slice(s, e, st)
    return [x[0][tuple(sl)]]


def _split(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    ax = _axis(a, 0)
    sizes = [int(v) for v in (x[1] if len(x) > 1 else a.get("split", []))]
    if not sizes:
        n = int(a["_outputs"])
        sizes = [x[0].shape[ax] // n] * n
    return list(np.split(x[0], np.cumsum(sizes)[:-1], axis=ax))


def _squeeze(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    axes = [int(v) for v in (x[1] if len(x) > 1 else a.get("axes", []))]
    return [np.squeeze(x[0], axis=tuple(axes)) if axes else np.squeeze(x[0])]


def _unsqueeze(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    axes = [int(v) for v in (x[1] if len(x) > 1 else a.get("axes", []))]
    y = x[0]
    for ax in sorted(ax if ax >= 0 else ax + y.ndim + len(axes) for ax in axes):
        y = np.expand_dims(y, ax)
    return [y]


def _reduce(fn: Callable[..., np.ndarray]) -> Fn:
    def run(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
        axes = a.get("axes")
        if axes is None and len(x) > 1:
            axes = [int(v) for v in x[1]]
        keep = bool(a.get("keepdims", 1))
        return [fn(x[0], axis=tuple(axes) if axes else None, keepdims=keep)]

    return run


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Fn:
    return lambda x, a: [fn(x[0]).astype(x[0].dtype, copy=False)]


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fn:
    return lambda x, a: [fn(x[0], x[1])]


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _lstm(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    """ONNX LSTM, forward direction, default activations (what PyTorch's ``nn.LSTM`` exports):
    gates i, o, f, c; outputs Y [steps, 1, batch, hidden], Y_h and Y_c [1, batch, hidden]."""
    X, W, R = (v.astype(np.float32) for v in x[:3])
    h = int(a["hidden_size"])
    steps, batch = X.shape[0], X.shape[1]
    has = [len(x) > k and x[k].size > 0 for k in range(8)]
    b = x[3].astype(np.float32)[0] if has[3] else np.zeros(8 * h, np.float32)
    H = x[5].astype(np.float32)[0] if has[5] else np.zeros((batch, h), np.float32)
    C = x[6].astype(np.float32)[0] if has[6] else np.zeros((batch, h), np.float32)
    w, r, bias = W[0], R[0], b[: 4 * h] + b[4 * h :]
    ys = []
    for t in range(steps):
        z = X[t] @ w.T + H @ r.T + bias
        i, o, f, c = (z[:, k * h : (k + 1) * h] for k in range(4))
        C = _sigmoid(f) * C + _sigmoid(i) * np.tanh(c)
        H = _sigmoid(o) * np.tanh(C)
        ys.append(H)
    Y = np.stack(ys)[:, None].astype(np.float32)
    return [Y, H[None].astype(np.float32), C[None].astype(np.float32)]


def _conv(x: List[np.ndarray], a: Dict[str, Any]) -> List[np.ndarray]:
    """ONNX Conv in 1 or 2 spatial dims (groups, strides, pads, dilations), as a sum over the
    kernel's positions."""
    X, W = x[0].astype(np.float32), x[1].astype(np.float32)
    one_d = X.ndim == 3
    strides = [int(v) for v in a.get("strides") or [1] * (X.ndim - 2)]
    dil = [int(v) for v in a.get("dilations") or [1] * (X.ndim - 2)]
    pads = [int(v) for v in a.get("pads") or [0] * 2 * (X.ndim - 2)]
    if one_d:
        X, W = X[:, :, None, :], W[:, :, None, :]
        strides, dil, pads = [1, *strides], [1, *dil], [0, pads[0], 0, pads[1]]
    g = int(a.get("group", 1))
    Xp = np.pad(X, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    kh, kw = W.shape[2], W.shape[3]
    oh = (Xp.shape[2] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (Xp.shape[3] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    cg, og = X.shape[1] // g, W.shape[0] // g
    out = np.zeros((X.shape[0], W.shape[0], oh, ow), np.float32)
    for k in range(g):
        xg, wg = Xp[:, k * cg : (k + 1) * cg], W[k * og : (k + 1) * og]
        for i in range(kh):
            for j in range(kw):
                top, left = i * dil[0], j * dil[1]
                patch = xg[
                    :,
                    :,
                    top : top + strides[0] * (oh - 1) + 1 : strides[0],
                    left : left + strides[1] * (ow - 1) + 1 : strides[1],
                ]
                out[:, k * og : (k + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    if len(x) > 2 and x[2].size:
        out += x[2].astype(np.float32).reshape(1, -1, 1, 1)
    return [out[:, :, 0, :] if one_d else out]


#: what an op's attributes must be for the board app to run it (else it is refused by name)
LIMITS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "LSTM": lambda a: (
        "a bidirectional or reverse LSTM"
        if a.get("direction", "forward") != "forward"
        else "an LSTM with clip, layout 1, input_forget or other activations"
        if a.get("clip") or a.get("layout") or a.get("input_forget") or a.get("activations")
        else ""
    ),
    "Conv": lambda a: (
        "a Conv in more than 2 dims or with auto_pad"
        if a.get("auto_pad", "NOTSET") not in ("NOTSET", "") or len(a.get("kernel_shape") or []) > 2
        else ""
    ),
}


#: the ops a tail may hold
OPS: Dict[str, Fn] = {
    "LSTM": _lstm,
    "Conv": _conv,
    "Softmax": _softmax,
    "Sigmoid": _unary(lambda v: 1.0 / (1.0 + np.exp(-v))),
    "Relu": _unary(lambda v: np.maximum(v, 0)),
    "Tanh": _unary(np.tanh),
    "Exp": _unary(np.exp),
    "Log": _unary(np.log),
    "Sqrt": _unary(np.sqrt),
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Identity": lambda x, a: [x[0]],
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(np.divide),
    "Pow": _binary(np.power),
    "MatMul": _binary(np.matmul),
    "Max": lambda x, a: [np.maximum.reduce(x)],
    "Min": lambda x, a: [np.minimum.reduce(x)],
    "Gemm": _gemm,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": lambda x, a: [np.transpose(x[0], a.get("perm"))],
    "Concat": lambda x, a: [np.concatenate(x, axis=_axis(a))],
    "Slice": _slice,
    "Split": _split,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Clip": lambda x, a: [
        np.clip(
            x[0],
            x[1] if len(x) > 1 and x[1].size else a.get("min", -np.inf),
            x[2] if len(x) > 2 and x[2].size else a.get("max", np.inf),
        )
    ],
    "ArgMax": lambda x, a: [
        np.expand_dims(np.argmax(x[0], axis=_axis(a, 0)), _axis(a, 0))
        if a.get("keepdims", 1)
        else np.argmax(x[0], axis=_axis(a, 0))
    ],
    "ReduceMean": _reduce(np.mean),
    "ReduceSum": _reduce(np.sum),
    "ReduceMax": _reduce(np.max),
    "GlobalAveragePool": lambda x, a: [x[0].mean(axis=(2, 3), keepdims=True)],
    "Cast": lambda x, a: [x[0].astype(np.float32 if a.get("to", 1) == 1 else np.int64)],
    "Shape": lambda x, a: [np.asarray(x[0].shape, np.int64)],
    "Gather": lambda x, a: [np.take(x[0], x[1].astype(np.int64), axis=_axis(a, 0))],
}


class TailError(Exception):
    """A tail holds an op the board app cannot run."""


def check(nodes: List[Mapping[str, Any]]) -> None:
    """Refuse a graph with an op the app cannot run, naming the op and the layer."""
    bad = [(n["op"], n.get("name", "")) for n in nodes if n["op"] not in OPS]
    bad += [
        (LIMITS[n["op"]](n.get("attrs", {})), n.get("name", ""))
        for n in nodes
        if n["op"] in LIMITS and LIMITS[n["op"]](n.get("attrs", {}))
    ]
    if bad:
        named = ", ".join(f"{op} ({name or 'unnamed'})" for op, name in bad)
        raise TailError(
            f"The CPU tail of this model has ops the board app cannot run: {named}. It runs "
            f"{', '.join(sorted(OPS))}. Cut the model later (--cut-at after these layers) so "
            "they run on the TPU, or run the tail on the PC (duotpu predict --board)."
        )


def run(
    graph: Mapping[str, Any], constants: Mapping[str, np.ndarray], values: Dict[str, np.ndarray]
) -> Dict[str, np.ndarray]:
    """Run the tail on the TPU model's outputs (``values``, by the tail's input names); the
    whole model's outputs by name."""
    env: Dict[str, np.ndarray] = dict(constants)
    for name, shape in graph["inputs"].items():
        v = np.asarray(values[name], np.float32)
        env[name] = v.reshape(shape) if shape and v.size == int(np.prod(shape)) else v
    for node in graph["nodes"]:
        args = [env[i] if i else np.zeros(0, np.float32) for i in node["inputs"]]
        attrs = dict(node.get("attrs", {}), _outputs=len(node["outputs"]))
        for name, v in zip(node["outputs"], OPS[node["op"]](args, attrs)):
            env[name] = np.asarray(v)
    return {name: env[name] for name in graph["outputs"]}
