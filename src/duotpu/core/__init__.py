"""Pure data helpers shared by every layer above the compiler: images and preprocessing,
metrics, the ONNX Runtime reference, detector decoding. Nothing here starts a process."""
