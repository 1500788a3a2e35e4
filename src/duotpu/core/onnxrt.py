"""The fp32 reference: an ONNX model's outputs in ONNX Runtime (CPU), against which every
quantized model is checked."""

from __future__ import annotations

from pathlib import Path


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
