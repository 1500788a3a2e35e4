"""The fp32 reference: an ONNX model's outputs in ONNX Runtime (CPU), against which every
quantized model is checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from duotpu.config.errors import DuoTpuError


def onnx_reference(path: Path, inputs: dict) -> dict:
    """Outputs of the fp32 ONNX model in ONNX Runtime (the reference every build is checked
    against)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def onnx_outputs(path: Path, tensors: list) -> list[list]:
    """The fp32 ONNX model's outputs (in output order) for each input tensor, one session."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return [sess.run(None, {name: x}) for x in tensors]


def onnx_reference_many(path: Path, tensors: list) -> list[dict[str, np.ndarray]]:
    """The fp32 ONNX model's outputs by name for each input tensor (one session)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    return [dict(zip(outs, sess.run(None, {name: x}))) for x in tensors]


def match_outputs(reference: dict[str, Any], produced: dict[str, Any]) -> dict[str, str]:
    """Map each reference (ONNX) output name to the compiler's name for it.

    The compiler names an output after the op that makes it (``logits`` → ``logits_Gemm_f32``);
    names are matched by prefix and, failing that, by position.
    """
    out, free = {}, list(produced)
    for i, name in enumerate(reference):
        hit = next((k for k in free if k == name or k.startswith(name + "_")), None)
        if hit is None and i < len(produced):
            hit = list(produced)[i] if list(produced)[i] in free else None
        if hit is None:
            raise DuoTpuError(
                f"Cannot find the model output '{name}' among the compiled "
                f"model's outputs {list(produced)}."
            )
        out[name] = hit
        free.remove(hit)
    return out


def run_tail(tail: Path, produced: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The rest of a cut model (``NAME.tail.onnx``) run in ONNX Runtime on the TPU model's
    outputs (by the compiler's names); the whole model's outputs by their ONNX names."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tail), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    names = match_outputs({i.name: None for i in inputs}, produced)
    feed = {}
    for i in inputs:
        x = np.asarray(produced[names[i.name]], np.float32)
        static = [d for d in i.shape if isinstance(d, int) and d > 0]
        if len(static) == len(i.shape) and x.size == int(np.prod(static)):
            x = x.reshape(static)  # the simulator pads shapes to NCHW ([1,10] → [1,10,1,1])
        feed[i.name] = x
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
