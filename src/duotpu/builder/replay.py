"""``save_input_files``: an archive with a build's inputs and a shell script that replays the
exact compiler commands it ran (the old tool's ``--save_input_files``).

The commands come from the stages' records (every command a stage runs goes through
`duotpu.compiler.runner.run_argv`, which records it), so the script holds what really ran,
with the machine's absolute paths rewritten to the archive's own layout::

    NAME_inputs/
      NAME.onnx  inputs/TEST_IMAGE  calibration/*.jpg  replay.sh  README.txt

``replay.sh`` runs model_transform, run_calibration and model_deploy (INT8 / BF16) one after
another in ``transform/``, ``calibrate/``, ``deploy-MODE/`` inside tpu_mlir's environment (the
Docker image, or a Python with the tpu_mlir wheel whose tools are on PATH).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from duotpu.config.errors import DataError

if TYPE_CHECKING:
    from duotpu.builder.results import BuildResult
    from duotpu.builder.workdir import Stage

_TOOLS = {"transform": "model_transform", "calibrate": "run_calibration", "deploy": "model_deploy"}


def _command(stage: Stage[Any]) -> tuple[str, list[str]]:
    """The compiler command a stage ran, from its record (``Stage.commands``)."""
    tool = _TOOLS[stage.name.split("-")[0]]
    for c in stage.commands:
        if any(Path(a).name.startswith(tool) for a in c.argv[:2]):
            return str(c.cwd), list(c.argv)
    raise DataError(
        f"The {stage.name} stage's record holds no {tool} command (it was made by an older "
        "duotpu); rebuild without the cache to archive it."
    )


def write_input_archive(result: BuildResult, out: Path | None = None) -> Path:
    """Write ``NAME_inputs.tar.gz`` (beside the build's cvimodels unless ``out``) for a
    `BuildResult` of a plain (batch 1) build."""
    r = result.recipe
    work = Path(result.work_dir).resolve()
    name = r.name
    out = Path(out) if out else result.out_dir / f"{name}_inputs.tar.gz"
    by_name = {s.name: s for s in result.stages}
    names = ["transform", *(["calibrate"] if "int8" in r.quantize else [])]
    names += [f"deploy-{m}" for m in r.quantize]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise DataError(
            f"The build has no {', '.join(missing)} stage to archive (a multi-batch or mixed "
            "build is not archived); rebuild."
        )
    steps = [(n, _command(by_name[n])) for n in names]
    onnx = Path(result.onnx).resolve()
    if result.test_image_path is None:
        raise DataError("The build has no test image to archive; rebuild it with test_image set.")
    test_image = result.test_image_path.resolve()
    cal_dir = (work / "calibrate" / "images").resolve() if "int8" in r.quantize else None
    with tempfile.TemporaryDirectory(prefix="duotpu-archive-") as tmp:
        root = Path(tmp) / f"{name}_inputs"
        (root / "inputs").mkdir(parents=True)
        shutil.copyfile(onnx, root / onnx.name)
        shutil.copyfile(test_image, root / "inputs" / test_image.name)
        rewrite = {
            str(onnx): f"../{onnx.name}",
            str(test_image): f"../inputs/{test_image.name}",
            str(work / "calibrate" / f"{name}_cali_table"): f"../calibrate/{name}_cali_table",
        }
        if cal_dir is not None:
            (root / "calibration").mkdir()
            for p in sorted(cal_dir.iterdir()):
                shutil.copyfile(p.resolve(), root / "calibration" / p.name)
            rewrite[str(cal_dir)] = "../calibration"
            rewrite[str((work / "calibrate" / "images"))] = "../calibration"
        lines = [
            "#!/bin/sh",
            f"# Replays the compiler commands of the duotpu build of {name}",
            "# (run inside tpu_mlir's environment: its tools must be on PATH).",
            "set -e",
            'cd "$(dirname "$0")"',
            "mkdir -p transform calibrate " + " ".join(f"deploy-{m}" for m in r.quantize),
        ]
        for stage, (_cwd, argv) in steps:
            tool = (
                Path(argv[1]).name
                if argv[0].endswith(("python", "python3"))
                else Path(argv[0]).name
            )
            args: list[str] = []
            for a in argv[2 if tool.endswith(".py") else 1 :]:
                for src, dst in sorted(rewrite.items(), key=lambda kv: -len(kv[0])):
                    a = a.replace(src, dst)
                if a.startswith(str(work)):  # a file of the stage's own (temporary) folder
                    a = Path(a).name
                if args[-1:] == ["--tolerance"] and stage.startswith("deploy-"):
                    # duotpu deploys with the check off and checks in its verify stage; the
                    # replay makes model_deploy check at the recipe's tolerance itself
                    tol = r.tolerance.int8 if stage == "deploy-int8" else r.tolerance.bf16
                    a = f"{tol[0]},{tol[1]}"
                args.append(a)
            setup = ""
            if stage == "calibrate":
                setup = (
                    f"ln -sf ../transform/{name}.mlir ../transform/"
                    f"{name}_top_f32_all_weight.npz . && "
                )
            elif stage.startswith("deploy-"):
                setup = " ".join(
                    [
                        "cp",
                        *[
                            f"../transform/{f}"
                            for f in (
                                f"{name}.mlir",
                                f"{name}_top_f32_all_weight.npz",
                                f"{name}_in_f32.npz",
                                f"{name}_top_outputs.npz",
                            )
                        ],
                        ". && ",
                    ]
                )
            lines.append(f"(cd {stage} && {setup}{shlex.join([tool, *args])})")
        lines.append("echo 'replayed: deploy-*/*.cvimodel'")
        script = root / "replay.sh"
        script.write_text("\n".join(lines) + "\n")
        script.chmod(0o755)
        (root / "README.txt").write_text(
            f"Inputs of the duotpu build of {name} ({r.chip}: {', '.join(r.quantize)}).\n"
            "sh replay.sh re-runs the exact tpu_mlir commands duotpu ran.\n"
        )
        tmp_out = out.with_name(f".{out.name}.part")
        with tarfile.open(tmp_out, "w:gz") as tar:
            tar.add(root, arcname=root.name)
        os.replace(tmp_out, out)
    return out
