"""What ``duotpu info`` shows of a cvimodel: the file read, the boards it fits, the board-free
latency estimate and the model's own names for the compiler's tensors (when the cvimodel is a
build's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from duotpu import cvimodel as cvimodel_mod
from duotpu import latency
from duotpu.builder.manifest import listed_model
from duotpu.core.onnxrt import match_outputs


@dataclass
class Inspection:
    """One cvimodel, inspected: ``info`` (its file, with ``info.fit`` per board), ``estimate``
    (the board time), ``layer_names`` (layer id → tensor name, for the estimate's layers) and
    ``onnx_names`` (compiler's output name → the ONNX model's, where they differ)."""

    info: cvimodel_mod.CviModelInfo
    estimate: latency.Estimate
    layer_names: dict[int, str] = field(default_factory=dict)
    onnx_names: dict[str, str] = field(default_factory=dict)

    def to_dict(self, layers: int = 10) -> dict:
        """``info --json``: the file's fields and the estimate with its ``layers`` costliest."""
        return self.info.to_dict() | {
            "estimate": latency.as_dict(self.estimate, self.layer_names, layers)
        }


def inspect_cvimodel(path: str | Path, ion_mb: dict[str, float] | None = None) -> Inspection:
    """Read ``path`` and say which boards it fits (``ion_mb``: a board key → its ION heap in MB,
    instead of the stock images' sizes), its estimated board time and, for a build's cvimodel,
    its layers' and outputs' names."""
    info = cvimodel_mod.read_cvimodel(Path(path))
    info.fit = cvimodel_mod.board_fit(info, ion_mb or {})
    listed = listed_model(info.path)
    return Inspection(
        info=info,
        estimate=latency.estimate(info.path),
        layer_names=latency.layer_names(listed.tensor_info if listed else None),
        onnx_names=_onnx_names(info, listed.onnx if listed else None),
    )


def _onnx_names(info: cvimodel_mod.CviModelInfo, onnx_path: Path | None) -> dict[str, str]:
    # the compiler names an output after its op: logits → logits_Gemm_f32
    if onnx_path is None:
        return {}
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    compiled = [x.name for x in info.programs[0].outputs]
    try:
        found = match_outputs({o.name: None for o in graph.output}, dict.fromkeys(compiled))
    except Exception:  # noqa: BLE001 — a cut model's outputs are not the ONNX's: keep names
        return {}
    return {c: o for o, c in found.items() if c != o}


def latency_estimate(cvimodel: str | Path, top: int = 0) -> dict:
    """The board-free estimate of ``cvimodel`` as plain data (``predict --json``)."""
    return latency.as_dict(latency.estimate(cvimodel), top=top)
