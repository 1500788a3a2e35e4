"""Benchmark: the plain CV18xx simulator vs duotpu's eval path on the demo model.

(a) plain: `model_runner.py --model M --input x.npz --output y.npz`, one process per image, one
    after another — how the seed's tools evaluate a cvimodel on the host;
(b) duotpu: the eval path — tpu_mlir's interpreter on the quantized MLIR, the model loaded once
    per worker (once more for its second image, a check), two workers — on the same images,
    checked against (a): INT8 must be bit-exact; for BF16 the largest difference is reported.

Needs a demo build (`make demo`, or pass --build DIR). Prints a table and writes it to
bench/results/eval.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)
from duotpu import compiler
from duotpu.core import images
from duotpu.inference import runtime

HERE = Path(__file__).parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build/efficientnet_lite0")
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--out", default=str(HERE / "results" / "eval.md"))
    args = ap.parse_args()
    build = Path(args.build)
    models = sorted(build.glob("*.cvimodel"))
    if not models:
        sys.exit(f"no cvimodel in {build}: run `make demo` first")
    crops = images.random_crops(images.calibration_photos(), args.images, seed=4242)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for path in models:
            m = runtime.open_model(path)
            tensors = runtime.tensors_for(m, [c for _, c in crops])
            t0 = time.monotonic()
            plain = []
            for i, x in enumerate(tensors):
                src, dst = tmp / f"{m.mode}-in{i}.npz", tmp / f"{m.mode}-out{i}.npz"
                np.savez(src, **{m.input_name: x})
                compiler.run_cvimodel(path, src, dst, tmp / f"{m.mode}-{i}.log")
                with np.load(dst) as z:
                    plain.append(np.array(z[m.output_names[0]]).ravel())
            t_plain = time.monotonic() - t0
            t0 = time.monotonic()
            fast = runtime.infer(m, tensors, backend="mlir")
            t_fast = time.monotonic() - t0
            diff = max(
                float(np.max(np.abs(a - b[m.output_names[0]].ravel()))) for a, b in zip(plain, fast)
            )
            rows.append(
                (
                    m.mode.upper(),
                    len(tensors),
                    len(tensors) / t_plain,
                    len(tensors) / t_fast,
                    t_plain / t_fast,
                    diff,
                )
            )
    lines = [
        f"# duotpu eval path vs the plain CV18xx simulator — {build.name}, "
        f"{args.images} images, {time.strftime('%Y-%m-%d')}",
        "",
        "| model | images | plain simulator (img/s) | duotpu eval path (img/s) | speed-up | "
        "largest output difference |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, n, a, b, s, d in rows:
        lines.append(
            f"| {mode} | {n} | {a:.2f} | {b:.2f} | {s:.1f}× | "
            f"{'0 (bit-exact)' if d == 0 else f'{d:.4g}'} |"
        )
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
