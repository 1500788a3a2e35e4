"""The same input on the board, on the host simulator and in fp32: where the board disagrees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duotpu.core import metrics
from duotpu.infer import runtime

from .runner import run_model
from .ssh import Board


@dataclass(frozen=True)
class OutputComparison:
    """One output of the model: cosines between the board, the simulator and fp32."""

    output: str
    board_vs_simulator: float
    board_vs_fp32: float | None = None
    simulator_vs_fp32: float | None = None

    @property
    def agrees(self) -> bool:
        """The board computes what the simulator does (cosine ≥ 0.999)."""
        return self.board_vs_simulator >= 0.999


def compare(b: Board, model: runtime.BuiltModel, tensor: np.ndarray) -> list[OutputComparison]:
    """Run one input tensor on the board and on the host (simulator, fp32 when the build's ONNX
    is there); per output of the whole model (a cut model's tail runs on the host for both)."""
    on_board = runtime.apply_tail(
        model, run_model(b, model.cvimodel, model.info, [tensor], model.input_name)[0]
    )
    sim = runtime.infer(model, [tensor])[0]
    fp32 = None
    if model.onnx is not None:
        names = runtime.fp32_output_names(model)
        ref = dict(zip(names, runtime.fp32_reference(model, [tensor])[0]))
        fp32 = ref
    rows = []
    for name in model.output_names:
        row = OutputComparison(name, metrics.cosine(on_board[name], sim[name]))
        if fp32 is not None:
            named_board = runtime.as_reference_outputs(on_board, fp32)
            named_sim = runtime.as_reference_outputs(sim, fp32)
            ref_name = next(
                (n for n in fp32 if name == n or name.startswith(n + "_")), next(iter(fp32))
            )
            row = OutputComparison(
                name,
                row.board_vs_simulator,
                metrics.cosine(named_board[ref_name], fp32[ref_name]),
                metrics.cosine(named_sim[ref_name], fp32[ref_name]),
            )
        rows.append(row)
    return rows
