"""Benchmark: how faithful the demo's INT8 and BF16 cvimodels are to fp32, with metrics that mean
something (see `duotpu eval`): top-1 agreement overall and on decisive images, top-5 containment
of the fp32 top-1, mean / worst output cosine, mean KL divergence.

Images: N random crops and flips of the photos that ship with scikit-image / scikit-learn, with a
seed (2026) different from the calibration set's (0). Optionally compares calibration methods by
building extra INT8 variants (`--methods kl,mse,...`). Prints a table and writes
bench/results/fidelity.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)
from duotpu.core import images, metrics
from duotpu.eval import evaluate
from duotpu.inference import runtime

HERE = Path(__file__).parent


def evaluate_build(folder: Path, paths: list[Path], margin: float) -> dict:
    out = {}
    fp32 = None
    for path in sorted(folder.glob("*.cvimodel")):
        m = runtime.open_model(path)
        tensors = runtime.tensors_for(m, paths)
        if fp32 is None:
            fp32 = np.stack([o[0].reshape(-1) for o in runtime.fp32_reference(m, tensors)])
        q, secs = evaluate.timed_infer(m, tensors, "mlir")
        out[m.mode] = metrics.compare(m.mode, fp32, q, margin, None, secs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build/efficientnet_lite0", help="the demo build")
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--margin", type=float, default=0.05)
    ap.add_argument("--methods", default="", help="extra INT8 builds, e.g. mse,max,percentile9999")
    ap.add_argument("--out", default=str(HERE / "results" / "fidelity.md"))
    args = ap.parse_args()
    folder = Path("build/fidelity-images")
    if not folder.is_dir() or len(list(folder.glob("*.jpg"))) != args.images:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for name, crop in images.random_crops(
            images.calibration_photos() + [("chelsea", images.builtin_photo("chelsea"))],
            args.images,
            seed=2026,
        ):
            images.save_image(folder / f"{name}.jpg", crop)
    paths = sorted(folder.glob("*.jpg"))
    rows = []
    for mode, m in evaluate_build(Path(args.build), paths, args.margin).items():
        rows.append((f"{mode.upper()} (demo build, kl)", m))
    recipe = str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml")
    for method in [x for x in args.methods.split(",") if x]:
        out = Path(f"build/fidelity-{method}")
        t0 = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "duotpu.cli",
                "build",
                "--recipe",
                recipe,
                "--quantize",
                "int8",
                "--calib-method",
                method,
                "--out",
                str(out),
                "--json",
            ],
            check=True,
            capture_output=True,
        )
        res = evaluate_build(out, paths, args.margin)["int8"]
        rows.append((f"INT8 ({method}, built in {time.monotonic() - t0:.0f} s)", res))
    lines = [
        f"# Fidelity to fp32 — EfficientNet-Lite0, {len(paths)} crops/flips (seed 2026), "
        f"decisive margin {args.margin}, {time.strftime('%Y-%m-%d')}",
        "",
        "| model | top-1 agree | decisive top-1 agree (n) | top-5 ∋ fp32 top-1 | "
        "mean cosine | worst cosine | mean KL |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m.top1_agree:.3f} | {m.decisive_top1_agree:.3f} "
            f"({m.decisive_n}) | {m.top5_contains_fp32_top1:.3f} | {m.cosine_mean:.4f} "
            f"| {m.cosine_worst:.4f} | {m.kl_mean:.4f} |"
        )
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
