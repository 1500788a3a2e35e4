"""The way around a failed build that duotpu tries itself: cutting the model's last layers off.

When the compiler fails in one of a model's last layers (a Softmax too wide for cv180x's local
memory, an op it cannot lower), the error names the tensor to cut the TPU model at. The cut right
before the failing layer is not always the best one: the layer before it may leave the TPU as
INT8 with too little precision for what follows on the CPU (PP-OCRv6's recognizer: the scores
before its Softmax verify at cos 0.76, one linear layer earlier at 0.98). So the build tries
``model.try_cuts`` cuts — that tensor, then one more layer on the CPU each — builds and verifies
each in the same work directory (the calibration is shared, `duotpu.builder.calibshare`),
and delivers the one that verifies best, with every candidate's numbers said.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from duotpu.config.errors import (
    BuildFailed,
    CompilerFailure,
    DuoTpuError,
    PartialBuild,
    ToleranceError,
)
from duotpu.config.recipe import Recipe

from . import export as export_mod
from .results import BuildResult
from .workdir import EventSink, StageEvent, WorkDir

#: cosines this close to the best candidate's count as equal
NEAR = 0.002


@dataclass(frozen=True)
class TriedCut:
    """One cut the build tried: the tensor, what came of it, and its worst cosine to fp32 over
    the modes it built (None when it did not build)."""

    tensor: str
    outcome: str  # "verified" | "below the tolerance" | "partial" | "failed"
    worst_cosine: float | None
    why: str = ""

    def said(self) -> str:
        cos = f" (worst cos {self.worst_cosine:.4f})" if self.worst_cosine is not None else ""
        why = f": {self.why}" if self.why and self.outcome == "failed" else ""
        return f"{self.tensor} {self.outcome}{cos}{why}"


def cut_to_try(error: BaseException, recipe: Recipe) -> CompilerFailure | None:
    """The failure whose ``cut_at`` the build should try itself (no cut asked for yet,
    ``model.try_cuts`` > 0, no mode delivered, a failure that names a cut); else None."""
    if recipe.model.outputs or recipe.model.try_cuts <= 0 or isinstance(error, PartialBuild):
        return None
    errors = error.errors if isinstance(error, BuildFailed) else [error]
    return next((e for e in errors if isinstance(e, CompilerFailure) and e.cut_at), None)


def _worst(result: BuildResult) -> float | None:
    cos = [c for art in result.models.values() for c in art.cosine.values()]
    return min(cos) if cos else None


def try_cuts(
    wd: WorkDir,
    recipe: Recipe,
    out_dir: Path,
    events: EventSink,
    original: DuoTpuError,
    failure: CompilerFailure,
    build_in: Callable[[Recipe, Path, EventSink], BuildResult],
) -> BuildResult:
    """Build the cuts from ``failure.cut_at`` back, each into a folder of the work directory,
    then the best verified one into ``out_dir``; raise ``original`` with the numbers when none
    verifies. ``build_in(recipe, out_dir, events)`` is the pipeline in the work directory."""
    onnx = wd.stages["export"].result.onnx
    candidates = export_mod.cuts_before(onnx, failure.cut_at, recipe.model.try_cuts)
    layer = failure.failure.tail_layer
    where = f"layer '{layer.name}' ({layer.op})" if layer is not None else "a last layer"
    events(
        StageEvent(
            "cut",
            "info",
            message=f"the compiler cannot build {where} for {recipe.chip} (the error says "
            f"why if no cut works): trying the TPU model cut at {', '.join(candidates)}, "
            "the rest on the CPU (--try-cuts 0: only suggest it)",
        )
    )
    tried: list[TriedCut] = []
    # the candidates' stages replace the failed one's folders: keep its log where it is said
    kept = wd.root / "cuts" / f"failed-{failure.step.replace(' ', '-')}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    if failure.log_path.is_file():
        shutil.copyfile(failure.log_path, kept)

    def quiet(ev: StageEvent) -> None:  # a candidate's stages show as one line each
        if ev.status in ("progress", "warning"):
            events(replace(ev, stage=f"cut {len(tried) + 1}/{len(candidates)}"))

    # the candidates are compared on their pure modes; the mixed-precision search a recipe asks
    # for runs once, on the cut delivered (a search per candidate multiplied the time)
    searching = bool(recipe.mix.target or recipe.mix.qtable)
    trial = replace(recipe, mix=replace(recipe.mix, target="", qtable="")) if searching else recipe
    for k, tensor in enumerate(candidates):
        events(StageEvent(f"cut {k + 1}/{len(candidates)}", "start"))
        t0 = time.monotonic()
        cut = replace(trial, model=replace(trial.model, outputs=(tensor,)))
        try:
            res = build_in(cut, wd.root / "cuts" / f"cut{k}", quiet)
            tried.append(TriedCut(tensor, "verified", _worst(res)))
        except PartialBuild as e:
            tried.append(TriedCut(tensor, "partial", _worst(e.result), str(e)))
        except ToleranceError as e:
            worst = min((m.measured for m in e.mismatches if m.metric == "cosine"), default=None)
            tried.append(TriedCut(tensor, "below the tolerance", worst, str(e)))
        except DuoTpuError as e:
            tried.append(TriedCut(tensor, "failed", None, str(e).split(". ")[0]))
        events(StageEvent(f"cut {k + 1}/{len(candidates)}", "info", message=tried[-1].said()))
        events(StageEvent(f"cut {k + 1}/{len(candidates)}", "done", time.monotonic() - t0))
    verified = [t for t in tried if t.outcome == "verified"]
    if not verified and searching:
        # the search may rescue an INT8 model below its tolerance: the closest cut gets it
        verified = [t for t in tried if t.outcome != "failed" and t.worst_cosine is not None]
    if not verified:
        raise _with_tries(original, tried, kept if kept.is_file() else None)
    # the cut that keeps the most on the TPU among those within NEAR of the best cosine: a
    # later cut puts more work on the board's CPU for a difference nobody would see
    top = max(t.worst_cosine or 0.0 for t in verified)
    best = next(t for t in verified if (t.worst_cosine or 0.0) >= top - NEAR)
    events(
        StageEvent(
            "cut",
            "info",
            message=f"delivering the cut at {best.tensor} (tried: "
            + "; ".join(t.said() for t in tried)
            + ")",
        )
    )
    result = build_in(replace(recipe, model=replace(recipe.model, outputs=(best.tensor,))),
                      out_dir, events)  # fmt: skip
    result.tried_cuts = [t.said() for t in tried]
    return result


def _with_tries(original: DuoTpuError, tried: list[TriedCut], log: Path | None) -> DuoTpuError:
    """The original error, its message followed by the cuts tried, how each ended and the
    flags that deliver the best of them."""
    note = "duotpu tried these cuts itself, none verified: " + "; ".join(t.said() for t in tried)
    scored = [t for t in tried if t.worst_cosine is not None]
    if scored:
        best = max(scored, key=lambda t: t.worst_cosine or 0.0)
        floor = math.floor((best.worst_cosine or 0.0) * 100) / 100
        note += (
            f". The closest is the cut at {best.tensor}: --cut-at {best.tensor} with "
            f"--verify-int8 {floor:.2f} (or --verify-bf16) accepts it as it is, or keep its "
            "weakest layers in BF16 with --target cos>=0.99, or build BF16 (--quantize bf16)"
        )
    if log is not None:
        note += f". The log of the first failure is kept as {log}"
    note += "."
    if isinstance(original, BuildFailed):
        original.note = note
    else:
        original.args = (f"{original} {note}",)
    return original
