"""Automatic mixed precision: keep the fewest layers in BF16 for INT8 to reach a task target.

1. Measure the pure INT8 model on a validation set with the metric the user asked for
   (``agree``: top-1 agreement with fp32 on decisive images; ``cos``: mean output cosine), on
   the fast path (tpu_mlir's interpreter on the quantized MLIR, bit-exact with the simulator).
2. Rank layers by the error each one *adds*: the per-layer cosine to fp32 of its output minus
   the worst cosine of its inputs (a layer that only passes on upstream error is not blamed).
3. Build INT8 models with the top-k layers in BF16 (model_deploy ``--quantize_table``) for growing
   k, measure each, and stop at the first k that reaches the target; then narrow k by bisection.

Every candidate is a real cvimodel; the trade-off table lists the metric, size, board memory and
Duo fit of pure INT8, each step, and pure BF16.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import cvimodel as cvimodel_mod
from . import evaluate, toolchain
from .recipe import Recipe, parse_target

#: Ops whose precision can be chosen (the rest follow their inputs or hold no arithmetic).
_SKIP_TYPES = {"top.Input", "top.Reshape", "top.None", "top.Weight", "top.Squeeze",
               "top.Unsqueeze", "top.Flatten", "top.Permute"}
DUO_ION_MB = cvimodel_mod.BOARDS["duo"][2]


@dataclass
class Candidate:
    """One row of the trade-off table."""
    label: str
    layers: list[str]
    metric: float
    meets: bool
    size_bytes: int
    ion_mb: float
    fits_duo: bool
    cvimodel: str = ""
    tpu_mlir: str = ""
    model_outputs: str = ""
    all_bf16: bool = False  # the pure BF16 model (``layers`` is then empty)

    @property
    def n_bf16(self) -> int:
        return len(self.layers)

    @property
    def shown_bf16(self) -> str:
        return "all" if self.all_bf16 else str(self.n_bf16)


def read_qtable(path: Path) -> list[str]:
    """Layer names of a quantize table (``name MODE`` lines, ``#`` comments)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.split()[0])
    return out


def write_qtable(path: Path, layers: list[str], note: str = "") -> Path:
    """A quantize table keeping ``layers`` in BF16 (tpu_mlir's format; edit it by hand freely)."""
    lines = ["# duotpu mixed-precision table: layers kept in BF16 (one 'name BF16' a line)."]
    if note:
        lines.append(f"# {note}")
    lines += [f"{name} BF16" for name in layers]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def metric(kind: str, fp32: np.ndarray, q: np.ndarray, margin: float) -> float:
    """The target metric of a classifier's quantized outputs ``q`` against ``fp32`` (rows are
    images)."""
    m = evaluate.compare("q", fp32, q, margin, None, 1.0)
    if kind == "cos":
        return m.cosine_mean
    # no decisive image in the set (e.g. an untrained model): all images count
    return m.decisive_top1_agree if m.decisive_n else m.top1_agree


Scorer = Callable[[list[dict[str, np.ndarray]]], float]


def scorer(recipe: Recipe, kind: str, fp32: list[list[np.ndarray]], image_hws, head=None) \
        -> Scorer:
    """The target metric as a function of a candidate's outputs (one dict per validation image,
    by the cvimodel's output names). Classifiers: ``agree`` / ``cos`` on the first output.
    Detectors (``head``): ``map`` — mAP@0.5 of the candidate's detections taking the fp32
    model's (at ``detect.conf``) as ground truth — or ``cos``, the mean cosine of the head maps."""
    if head is None:
        ref = np.stack([o[0].reshape(-1) for o in fp32])

        def classify(outs):
            first = next(iter(outs[0]))
            return metric(kind, ref, np.stack([o[first].reshape(-1) for o in outs]),
                          recipe.mix.margin)
        return classify
    from .detect import MAP_CONF, as_truth, coco_map, maps_in_order, per_image
    from .metrics import cosine
    opt, pre = recipe.detect, recipe.preprocess
    truth = as_truth(per_image(head, fp32, pre, image_hws, opt))

    def detect(outs):
        maps = [maps_in_order(head, o) for o in outs]
        if kind == "cos":
            return float(np.mean([cosine(a, b) for f, q in zip(fp32, maps)
                                  for a, b in zip(f, q)]))
        found = per_image(head, maps, pre, image_hws, opt, MAP_CONF)
        return coco_map(truth, found, head.nc)["map50"]
    return detect


def rank_layers(per_layer: list[tuple[str, float]], graph: dict[str, dict]) -> \
        list[tuple[str, float]]:
    """Layers by the error they add (their cosine drop against their inputs), largest first."""
    cos = {}
    for name, c in per_layer:
        cos[name] = c
        if name.endswith("_f32"):  # the compiler's cast copies of outputs
            cos.setdefault(name[:-4], c)
    drops = []
    for name, op in graph.items():
        if op["type"] in _SKIP_TYPES or name not in cos:
            continue
        ins = [cos[i] for i in op["inputs"] if i in cos]
        drops.append((name, (min(ins) if ins else 1.0) - cos[name]))
    return sorted(drops, key=lambda kv: -kv[1])


def search(recipe: Recipe, folder: Path, *, transformed, table: Path, int8_tpu_mlir: Path,
           int8_cvimodel: Path, bf16_cvimodel: Path | None, bf16_tpu_mlir: Path | None,
           val_tensors: list[np.ndarray], score: Scorer,
           graph: dict[str, dict], per_layer: list[tuple[str, float]],
           seed_layers: list[str] = (),
           log: Callable[[str], None] = lambda m: None) -> tuple[list[Candidate], int]:
    """Run the search; returns the trade-off rows and the index of the chosen one."""
    mix = recipe.mix
    kind, need = parse_target(mix.target) if mix.target else ("cos", 0.0)
    tol = recipe.tolerance

    def measure(tpu_mlir: Path, cvi: Path, work: Path) -> tuple[float, int, float]:
        info = cvimodel_mod.read_cvimodel(cvi)
        names = [t.name for t in info.programs[0].outputs]
        jobs = []
        for i, x in enumerate(val_tensors):
            src = work / f"val{i:04d}.npz"
            if not src.exists():
                np.savez(src, **{info.programs[0].inputs[0].name: x})
            jobs.append((src, work / f"out{i:04d}.npz"))
        outs = toolchain.run_many("mlir", tpu_mlir, jobs, work / "run", names, workers=2)
        got = []
        for o in outs:
            with np.load(o) as z:
                got.append({n: np.array(z[n]) for n in names})
            o.unlink()
        return score(got), info.file_size, info.ion_mb

    valdir = folder / "val"
    valdir.mkdir(parents=True, exist_ok=True)

    def row(label: str, layers: list[str], tpu: Path, cvi: Path, outputs: str = "",
            all_bf16: bool = False) -> Candidate:
        m, size, ion = measure(tpu, cvi, valdir)
        c = Candidate(label, layers, m, m >= need, size, ion, ion <= DUO_ION_MB,
                      str(cvi.relative_to(folder)) if cvi.is_relative_to(folder) else str(cvi),
                      str(tpu.relative_to(folder)) if tpu.is_relative_to(folder) else str(tpu),
                      outputs, all_bf16)
        log(f"{label}: {kind} {m:.4f} ({'meets' if c.meets else 'below'} {need}), "
            f"{c.shown_bf16} BF16 layer(s), ION {ion:.2f} MB")
        return c

    def build(layers: list[str], label: str) -> Candidate:
        sub = folder / f"k{len(layers):03d}"
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir(parents=True)
        qt = write_qtable(sub / "qtable.txt", layers)
        files = toolchain.deploy(transformed, sub, sub / "deploy.log", quantize="int8",
                                 chip=recipe.chip, cvimodel_name=f"{recipe.name}_mix.cvimodel",
                                 calibration_table=table, quantize_table=qt,
                                 tolerance=tol.int8, correctness=(0.98, 0.80))
        return row(label, layers, files.tpu_mlir, files.cvimodel,
                   str(files.model_outputs.relative_to(folder)))

    rows = [row("pure INT8", [], int8_tpu_mlir, int8_cvimodel)]
    if mix.qtable:
        rows.append(build(read_qtable(Path(mix.qtable)), f"table {Path(mix.qtable).name}"))
        chosen = 1
    else:
        by_drop = [n for n, _ in rank_layers(per_layer, graph)]
        # tpu_mlir's fast_search picks come first (its own trials found them), ordered by the
        # error they add; then the rest by the error they add.
        seeds = [n for n in by_drop if n in set(seed_layers)] + \
            [n for n in seed_layers if n not in by_drop]
        ranked = (seeds + [n for n in by_drop if n not in seeds])[:mix.max_layers]
        tried: dict[int, Candidate] = {}
        if not rows[0].meets:
            steps = {k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48) if k <= len(ranked)}
            steps.add(len(ranked))
            if seeds and len(seeds) <= len(ranked):
                steps.add(len(seeds))  # fast_search's own set is always a candidate
            steps = sorted(steps)
            lo = 0
            for k in steps:
                tried[k] = build(ranked[:k], f"INT8 + {k} BF16")
                if tried[k].meets:
                    hi = k
                    while hi - lo > 1:  # the smallest k in (lo, hi] that meets the target
                        mid = (lo + hi) // 2
                        tried[mid] = build(ranked[:mid], f"INT8 + {mid} BF16")
                        lo, hi = (lo, mid) if tried[mid].meets else (mid, hi)
                    break
                lo = k
        rows += [tried[k] for k in sorted(tried)]
        meeting = [i for i, r in enumerate(rows) if r.meets]
        chosen = min(meeting, key=lambda i: rows[i].n_bf16) if meeting else \
            max(range(len(rows)), key=lambda i: (rows[i].metric, -rows[i].n_bf16))
    if bf16_cvimodel is not None and bf16_tpu_mlir is not None:
        rows.append(row("pure BF16", [], bf16_tpu_mlir, bf16_cvimodel, all_bf16=True))
    if mix.pick >= 0:
        picks = [i for i, r in enumerate(rows) if r.n_bf16 == mix.pick and not r.all_bf16]
        if not picks:
            from .errors import ConfigError
            raise ConfigError(f"mix.pick = {mix.pick}: no trade-off row has {mix.pick} BF16 "
                              f"layers; the rows have "
                              f"{', '.join(str(r.n_bf16) for r in rows if not r.all_bf16)}.")
        chosen = picks[0]
    return rows, chosen


def rows_json(rows: list[Candidate]) -> list[dict]:
    return [asdict(r) | {"n_bf16": r.n_bf16} for r in rows]


def save_table_md(path: Path, rows: list[Candidate], chosen: int, target: str) -> Path:
    lines = [f"| | candidate | BF16 layers | {target or 'metric'} | size | ION | fits Duo |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for i, r in enumerate(rows):
        lines.append(f"| {'→' if i == chosen else ''} | {r.label} | "
                     f"{r.shown_bf16} | {r.metric:.4f} | "
                     f"{r.size_bytes / 1e6:.2f} MB | {r.ion_mb:.2f} MB | "
                     f"{'yes' if r.fits_duo else 'no'} |")
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)




def per_layer_cos(tpu_mlir: Path, top_mlir: Path, tensors: list[np.ndarray], input_name: str,
                  work: Path, per_channel: bool = False) -> list[tuple[str, float]]:
    """Mean cosine of every tensor of a quantized MLIR to the fp32 MLIR's, worst first
    (``per_channel``: averaged over channels, see :func:`channel_cosine`)."""
    from . import metrics
    work.mkdir(parents=True, exist_ok=True)
    jobs_q, jobs_f = [], []
    for i, x in enumerate(tensors):
        src = work / f"in{i}.npz"
        np.savez(src, **{input_name: x})
        jobs_q.append((src, work / f"q{i}.npz"))
        jobs_f.append((src, work / f"f{i}.npz"))
    toolchain.run_many("mlir", tpu_mlir, jobs_q, work / "q", [], workers=2)
    toolchain.run_many("mlir", top_mlir, jobs_f, work / "f", [], workers=2)
    sims: dict[str, list[float]] = {}
    for (_, qo), (_, fo) in zip(jobs_q, jobs_f):
        with np.load(qo) as q, np.load(fo) as f:
            for name in q.files:
                if name in f.files and q[name].size == f[name].size:
                    sims.setdefault(name, []).append(
                        channel_cosine(f[name], q[name].reshape(f[name].shape)) if per_channel
                        else metrics.cosine(f[name], q[name]))
    return sorted(((n, float(np.mean(v))) for n, v in sims.items()), key=lambda kv: kv[1])


def channel_cosine(ref: np.ndarray, got: np.ndarray) -> float:
    """Cosine per channel (axis 1), averaged: a channel with a huge range cannot hide the error
    of the small ones, as it does in a cosine over the whole tensor. Tensors with fewer than
    16 values per channel (a squeeze-excitation's pooled vector, a classifier's logits) use
    the whole-tensor cosine: the cosine of one or two numbers is only their sign, and a
    near-zero channel whose sign flips would look like the worst error of the model."""
    from . import metrics
    if ref.ndim < 2 or ref.shape[1] == 1 or ref.size // ref.shape[1] < 16:
        return metrics.cosine(ref, got)
    r = np.moveaxis(ref, 1, 0).reshape(ref.shape[1], -1)
    g = np.moveaxis(got, 1, 0).reshape(ref.shape[1], -1)
    vals = [metrics.cosine(a, b) for a, b in zip(r, g) if np.any(a) or np.any(b)]
    return float(np.mean(vals)) if vals else 1.0
