"""Typed errors. Library code raises these; only `duotpu.cli` turns them into messages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DuoTpuError(Exception):
    """Base class of every error duotpu raises on purpose (a user-facing, one-paragraph message)."""


class ConfigError(DuoTpuError, ValueError):
    """A recipe or a command-line option is wrong: unknown key, wrong type, value out of range."""


class ModelError(DuoTpuError):
    """A model file or model source cannot be loaded, exported or does not match the recipe."""


class ShapeError(ConfigError, ModelError):
    """The recipe's input shape contradicts the model's, or nothing settles a free dim: the user
    settles it with ``inputs.shape`` (``--input-shape``), so it is a usage error (exit 2)."""


class DataError(DuoTpuError):
    """Input images or tensors (calibration set, test input) are missing or unreadable."""


class BusyError(DuoTpuError):
    """Another process holds what this one needs (a build in the same work folder)."""


class SetupError(DuoTpuError):
    """The toolchain itself is missing or broken (wrong Python, tpu_mlir not installed...)."""


class ToolchainError(DuoTpuError):
    """A compiler step failed. Carries the step name, the command, its log and the log's tail."""

    def __init__(
        self, step: str, argv: list[str], returncode: int, log_path: Path, tail: str, hint: str = ""
    ):
        self.step, self.argv, self.returncode = step, argv, returncode
        self.log_path, self.tail, self.hint = Path(log_path), tail, hint
        msg = f"The {step} step failed (exit code {returncode})."
        if hint:
            msg += f" {hint}"
        msg += f" Full log: {log_path}"
        super().__init__(msg)


class CompilerFailure(ToolchainError):
    """A compiler or simulator failure duotpu recognised (an op the chip cannot run, a layer
    too large for its local memory): the message names the layer, op, chip limit and the ways
    around; ``failure`` holds them (a `duotpu.compiler.diagnose.Failure`)."""

    def __init__(self, base: ToolchainError, explanation: str, failure: Any, cut_at: str = ""):
        super().__init__(
            base.step, base.argv, base.returncode, base.log_path, base.tail, explanation
        )
        self.failure = failure
        self.cut_at = cut_at  # the model tensor to end the TPU model at, when that is a way


@dataclass
class Mismatch:
    """One tensor whose similarity is below what the recipe requires."""

    tensor: str
    metric: str
    measured: float
    required: float


class ToleranceError(DuoTpuError):
    """A verification found a model output less similar to the fp32 reference than required."""

    def __init__(
        self,
        what: str,
        mismatches: list[Mismatch],
        advice: str,
        log_path: Path | None = None,
        cut_at: str = "",
    ):
        self.what, self.mismatches, self.advice = what, mismatches, advice
        self.log_path = log_path
        self.cut_at = cut_at  # the model tensor to end the TPU model at, when the advice says so
        parts = ", ".join(
            f"tensor '{m.tensor}' {m.metric} {m.measured:.6f} < required {m.required}"
            for m in mismatches
        )
        super().__init__(f"Verification of {what} failed: {parts}. {advice}")


class BuildFailed(DuoTpuError):
    """More than one branch of a build failed (e.g. INT8 and BF16): every error, in order."""

    def __init__(self, errors: list[BaseException]):
        self.errors = list(errors)
        self.note = ""  # what the build tried about them (the cuts it built), said after them
        super().__init__(
            " ".join(
                f"({i}) {type(e).__name__ if not str(e) else e}"
                for i, e in enumerate(self.errors, 1)
            )
        )


class PartialBuild(BuildFailed):
    """Some modes failed, the others were built and verified and are delivered: ``result`` is
    the build of the delivered modes (a `duotpu.builder.results.BuildResult`), ``errors``
    the failures by mode in recipe order."""

    def __init__(self, result: Any, failed: dict[str, BaseException]):
        super().__init__(list(failed.values()))
        self.result, self.failed = result, dict(failed)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT: Ctrl-C, SIGTERM: a supervisor or ``kill``);
    every child process was stopped and the finished stages kept."""

    def __init__(self, signum: int = 2):
        self.signum = signum
        super().__init__(f"stopped by signal {signum}")


class BoardError(DuoTpuError):
    """Talking to a board over SSH failed, or the board refused the model."""
