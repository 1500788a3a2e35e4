"""The fp32 reference: an ONNX model's outputs in ONNX Runtime (CPU), against which every
quantized model is checked."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from duotpu.config.errors import DuoTpuError


def session(model: Path | bytes) -> Any:
    """An ONNX Runtime CPU session that keeps its own warnings (initializers it removes, shapes
    it merges) off the user's terminal: only errors are logged."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def onnx_reference(path: Path, inputs: dict) -> dict:
    """Outputs of the fp32 ONNX model in ONNX Runtime (the reference every build is checked
    against)."""
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def _feed(name: str, x: Any) -> dict[str, Any]:
    """An item of input tensors as ONNX Runtime's feed: the one input's array, or (a model of
    several inputs) every input's array by name."""
    return dict(x) if isinstance(x, Mapping) else {name: x}


def onnx_outputs(path: Path, tensors: list) -> list[list]:
    """The fp32 ONNX model's outputs (in output order) for each input tensor, one session."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    return [sess.run(None, _feed(name, x)) for x in tensors]


def onnx_reference_many(path: Path, tensors: list) -> list[dict[str, np.ndarray]]:
    """The fp32 ONNX model's outputs by name for each input (an array, or a dict of arrays by
    input name for a model of several inputs), one session."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    return [dict(zip(outs, sess.run(None, _feed(name, x)))) for x in tensors]


def match_outputs(reference: dict[str, Any], produced: dict[str, Any]) -> dict[str, str]:
    """Map each reference (ONNX) output name to the compiler's name for it
    (`duotpu.onboard.heads.match_names`: by the name it is made from, else by position)."""
    from duotpu.onboard.heads import match_names

    out: dict[str, str] = {}
    for name, hit in match_names(list(reference), list(produced)).items():
        if hit is None:
            raise DuoTpuError(
                f"Cannot find the model output '{name}' among the compiled "
                f"model's outputs {list(produced)}."
            )
        out[name] = hit
    return out


def run_tail(
    tail: Path, produced: dict[str, np.ndarray], model_inputs: Any = None
) -> dict[str, np.ndarray]:
    """The rest of a cut model (``NAME.tail.onnx``) run in ONNX Runtime on the TPU model's
    outputs (by the compiler's names) and, for a tail that reads them (an LSTM's state), the
    model's own inputs (``model_inputs``: by name); the whole model's outputs by their ONNX
    names."""
    sess = session(tail)
    given = dict(model_inputs) if isinstance(model_inputs, Mapping) else {}
    inputs = [i for i in sess.get_inputs() if i.name not in given]
    names = match_outputs({i.name: None for i in inputs}, produced)
    feed = {
        i.name: np.asarray(given[i.name], np.float32) for i in sess.get_inputs() if i.name in given
    }
    for i in inputs:
        x = np.asarray(produced[names[i.name]], np.float32)
        static = [d for d in i.shape if isinstance(d, int) and d > 0]
        if len(static) == len(i.shape) and x.size == int(np.prod(static)):
            x = x.reshape(static)  # the simulator pads shapes to NCHW ([1,10] → [1,10,1,1])
        feed[i.name] = x
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
