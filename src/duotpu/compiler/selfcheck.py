"""``python -m duotpu.compiler.selfcheck``: prove the installed compiler runs on this machine.

Run by ``make install``. It starts one tpu_mlir binary and one tpu_mlir Python tool through
`duotpu.compiler` (so with the glibc fix) and fails loudly if either cannot start; then it
generates the cvimodel reader's flatbuffers code from tpu_mlir's schema.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from duotpu import compiler
from duotpu.config.errors import DuoTpuError


def check() -> list[str]:
    """Run the checks; returns lines describing what worked. Raises on failure."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "model_tool.log"
        try:
            compiler.run_tool("selfcheck", "model_tool", [], Path(tmp), log)
        except DuoTpuError:
            pass  # model_tool without arguments prints its usage and exits 1
        text = log.read_text(errors="replace")
        if "--info" not in text:
            raise DuoTpuError("model_tool did not start:\n" + compiler.log_tail(log))
        lines.append("model_tool starts (system glibc preloaded)")
        log = Path(tmp) / "model_transform.log"
        compiler.run_tool("selfcheck", "model_transform", ["-V"], Path(tmp), log)
        lines.append("tpu_mlir Python tools start: " + compiler.log_tail(log, 1))
    from duotpu.compiler.fbsgen import generate_cvimodel_code
    from duotpu.cvimodel.schema import model_class

    folder = generate_cvimodel_code()
    model_class()
    lines.append(f"cvimodel reader ready (flatc code from tpu_mlir's cvimodel.fbs in {folder})")
    lines.append(f"tpu_mlir {compiler.versions()['tpu_mlir']} at {compiler.tpu_mlir_root()}")
    return lines


def main() -> int:
    try:
        for line in check():
            print("selfcheck:", line)
    except DuoTpuError as e:
        print(f"selfcheck failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
