"""The same input on the board, on the host simulator and in fp32: where the board disagrees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from duotpu.core import metrics
from duotpu.inference import runtime

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
        model, run_model(b, model.cvimodel, model.info, [tensor], model.input_name)[0], tensor
    )
    sim = runtime.infer(model, [tensor])[0]
    if model.onnx is None:
        return [
            OutputComparison(n, metrics.cosine(on_board[n], sim[n])) for n in model.output_names
        ]
    fp32 = dict(zip(runtime.fp32_output_names(model), runtime.fp32_reference(model, [tensor])[0]))
    # under the fp32 model's names and shapes (a compiled output is named after its op)
    board_named = runtime.as_reference_outputs(on_board, fp32)
    sim_named = runtime.as_reference_outputs(sim, fp32)
    rows = []
    for name in model.output_names:
        ref = next((n for n in fp32 if name == n or name.startswith(n + "_")), next(iter(fp32)))
        rows.append(
            OutputComparison(
                name,
                metrics.cosine(on_board[name], sim[name]),
                metrics.cosine(board_named[ref], fp32[ref]),
                metrics.cosine(sim_named[ref], fp32[ref]),
            )
        )
    return rows
