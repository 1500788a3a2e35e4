"""Delivering a build: the final files under the user's names, the manifest, and what a
partial build records."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from duotpu import compiler, latency
from duotpu.builder import summary
from duotpu.config.recipe import Recipe
from duotpu.core import onnxrt
from duotpu.core.files import atomic_write

from .manifest import MANIFEST, Manifest, ManifestModel
from .mixing import picked_mix
from .prepare import exported_head, test_feed
from .quantize import cvimodel_file
from .results import (
    BuildResult,
    Deployed,
    Exported,
    Mixed,
    ModelArtifact,
    Referenced,
    Transformed,
    Verified,
)
from .verify import cosine_to_reference
from .workdir import (
    Stage,
    WorkDir,
    atomic_copy,
    to_json,
)


def delivered_name(recipe: Recipe, mode: str) -> str:
    """The file name of a delivered cvimodel: the user's model name (the work folder's copy
    has tpu_mlir's `tool_name`)."""
    return cvimodel_file(recipe.name, recipe, mode)


def default_out_dir(recipe: Recipe) -> Path:
    """Where a build puts its final files unless told otherwise: ``build/<name>``."""
    return Path("build") / recipe.name


def estimate_latency(cvimodel: Path) -> Any:
    """The board-free latency estimate of a delivered cvimodel (None if it cannot be read)."""
    try:
        return latency.estimate(cvimodel)
    except (ValueError, KeyError, IndexError, struct.error):
        return None


def write_failures(result: BuildResult) -> None:
    """Record in the manifest which modes were not delivered, and why."""
    assert result.listing is not None  # finish wrote it
    result.listing.failed = dict(result.failed)
    result.listing.failed_stages = {n: round(t, 3) for n, t in result.failed_stages.items()}
    result.listing.write(result.manifest)


def finish(
    recipe: Recipe,
    out_dir: Path,
    wd: WorkDir,
    exported: Stage[Exported],
    transformed: Stage[Transformed],
    referenced: Stage[Referenced],
    results: dict[str, tuple[Stage[Deployed], Stage[Verified]]],
    mixed: Stage[Mixed] | None = None,
    estimates: dict[str, Any] | None = None,
) -> BuildResult:
    """Copy the final files into ``out_dir`` atomically and write the build manifest
    (``estimates``: the latency estimates the branches made, by mode)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = dict(np.load(referenced.result.reference))
    models: dict[str, ModelArtifact] = {}
    for mode in [m for m in recipe.quantize if m in results]:
        dep, ver = results[mode][0].result, results[mode][1].result
        final = atomic_copy(dep.cvimodel, out_dir / delivered_name(recipe, mode))
        got = dict(np.load(ver.whole_outputs or dep.model_outputs))
        models[mode] = ModelArtifact(
            mode,
            final,
            dep.size_bytes,
            dep.ion_mb,
            ver.cosine,
            {n: got[k].reshape(reference[n].shape) for n, k in ver.outputs.items()},
            dep.tpu_mlir,
            ver.per_image,
            (estimates or {}).get(mode) or estimate_latency(final),
            dep.simulated,
        )
    mix = None
    if mixed is not None:
        from duotpu.builder import mixprec

        mix = picked_mix(recipe, mixed)
        best = mix.best
        final = atomic_copy(best.cvimodel, out_dir / f"{recipe.name}_{recipe.chip}_mix.cvimodel")
        produced_file = mixprec.test_outputs(best, transformed.result.test_input)
        best_outputs = produced_file
        if exported.result.tail is not None:
            best_outputs = wd.root / "mix" / "outputs-whole.npz"
            produced = dict(np.load(produced_file))
            fed = test_feed(transformed.result)
            np.savez(best_outputs, **onnxrt.run_tail(exported.result.tail, produced, fed))
        cos, names = cosine_to_reference(referenced.result.reference, best_outputs)
        got = dict(np.load(best_outputs))
        models["mix"] = ModelArtifact(
            "mix",
            final,
            best.size_bytes,
            best.ion_mb,
            cos,
            {n: got[k].reshape(reference[n].shape) for n, k in names.items()},
            best.tpu_mlir,
            (),
            estimate_latency(final),
        )
        note = f"{best.label}: {mix.target or 'given table'} -> {best.metric:.4f}"
        if best.all_bf16:
            note += " (the whole model in BF16, which a table cannot say: use the BF16 cvimodel)"
        atomic_write(
            out_dir / f"{recipe.name}.qtable", mixprec.qtable_text(list(best.layers), note)
        )
        atomic_write(
            out_dir / f"{recipe.name}.mix.md",
            mixprec.table_md(mix.rows, mix.chosen, mix.target, mix.failed),
        )
    head = exported.result.head
    if head is not None:
        atomic_copy(head, out_dir / f"{recipe.name}.detect.json")
    tail = exported.result.tail
    if tail is not None:
        tail = atomic_copy(tail, out_dir / f"{recipe.name}.tail.onnx")
    recipe_path = atomic_write(out_dir / f"{recipe.name}.recipe.toml", recipe.to_toml())
    t = transformed.result
    order = [
        "export",
        "transform",
        "reference",
        "calibrate",
        "round",
        # a failed mode's stages that did finish ran too (a partial build's report shows them)
        *[f"deploy-{m}" for m in recipe.quantize],
        *[f"verify-{m}" for m in recipe.quantize],
        "mix",
    ]
    stages = [wd.stages[n] for n in order if n in wd.stages]
    # layer id → name files, for the latency estimate's per-layer view (the mixed model's
    # files carry its candidate's name)
    infos = {
        m: str(
            (
                a.tpu_mlir.parent / f"{(mix.best if m == 'mix' and mix else a).cvimodel.stem}"
                "_tensor_info.txt"
            ).resolve()
        )
        for m, a in models.items()
        if a.tpu_mlir
    }
    manifest = out_dir / MANIFEST
    listing = Manifest(
        name=recipe.name,
        chip=recipe.chip,
        recipe=recipe.to_dict(),
        versions=compiler.versions(),
        work_dir=str(wd.root.resolve()),
        input_name=exported.result.input_name,
        # the files other commands need from the work directory, so none of them has to know
        # its layout or tpu_mlir's file names (read by duotpu.builder.manifest)
        onnx=str(exported.result.onnx.resolve()),
        reference_onnx=str(exported.result.reference_onnx.resolve()),
        tail=tail.name if tail is not None else None,
        task=recipe.task,
        top_mlir=str(t.mlir.resolve()),
        models={
            m: ManifestModel(
                cvimodel=a.cvimodel.name,
                size_bytes=a.size_bytes,
                ion_mb=a.ion_mb,
                cosine_vs_fp32=dict(a.cosine),
                sha256=compiler.file_digest(a.cvimodel),
                tpu_mlir=str(a.tpu_mlir.resolve()) if a.tpu_mlir else None,
                tensor_info=infos.get(m),
                estimate=latency.as_dict(a.estimate, top=0) if a.estimate else None,
                verified_on=(
                    "CV18xx simulator"
                    if a.simulated
                    else "quantized MLIR (the simulator cannot load this cvimodel)"
                ),
                fits={f.board: f.fits for f in summary.board_fits(recipe.chip, a.ion_mb)},
                verified_images=max(len(a.per_image), 1),
                worst_image_cosine=min(a.per_image) if a.per_image else None,
            )
            for m, a in models.items()
        },
        stages=[
            {
                "name": s.name,
                "cached": s.cached,
                "seconds": round(s.seconds, 3),
                "key": s.key,
                "result": to_json(s.result, s.folder),
            }
            for s in stages
        ],
    )
    listing.write(manifest)
    return BuildResult(
        recipe,
        out_dir,
        wd.root,
        exported.result.onnx,
        dict(np.load(t.test_input)),
        reference,
        models,
        stages,
        manifest,
        recipe_path,
        mix,
        exported_head(exported),
        t.test_image,
        listing=listing,
    )
