"""Benchmark: duotpu's mixed-precision search vs tpu_mlir's own fast_search, on held-out images.

1. `duotpu build --target TARGET` runs duotpu's region search (sensitivity of contiguous
   regions by the task metric, greedy union, bisection trim) on the search images.
2. tpu_mlir's cosine-driven `run_calibration --search fast_search` is run at every setting of
   `--expected_cos` in --sweep (its one knob), and each table it picks is built as a real
   cvimodel — so fast_search is reported at its best setting for the target, and at the layer
   counts its settings give.
3. Every candidate of both searches, pure INT8 and pure BF16 is then measured with the same
   metric on a **held-out** split: images the search never saw (another seed of the built-in
   crops, or the files of the --mix-images folder after the ones the search used). The table
   picks each method's answer on the search split and reports it on the held-out split.

Prints a table and writes bench/results/mix.md (or --out).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)

HERE = Path(__file__).parent


def held_out(recipe, count: int):
    """Validation images the search did not see: the built-in crops with another seed, or
    the folder's files after the first ``mix.count``."""
    from duotpu.core import images

    mix = recipe.mix
    if mix.images.startswith("builtin:"):
        photos = images.calibration_photos() + [("chelsea", images.builtin_photo("chelsea"))]
        return [c for _, c in images.random_crops(photos, count, mix.seed + 5000)]
    paths = images.scan_images(Path(mix.images)).paths[mix.count : mix.count + count]
    if not paths:
        sys.exit(
            f"{mix.images} has no images beyond the {mix.count} the search uses; "
            "give a bigger folder or a smaller mix.count"
        )
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="agree>=0.95")
    ap.add_argument("--out", default=str(HERE / "results" / "mix.md"))
    ap.add_argument(
        "--recipe",
        help="another model's recipe (default: the demo's), e.g. "
        "build/bench-mix/mnv3_photos.toml from bench/mnv3_photos.py",
    )
    ap.add_argument(
        "--sweep",
        default="0.99,0.995,0.999,0.9999",
        help="fast_search --expected_cos settings to build and measure",
    )
    ap.add_argument("--held-out", type=int, default=100, help="held-out images")
    args = ap.parse_args()

    from duotpu import compiler, cvimodel
    from duotpu.builder import mixprec, pipeline
    from duotpu.config.recipe import load_recipe, parse_target
    from duotpu.core import onnxrt
    from duotpu.core.preprocess import load_bgr, preprocess_image

    path = args.recipe or str(resources.files("duotpu") / "recipes" / "efficientnet_lite0.toml")
    recipe = load_recipe(path, {"mix.target": args.target})
    model = Path(path).stem
    out = Path("build/mix-bench") / model / "duotpu"
    t0 = time.monotonic()
    res = pipeline.build(recipe, out)
    build_secs = time.monotonic() - t0
    stages = {s.name: s for s in res.stages}
    mix_stage, tr, cal = stages["mix"], stages["transform"], stages["calibrate"]
    goal = parse_target(args.target)
    kind, need = goal.metric, goal.value
    rows = res.mix.rows
    search_secs = mix_stage.seconds - res.mix.fast_search_seconds

    # fast_search at every setting, each table built as a real cvimodel
    transformed = tr.result.files
    opts = pipeline.deploy_options(recipe, "int8", tr.result.test_image)
    sweep_dir = out.parent / "fast_search_sweep"
    fast = []
    for cos in [float(x) for x in args.sweep.split(",") if x]:
        sub = sweep_dir / f"cos{cos}"
        shutil.rmtree(sub, ignore_errors=True)
        t1 = time.monotonic()
        layers = compiler.fast_search(
            transformed,
            cal.result.images,
            cal.result.count,
            sub / "search",
            chip=recipe.chip,
            expected_cos=cos,
        )
        secs = time.monotonic() - t1
        if layers:
            qt = mixprec.write_qtable(sub / "qtable.txt", layers)
            files = compiler.deploy(
                transformed,
                sub / "deploy",
                sub / "deploy.log",
                opts,
                cvimodel_name=f"{recipe.name}_fs.cvimodel",
                calibration_table=cal.result.table,
                quantize_table=qt,
            )
            cvi, tpu = files.cvimodel, files.tpu_mlir
        else:  # no layer kept: that is pure INT8
            cvi = res.models["int8"].cvimodel
            tpu = res.models["int8"].tpu_mlir
        fast.append(
            {
                "label": f"fast_search expected_cos {cos}",
                "layers": layers,
                "cvi": cvi,
                "tpu": tpu,
                "secs": secs,
            }
        )

    # one scorer per split, the same metric the search uses
    shape = recipe.inputs[0].shape
    head = res.head

    def scorer(images):
        tensors = [preprocess_image(im, recipe.preprocess, shape) for im in images]
        fp32 = onnxrt.onnx_outputs(res.onnx, tensors)
        hws = (
            [
                (im.shape[:2] if isinstance(im, np.ndarray) else load_bgr(im, False).shape[:2])
                for im in images
            ]
            if head is not None
            else []
        )
        score = mixprec.scorer(recipe, kind, fp32, hws, head)

        def measure(tpu_mlir: Path, cvi: Path) -> float:
            prog = cvimodel.read_cvimodel(cvi).programs[0]
            got = compiler.run_tensors(
                "mlir", tpu_mlir, prog.inputs[0].name, tensors, [t.name for t in prog.outputs]
            )
            return score(got)

        return measure

    search_measure = scorer(pipeline.validation_images(recipe))
    held_measure = scorer(held_out(recipe, args.held_out))

    table = []  # every candidate: label, BF16 layers, search metric, held-out metric, ION
    for r in rows:
        table.append(
            {
                "label": r.label,
                "n": "all" if r.all_bf16 else r.n_bf16,
                "search": r.metric,
                "held": held_measure(r.tpu_mlir, r.cvimodel),
                "ion": r.ion_mb,
                "method": "duotpu",
                "row": r,
            }
        )
    for f in fast:
        info = cvimodel.read_cvimodel(f["cvi"])
        table.append(
            {
                "label": f["label"],
                "n": len(f["layers"]),
                "search": search_measure(f["tpu"], f["cvi"]),
                "held": held_measure(f["tpu"], f["cvi"]),
                "ion": info.ion_mb,
                "method": "fast_search",
                "secs": f["secs"],
            }
        )

    def answer(method: str):
        """The method's pick on the search split: fewest BF16 layers that meet the target,
        else its best metric."""
        cand = [
            t
            for t in table
            if t["method"] == method and t["n"] != "all" and t["label"] != "pure INT8"
        ]
        meets = [t for t in cand if t["search"] >= need]
        if meets:
            return min(meets, key=lambda t: (t["n"], -t["search"]))
        return max(cand, key=lambda t: t["search"]) if cand else None

    def line(name: str, t, when: str = "") -> str:
        if t is None:
            return f"| {name} | — | — | — | — | — | {when} |"
        return (
            f"| {name} | {t['n']} | {t['search']:.4f} | {t['held']:.4f} | "
            f"{'yes' if t['held'] >= need else 'no'} | {t['ion']:.2f} MB | {when} |"
        )

    own_builds = sum(1 for r in rows[1:] if not r.all_bf16 and r.label != "tpu_mlir fast_search")
    int8 = table[0]
    bf16 = next((t for t in table if t["n"] == "all"), None)
    own = answer("duotpu")
    fs = answer("fast_search")
    fs_secs = sum(f["secs"] for f in fast)
    n_search, n_held = len(pipeline.validation_images(recipe)), args.held_out
    lines = [
        f"# Mixed precision on {model} (cv180x), target {args.target}, {time.strftime('%Y-%m-%d')}",
        "",
        f"Search split: {n_search} images (what both searches choose on); held-out split: "
        f"{n_held} images neither search saw (what the table reports). fast_search swept "
        f"over expected_cos {args.sweep}; its answer is its fewest-layer setting that meets "
        "the target on the search split.",
        "",
        "| method | BF16 layers | metric (search) | metric (held-out) | meets (held-out) "
        "| ION | search time |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
        line("pure INT8", int8),
        line("duotpu region search", own, f"{search_secs:.0f} s ({own_builds} builds)"),
        line(
            "tpu_mlir fast_search, best setting",
            fs,
            f"{fs['secs']:.0f} s" if fs and "secs" in fs else "",
        ),
        line("pure BF16", bf16),
        "",
        f"Build with the search: {build_secs:.0f} s (cached stages count 0); fast_search "
        f"sweep: {fs_secs:.0f} s for {len(fast)} settings.",
        "",
        "Every candidate:",
        "",
        "| # | method | candidate | BF16 layers | metric (search) | metric (held-out) | ION |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {i + 1} | {t['method']} | {t['label']} | {t['n']} | {t['search']:.4f} | "
        f"{t['held']:.4f} | {t['ion']:.2f} MB |"
        for i, t in enumerate(table)
    ]
    if own is not None:
        lines += ["", f"duotpu's BF16 layers: {', '.join(own['row'].layers) or '(none)'}"]
    if fs is not None:
        f = next(x for x in fast if x["label"] == fs["label"])
        lines += [
            "",
            f"fast_search's BF16 layers ({fs['label']}): {', '.join(f['layers']) or '(none)'}",
        ]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
