"""Build several recipes, each as its own task (``duotpu build-many``).

Each recipe builds into ``out_root/NAME`` exactly as ``duotpu build`` would. On a Ray cluster a
task that runs on another node builds in a work directory of that node
(``~/.cache/duotpu/nodes/…``, where its cache stays) and sends its final files — cvimodels,
manifest, recipe, report — back to the caller's build folder. The model files a recipe names
must be at the same path on every node (a shared or copied folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from duotpu.compiler.executor import Executor, Outcome, Serial
from duotpu.config.errors import ConfigError, DuoTpuError, PartialBuild
from duotpu.config.recipe import Recipe
from duotpu.core.files import atomic_write

from .manifest import MANIFEST, Manifest
from .pipeline import build, default_out_dir
from .results import BuildResult


@dataclass(frozen=True)
class Built:
    """One recipe's build, as ``build-many`` reports it."""

    name: str
    out_dir: Path
    ok: bool
    error: str = ""
    node: str = ""
    seconds: float = 0.0
    cached: bool = False  # every stage came from the cache
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # mode → size, ION, cosine…
    report: Path | None = None


@dataclass(frozen=True)
class _Job:
    recipe: Recipe
    out_dir: str
    caller_node: str  # the caller's Ray node id ("" when serial): same node, same disk


@dataclass(frozen=True)
class _Shipped:
    built: Built
    files: dict[str, bytes]  # final files built on another node: name → contents


def _summary(result: BuildResult, out_dir: Path, error: str = "") -> Built:
    return Built(
        result.recipe.name,
        out_dir,
        not error and result.ok,
        error,
        cached=all(s.cached for s in result.stages),
        seconds=sum(s.seconds for s in result.stages if not s.cached),
        models={
            m: {
                "cvimodel": a.cvimodel.name,
                "size_bytes": a.size_bytes,
                "ion_mb": round(a.ion_mb, 3),
                "cosine": round(min(a.cosine.values()), 6),
                "est_ms": round(a.estimate.ms, 3) if a.estimate is not None else None,
            }
            for m, a in result.models.items()
        },
        report=out_dir / "report.html" if result.report else None,
    )


def _node_dir(out_dir: str) -> Path:
    digest = hashlib.sha256(out_dir.encode()).hexdigest()[:12]
    root = Path(os.environ.get("DUOTPU_NODE_DIR", Path.home() / ".cache" / "duotpu" / "nodes"))
    return root / f"{Path(out_dir).name}-{digest}"


def _build_one(job: _Job) -> _Shipped:
    """What a task runs: the build, and its final files when the caller is on another node."""
    here = ""
    if job.caller_node:
        import ray

        here = ray.get_runtime_context().get_node_id()
    remote = bool(job.caller_node) and here != job.caller_node
    out = _node_dir(job.out_dir) if remote else Path(job.out_dir)
    try:
        result, error = build(job.recipe, out), ""
    except PartialBuild as e:
        result, error = e.result, str(e)
    summary = _summary(result, Path(job.out_dir), error)
    files = _delivered(result, out) if remote else {}
    return _Shipped(summary, files)


#: the fp32 model shipped beside a build done on another node (its work folder stays there)
SHIPPED_ONNX = "{name}.fp32.onnx"


def _delivered(result: BuildResult, out: Path) -> dict[str, bytes]:
    """The files this build delivered (not whatever an earlier build left in the node's
    folder), and its fp32 ONNX, which eval and predict need on the caller's side."""
    r = result.recipe
    names = {a.cvimodel.name for a in result.models.values()}
    names |= {MANIFEST, "report.html", f"{r.name}.recipe.toml"}
    names |= {f"{r.name}{s}" for s in (".detect.json", ".tail.onnx", ".qtable", ".mix.md")}
    files = {n: (out / n).read_bytes() for n in sorted(names) if (out / n).is_file()}
    manifest = Manifest.from_json(json.loads(files[MANIFEST])) if MANIFEST in files else None
    fp32 = (manifest.reference_onnx or manifest.onnx) if manifest else None
    if fp32 and Path(fp32).is_file():
        files[SHIPPED_ONNX.format(name=r.name)] = Path(fp32).read_bytes()
    return files


def _receive(out_dir: Path, files: dict[str, bytes]) -> None:
    """Write files a task built on another node into the caller's build folder, atomically:
    plain names only (a name with a folder in it is refused), cvimodels an earlier build left
    there and this one did not deliver removed, and the manifest's paths made the caller's
    (the node's work folder is not here: its fast-path files are left out)."""
    bad = [n for n in files if n != Path(n).name or n in ("", ".", "..") or n.startswith(".")]
    if bad:
        raise DuoTpuError(
            f"A build on another node sent files named {', '.join(map(repr, bad))}: only plain "
            "file names are written into the build folder. Nothing was written."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.cvimodel"):
        if stale.name not in files:
            stale.unlink()
    for name, data in files.items():
        if name == MANIFEST:
            data = _local_manifest(data, out_dir, files)
        atomic_write(out_dir / name, data)


def _local_manifest(data: bytes, out_dir: Path, files: dict[str, bytes]) -> bytes:
    m = Manifest.from_json(json.loads(data))
    shipped = SHIPPED_ONNX.format(name=m.name)
    fp32 = str((out_dir / shipped).resolve()) if shipped in files else None
    m.work_dir = m.top_mlir = None
    m.onnx = m.reference_onnx = fp32
    for entry in m.models.values():
        entry.tpu_mlir = entry.tensor_info = None
    return json.dumps(m.to_json(), indent=2, default=str).encode()


def build_many(
    recipes: Sequence[Recipe],
    *,
    out_root: Path | None = None,
    executor: Executor | None = None,
    on_done: Callable[[Built], None] = lambda b: None,
) -> list[Built]:
    """Build every recipe (into ``out_root/NAME``, default ``build/NAME``) through ``executor``
    (default: one after another here). A recipe that fails does not stop the others; its
    `Built` says why. The results are in the recipes' order."""
    names = [r.name for r in recipes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"Several recipes are named {', '.join(dupes)}: each builds into a folder of its "
            "name. Give them different names (--set name=…, or the recipe's `name`)."
        )
    ex = executor or Serial()
    caller = getattr(ex, "node_id", "")
    jobs = [
        _Job(r, str((out_root / r.name) if out_root else default_out_dir(r)), caller)
        for r in recipes
    ]

    finished: dict[int, Built] = {}

    def done(o: Outcome[_Shipped]) -> None:
        b = finished[o.index] = _outcome_built(o, jobs)
        if o.value is not None and o.value.files:
            _receive(b.out_dir, o.value.files)
        on_done(b)

    ex.map(_build_one, jobs, labels=names, on_done=done)
    return [finished[i] for i in range(len(jobs))]


def _outcome_built(o: Outcome[_Shipped], jobs: list[_Job]) -> Built:
    job = jobs[o.index]
    if o.value is not None:
        b = o.value.built
        return Built(**{**b.__dict__, "node": o.node[:12], "seconds": b.seconds or o.seconds})
    assert o.failed is not None
    return Built(job.recipe.name, Path(job.out_dir), False, o.failed.error, o.node[:12])
