"""Automatic mixed precision: keep the fewest layers in BF16 for INT8 to reach a task target.

The target is the metric the user cares about (``agree``: top-1 agreement with fp32 on decisive
images; ``cos``: mean output cosine; ``map``: a detector's mAP@0.5 against fp32's detections),
measured on a validation set on the fast path (tpu_mlir's interpreter on the quantized MLIR,
bit-exact with the simulator). The search (see `search`) measures where INT8 hurts by
building the model with one contiguous region in BF16 at a time, adds regions until the target
is met, then trims them by bisection.

Every candidate is a real cvimodel; the trade-off table lists the metric, size, board memory and
Duo fit of pure INT8, each candidate, and pure BF16.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from duotpu import compiler, latency
from duotpu import cvimodel as cvimodel_mod
from duotpu.compiler.executor import Executor
from duotpu.config import chips
from duotpu.config.errors import ModelError, ToleranceError, ToolchainError
from duotpu.config.recipe import Mix, Recipe
from duotpu.core import metrics

from .workdir import tool_name

if TYPE_CHECKING:
    from duotpu.core.head import YoloHead

#: Ops whose precision can be chosen (the rest follow their inputs or hold no arithmetic).
_SKIP_TYPES = {
    "top.Input",
    "top.Reshape",
    "top.None",
    "top.Weight",
    "top.Squeeze",
    "top.Unsqueeze",
    "top.Flatten",
    "top.Permute",
}
DUO_ION_MB = chips.BOARDS["duo"].ion_mb


@dataclass(frozen=True)
class Built:
    """A model the search measures: its quantized MLIR (the fast path), its cvimodel and the
    outputs model_deploy recorded for the test input."""

    tpu_mlir: Path
    cvimodel: Path
    model_outputs: Path | None  # the cvimodel's outputs on the test input (None: not run yet)


@dataclass(frozen=True)
class Candidate:
    """One row of the trade-off table: a real cvimodel, its test outputs and its quantized MLIR
    (the fast path), and what was measured about it."""

    label: str
    layers: tuple[str, ...]
    metric: float
    meets: bool
    size_bytes: int
    ion_mb: float
    fits_duo: bool
    cvimodel: Path
    model_outputs: Path | None  # on the test input, once checked on the simulator
    tpu_mlir: Path
    all_bf16: bool = False  # the pure BF16 model (``layers`` is then empty)
    est_ms: float = 0.0  # the board-free latency estimate (0: not estimated)
    # where ``metric`` was measured: the quantized MLIR (fast), or the cvimodel on the
    # simulator when the two disagreed on the test input
    measured_on: str = "mlir"
    # why the compiler could not make this candidate (its files do not exist; never a row)
    failed: str = ""
    # where its time went, in seconds: model_deploy, the metric on the validation set, and the
    # check of the cvimodel on the simulator against the quantized MLIR (`bench/mix.py`)
    deploy_s: float = 0.0
    measure_s: float = 0.0
    check_s: float = 0.0
    # its cvimodel was run on the simulator and compared with the quantized MLIR: done for every
    # candidate that meets the target and for the one delivered (a check costs a simulator run
    # per input, several seconds each on a large model)
    checked: bool = True

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


def qtable_text(layers: list[str], note: str = "") -> str:
    """A quantize table keeping ``layers`` in BF16 (tpu_mlir's format; edit it by hand freely)."""
    lines = ["# duotpu mixed-precision table: layers kept in BF16 (one 'name BF16' a line)."]
    if note:
        lines.append(f"# {note}")
    return "\n".join(lines + [f"{name} BF16" for name in layers]) + "\n"


def write_qtable(path: Path, layers: list[str], note: str = "") -> Path:
    """Write `qtable_text` to ``path``."""
    Path(path).write_text(qtable_text(layers, note))
    return Path(path)


def metric(kind: str, fp32: NDArray[Any], q: NDArray[Any], margin: float) -> float:
    """The target metric of a classifier's quantized outputs ``q`` against ``fp32`` (rows are
    images)."""
    m = metrics.compare("q", fp32, q, margin, None, 1.0)
    if kind == "cos":
        return m.cosine_mean
    # no decisive image in the set (e.g. an untrained model): all images count
    return m.decisive_top1_agree if m.decisive_n else m.top1_agree


Scorer = Callable[[list[dict[str, NDArray[Any]]]], float]


def scorer(
    recipe: Recipe,
    kind: str,
    fp32: list[list[NDArray[Any]]],
    image_hws: Sequence[tuple[int, int]],
    head: YoloHead | None = None,
) -> Scorer:
    """The target metric as a function of a candidate's outputs (one dict per validation image,
    by the cvimodel's output names). Classifiers: ``agree`` / ``cos`` on the first output.
    Other models with several outputs: ``cos`` is the mean over images of the least similar
    output's cosine (what verification checks), so no output is left out.
    Detectors (``head``): ``map`` — mAP@0.5 of the candidate's detections taking the fp32
    model's (at ``detect.conf``) as ground truth — or ``cos``, the mean cosine of the head maps."""
    from duotpu.core.metrics import cosine

    if head is None and kind == "cos" and len(fp32[0]) > 1:

        def every_output(outs: list[dict[str, NDArray[Any]]]) -> float:
            # the cvimodel's outputs come in the ONNX model's output order
            return float(
                np.mean(
                    [
                        min(cosine(f.reshape(-1), q.reshape(-1)) for f, q in zip(f32, o.values()))
                        for f32, o in zip(fp32, outs)
                    ]
                )
            )

        return every_output
    if head is None:
        ref = np.stack([o[0].reshape(-1) for o in fp32])

        def classify(outs: list[dict[str, NDArray[Any]]]) -> float:
            first = next(iter(outs[0]))
            return metric(
                kind, ref, np.stack([o[first].reshape(-1) for o in outs]), recipe.mix.margin
            )

        return classify
    from duotpu.core.detect import MAP_CONF, as_truth, coco_map, maps_in_order, per_image

    opt, pre = recipe.detect, recipe.preprocess
    truth = as_truth(per_image(head, fp32, pre, image_hws, opt))

    def detect(outs: list[dict[str, NDArray[Any]]]) -> float:
        maps = [maps_in_order(head, o) for o in outs]
        if kind == "cos":
            return float(np.mean([cosine(a, b) for f, q in zip(fp32, maps) for a, b in zip(f, q)]))
        found = per_image(head, maps, pre, image_hws, opt, MAP_CONF)
        return coco_map(truth, found, head.nc)["map50"]

    return detect


def graph_order(graph: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, list[str]]]:
    """The layers whose precision can be chosen, in graph order, and each one's consumers
    among them (looking through reshapes and the like, which hold no arithmetic)."""
    direct: dict[str, list[str]] = {}
    for name, op in graph.items():
        for i in op["inputs"]:
            direct.setdefault(i, []).append(name)
    order = [n for n, op in graph.items() if op["type"] not in _SKIP_TYPES]

    def users(name: str) -> list[str]:
        out = []
        for c in direct.get(name, []):
            out += [c] if graph[c]["type"] not in _SKIP_TYPES else users(c)
        return out

    return order, {n: users(n) for n in order}


def regions(order: list[str], consumers: dict[str, list[str]], count: int) -> list[list[str]]:
    """``order`` cut into ``count`` contiguous runs, each closed over the consumers of its
    layers. A tensor's INT8 error only goes away when its producer *and* every consumer run in
    BF16: a lone BF16 layer still hands an INT8-quantized output to the next layer. Closing each
    run over its consumers makes every tensor internal to the run that produces it."""
    count = max(1, min(count, len(order)))
    bounds = [round(i * len(order) / count) for i in range(count + 1)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        inside = set(order[a:b]) | {c for n in order[a:b] for c in consumers.get(n, [])}
        out.append([n for n in order if n in inside])
    return out


def search(
    recipe: Recipe,
    folder: Path,
    *,
    transformed: compiler.TransformFiles,
    table: Path,
    options: compiler.DeployOptions,
    int8: Built | None,
    bf16: Built | None,
    val_tensors: list[NDArray[Any]],
    score: Scorer,
    graph: dict[str, dict[str, Any]],
    fast_search_layers: list[str] | None = None,
    log: Callable[[str], None] = lambda m: None,
    executor: Executor | None = None,
    agree: float = 0.99,
    float_weights: FloatWeights | None = None,
) -> tuple[list[Candidate], int, list[Candidate]]:
    """Run the search; returns the trade-off rows, the index of the row that meets the
    target with the fewest BF16 layers (or, when none does, of the best one), and the
    candidates the compiler could not make.

    1. Sensitivity: the choosable layers, in graph order, are cut into ``mix.regions``
       contiguous regions (see `regions`); an INT8 model with one region in BF16 is built
       and measured for each. The task metric, not a per-layer cosine, says where INT8 hurts: a
       small error early in the network can matter more than a large one near the output.
    2. Regions are added to BF16, the most helpful first, until the target is met.
    3. Each region of that set is dropped if the others meet the target without it, else
       trimmed by bisection: first its shortest head, then its latest start, that still meets.
    tpu_mlir's ``fast_search`` table, when given, is one more candidate. Every candidate is a
    real cvimodel measured on the validation set: through its quantized MLIR when the two agree
    on the test input (every output's cosine at least ``agree``), else on the simulator. With a
    parallel ``executor`` the candidates of step 1 are built as parallel tasks (steps 2–3
    depend on each other's results). With ``float_weights`` (a model whose INT8 rounding was
    optimized) a candidate's BF16 layers take their weights from before the rounding.
    """
    mix = recipe.mix
    kind, need = (mix.goal.metric, mix.goal.value) if mix.goal else ("cos", 0.0)

    def row(label: str, layers: list[str], model: Built, all_bf16: bool = False) -> Candidate:
        c = _candidate(label, tuple(layers), model, val_tensors, score, need, all_bf16, agree=agree)
        _log_row(log, kind, need, c)
        return c

    built: dict[frozenset[str], Candidate] = {}

    def job(layers: list[str], label: str, number: int) -> _CandidateJob:
        return _CandidateJob(
            label,
            tuple(layers),
            folder / f"c{number:03d}",
            recipe.name,
            transformed,
            table,
            options,
            val_tensors,
            score,
            need,
            agree,
            float_weights,
        )

    def build(layers: list[str], label: str) -> Candidate:
        key = frozenset(layers)
        if key not in built:
            built[key] = _build_candidate(job(layers, label, len(built) + 1))
            _log_row(log, kind, need, built[key])
        return built[key]

    def prebuild(specs: list[tuple[list[str], str]]) -> None:
        """Build candidates that do not depend on each other as parallel tasks (the
        sensitivity pass); later ``build`` calls find them done. Numbered as a serial run
        numbers them, so both runs leave the same folders."""
        if executor is None or executor.workers <= 1:
            return
        jobs: list[_CandidateJob] = []
        keys: list[frozenset[str]] = []
        for layers, label in specs:
            key = frozenset(layers)
            if key not in built and key not in keys:
                keys.append(key)
                jobs.append(job(layers, label, len(built) + len(jobs) + 1))
        outcomes = executor.map(_build_candidate, jobs, labels=[j.label for j in jobs])
        for key, o in zip(keys, outcomes):
            if o.failed is not None:
                raise o.failed.exception or ModelError(
                    f"The mixed-precision candidate {o.failed.label} failed: {o.failed.error}"
                )
            assert o.value is not None
            built[key] = o.value
            _log_row(log, kind, need, o.value)

    # no pure INT8 model from the deploy stage (it missed model_deploy's tolerance): build it as
    # the search's first candidate
    rows = [row("pure INT8", [], int8) if int8 is not None else build([], "pure INT8")]
    given: Candidate | None = None
    if mix.qtable:
        given = build(read_qtable(Path(mix.qtable)), f"table {Path(mix.qtable).name}")
    elif not rows[0].meets:
        if fast_search_layers:
            build(fast_search_layers, "tpu_mlir fast_search")
        _search_regions(graph, mix, build, rows[0].metric, prebuild)
    rows += [c for c in built.values() if c is not rows[0]]
    failed = [c for c in rows if c.failed]
    rows = [c for c in rows if not c.failed]
    if not rows:
        raise ModelError(
            "No mixed-precision candidate could be built: "
            + "; ".join(f"{c.label}: {c.failed}" for c in built.values())
        )
    chosen = choose(rows, given, mix.qtable)
    # the answer is checked on the simulator before it is delivered; one that fails its check
    # is measured there, and the choice made again
    while not rows[chosen].checked:
        rows[chosen] = checked(
            rows[chosen], val_tensors, score, need, agree, transformed.test_input
        )
        _log_row(log, kind, need, rows[chosen])
        chosen = choose(rows, rows[chosen] if given is not None else None, mix.qtable)
    if bf16 is not None:
        rows.append(row("pure BF16", [], bf16, all_bf16=True))
    return rows, chosen, failed


def choose(rows: list[Candidate], given: Candidate | None = None, qtable: str = "") -> int:
    """The row the build delivers: the given table's (it must have compiled), else the fewest
    BF16 layers among the rows that meet the target, else the best metric."""
    if given is not None:  # the given table is the answer, met or not
        if given.failed:
            raise ModelError(
                f"The quantize table {qtable} cannot be compiled: {given.failed}. Change the "
                "layers it keeps in BF16, or let duotpu search (--target cos>=0.99)."
            )
        same = [i for i, r in enumerate(rows) if r is given or r.layers == given.layers]
        return same[0]
    meeting = [i for i, r in enumerate(rows) if r.meets]
    if meeting:
        return min(meeting, key=lambda i: (rows[i].n_bf16, -rows[i].metric))
    return max(range(len(rows)), key=lambda i: (rows[i].metric, -rows[i].n_bf16))


#: validation inputs on which every candidate's cvimodel is checked against its quantized MLIR
#: before the MLIR (three times faster) measures it: the test image alone once missed a fast
#: path that was wrong on every input after the first (NOTES.md, session 22)
SIM_CHECK = 2


def _disagree(
    mlir: list[dict[str, NDArray[Any]]], sim: list[dict[str, NDArray[Any]]], agree: float
) -> bool:
    """True when some output of some input is less similar than ``agree`` between the two."""
    return any(_lowest_cosine(m, s) < agree for m, s in zip(mlir, sim))


def _lowest_cosine(a: Mapping[str, NDArray[Any]], b: Mapping[str, NDArray[Any]]) -> float:
    """The lowest cosine over the tensors both hold with the same size (1.0 if none)."""
    from duotpu.core.metrics import cosine

    common = [k for k in a if k in b and a[k].size == b[k].size]
    return min((cosine(a[k], b[k]) for k in common), default=1.0)


def _log_row(log: Callable[[str], None], kind: str, need: float, c: Candidate) -> None:
    if c.failed:
        log(f"{c.label}: not built, {c.n_bf16} BF16 layer(s): {c.failed}")
        return
    log(
        f"{c.label}: {kind} {c.metric:.4f} ({'meets' if c.meets else 'below'} {need}), "
        f"{c.shown_bf16} BF16 layer(s), ION {c.ion_mb:.2f} MB, est. {c.est_ms:.3g} ms"
        + (" (measured on the simulator)" if c.measured_on == "simulator" else "")
        + (
            f"; {c.deploy_s + c.measure_s + c.check_s:.0f} s (deploy {c.deploy_s:.0f}, "
            f"measure {c.measure_s:.0f}, check {c.check_s:.0f})"
            if c.deploy_s
            else ""
        )
    )


def _candidate(
    label: str,
    layers: tuple[str, ...],
    model: Built,
    val_tensors: list[NDArray[Any]],
    score: Scorer,
    need: float,
    all_bf16: bool = False,
    *,
    agree: float = 0.99,
    on_simulator: bool = False,
    check: bool | None = None,
    test_input: Path | None = None,
    measured: float | None = None,
) -> Candidate:
    """A built model measured: the task metric on the validation set, size, ION, estimate.

    The metric comes from the quantized MLIR (fast). The cvimodel is then checked against it on
    the simulator — on the first `SIM_CHECK` validation inputs, every output's cosine at
    least ``agree`` — when ``check``, or (``check`` None) when the candidate meets the target:
    only those can be the answer, and a check costs a simulator run per input. A candidate
    that fails its check is measured on the simulator instead (the cvimodel is what the board
    runs); ``on_simulator`` measures it there from the start. A model without outputs on the
    test input yet (``model.model_outputs`` None) gets them from the check's simulator run
    (``test_input``: model_transform's input file). ``measured``: the metric on the quantized
    MLIR, known from an earlier run (the check then runs the MLIR on its inputs only)."""
    info = cvimodel_mod.read_cvimodel(model.cvimodel)
    prog = info.programs[0]
    name, outs = prog.inputs[0].name, [t.name for t in prog.outputs]
    model_outputs = model.model_outputs

    def simulate(feeds: list[Any]) -> list[dict[str, NDArray[Any]]]:
        nonlocal model_outputs
        extra = [dict(np.load(test_input))] if model_outputs is None and test_input else []
        got = _simulate(model.cvimodel, feeds + extra)
        if extra:
            model_outputs = _save_test_outputs(model.cvimodel, got.pop())
        return got

    def on_mlir(feeds: list[Any]) -> list[dict[str, NDArray[Any]]]:
        return compiler.run_tensors("mlir", model.tpu_mlir, name, feeds, outs)

    # the latency estimate (pure Python, ~1 s on a recognizer) beside the metric's tool runs
    estimating = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    est = estimating.submit(lambda: latency.estimate(model.cvimodel).ms)
    estimating.shutdown(wait=False)
    t0 = time.monotonic()
    check_s = 0.0
    checked = on_simulator
    m = measured if measured is not None else 0.0
    if not on_simulator:
        got: list[dict[str, NDArray[Any]]] = []
        if measured is None:
            got = on_mlir(list(val_tensors))
            m = score(got)
        if check or (check is None and m >= need):
            t1 = time.monotonic()
            head = got[:SIM_CHECK] or on_mlir(list(val_tensors[:SIM_CHECK]))
            sim = simulate(list(val_tensors[:SIM_CHECK]))
            check_s = time.monotonic() - t1
            on_simulator = _disagree(head, sim, agree)
            checked = True
    if on_simulator:
        m = score(simulate(list(val_tensors)))
    measure_s = time.monotonic() - t0 - check_s
    return Candidate(
        label,
        layers,
        m,
        m >= need,
        info.file_size,
        info.ion_mb,
        info.ion_mb <= DUO_ION_MB,
        model.cvimodel,
        model_outputs,
        model.tpu_mlir,
        all_bf16,
        est.result(),
        "simulator" if on_simulator else "mlir",
        measure_s=round(measure_s, 2),
        check_s=round(check_s, 2),
        checked=checked,
    )


def _simulate(cvimodel: Path, feeds: list[Any]) -> list[dict[str, NDArray[Any]]]:
    """The cvimodel's outputs on each of ``feeds`` (inputs by name, or arrays), on the
    simulator."""
    prog = cvimodel_mod.read_cvimodel(cvimodel).programs[0]
    names = [t.name for t in prog.outputs]
    return compiler.run_tensors("cvimodel", cvimodel, prog.inputs[0].name, feeds, names)


def _save_test_outputs(cvimodel: Path, outputs: dict[str, NDArray[Any]]) -> Path:
    """Keep a candidate's outputs on the test input beside its cvimodel (what the delivered
    model's ``*_model_outputs.npz`` is)."""
    path = cvimodel.with_name(f"{cvimodel.stem}_model_outputs.npz")
    np.savez(path, **outputs)
    return path


def test_outputs(c: Candidate, test_input: Path) -> Path:
    """The candidate's cvimodel outputs on the test input (model_transform's input file), run
    on the simulator now when the search did not (a row picked with ``mix.pick``)."""
    if c.model_outputs is not None:
        return c.model_outputs
    return _save_test_outputs(c.cvimodel, _simulate(c.cvimodel, [dict(np.load(test_input))])[0])


def checked(
    c: Candidate,
    val_tensors: list[NDArray[Any]],
    score: Scorer,
    need: float,
    agree: float,
    test_input: Path | None,
) -> Candidate:
    """``c`` checked on the simulator (see `_candidate`); as it is when it was."""
    if c.checked or c.failed:
        return c
    again = _candidate(
        c.label,
        c.layers,
        Built(c.tpu_mlir, c.cvimodel, c.model_outputs),
        val_tensors,
        score,
        need,
        c.all_bf16,
        agree=agree,
        check=True,
        test_input=test_input,
        measured=c.metric if c.measured_on == "mlir" else None,
    )
    return dataclasses.replace(again, deploy_s=c.deploy_s)


@dataclass(frozen=True)
class _CandidateJob:
    """One candidate to build: everything a task needs, wherever it runs (a shared disk)."""

    label: str
    layers: tuple[str, ...]
    folder: Path
    name: str
    transformed: Any
    table: Path
    options: compiler.DeployOptions
    val_tensors: list[NDArray[Any]]
    score: Scorer
    need: float
    agree: float = 0.99
    float_weights: FloatWeights | None = None


#: a rounded model's original weights file and its rounded layers' weights (layer → weight
#: name): a candidate's BF16 layers take their weights from it
FloatWeights = tuple[Path, dict[str, str]]


def _with_float_weights(
    transformed: compiler.TransformFiles,
    layers: tuple[str, ...],
    float_weights: FloatWeights,
    folder: Path,
) -> compiler.TransformFiles:
    """The transformed files with the weights of ``layers`` (kept in BF16) put back to their
    values before INT8 rounding (in ``folder``); the same files when none of them was rounded."""
    original, rounded = float_weights
    names = sorted({rounded[layer] for layer in layers if layer in rounded})
    if not names:
        return transformed
    out = compiler.TransformFiles(folder, transformed.name)
    folder.mkdir(parents=True, exist_ok=True)
    for src, dst in ((transformed.mlir, out.mlir), (transformed.test_input, out.test_input),
                     (transformed.top_outputs, out.top_outputs)):  # fmt: skip
        dst.symlink_to(src.resolve())
    with np.load(transformed.weights) as z:
        weights = {k: np.array(z[k]) for k in z.files}
    with np.load(original) as z:
        weights.update({k: np.array(z[k]) for k in names})
    np.savez(out.weights, **weights)
    return out


CANDIDATE_FILE = "candidate.json"  # written last: the candidate is complete


def _finished(job: _CandidateJob) -> Candidate | None:
    """The candidate an interrupted run of the same search finished in ``job.folder``."""
    from .workdir import from_json

    try:
        c: Candidate = from_json(
            Candidate, json.loads((job.folder / CANDIDATE_FILE).read_text()), job.folder
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    paths = [p for p in (c.cvimodel, c.model_outputs, c.tpu_mlir) if p is not None]
    if (c.label, c.layers) != (job.label, job.layers):
        return None
    return c if c.failed or all(p.is_file() for p in paths) else None


def _build_candidate(job: _CandidateJob) -> Candidate:
    """Deploy an INT8 model with ``job.layers`` in BF16 and measure it (or take it from an
    interrupted run of the same search: a rerun does not rebuild finished candidates)."""
    from .workdir import to_json, write_json

    done = _finished(job)
    if done is not None:
        return done
    sub = job.folder
    shutil.rmtree(sub, ignore_errors=True)
    sub.mkdir(parents=True)
    qt = write_qtable(sub / "qtable.txt", list(job.layers))
    # model_deploy's own run of the test input (the quantized MLIR, the simulator, two
    # comparisons) is most of a deploy's time (1.3 of 9.9 s without it, PP-OCRv5 rec): the
    # search measures and checks the candidate itself. A fused-preprocess model takes raw
    # pixels, which only model_deploy's run feeds: those keep it.
    validate = bool(job.options.fuse_preprocess)
    source = job.transformed
    if job.float_weights is not None:
        source = _with_float_weights(source, job.layers, job.float_weights, sub / "float")
    t0 = time.monotonic()
    try:
        files = compiler.deploy(
            source,
            sub,
            sub / "deploy.log",
            job.options,
            cvimodel_name=f"{tool_name(job.name)}_mix.cvimodel",
            calibration_table=job.table,
            quantize_table=qt,
            validate=validate,
        )
    except (ToleranceError, ToolchainError) as e:
        # this set of BF16 layers cannot be compiled: the search goes on without it; its paths
        # are its folder (nothing else was made)
        reason = " ".join(str(e).split())
        c = Candidate(
            job.label, job.layers, -1.0, False, 0, 0.0, False, sub, None, sub, failed=reason[:400]
        )
        write_json(sub / CANDIDATE_FILE, to_json(c, sub))
        return c
    deploy_s = round(time.monotonic() - t0, 2)
    if validate:
        c = _candidate(
            job.label,
            job.layers,
            Built(files.tpu_mlir, files.cvimodel, files.model_outputs),
            job.val_tensors,
            job.score,
            job.need,
            agree=job.agree,
            on_simulator=agreement(files.model_outputs, files.tpu_outputs) < job.agree,
            check=False,
        )
        c = dataclasses.replace(c, checked=True)  # model_deploy compared the two
    else:
        c = _candidate(
            job.label,
            job.layers,
            Built(files.tpu_mlir, files.cvimodel, None),
            job.val_tensors,
            job.score,
            job.need,
            agree=job.agree,
            test_input=job.transformed.test_input,
        )
    c = dataclasses.replace(c, deploy_s=deploy_s)
    # the rest is intermediate (tens of MB per candidate); the quantized MLIR and its weights
    # stay for the fast path (`duotpu eval` of the picked candidate)
    keep = {
        files.cvimodel,
        files.cvimodel.with_name(f"{files.cvimodel.stem}_tensor_info.txt"),  # layer names
        *([c.model_outputs] if c.model_outputs is not None else []),
        qt,
        sub / "deploy.log",
        files.tpu_mlir,
        *compiler.mlir_weight_files(files.tpu_mlir),
    }
    for f in sub.iterdir():
        if f not in keep:
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    write_json(sub / CANDIDATE_FILE, to_json(c, sub))
    return c


def agreement(model_outputs: Path, tpu_outputs: Path) -> float:
    """The lowest cosine between the cvimodel's outputs on the simulator and its quantized
    MLIR's, on the test input (1.0 when model_deploy wrote no MLIR outputs to compare).

    With BF16 layers among INT8 ones the two can disagree (tpu_mlir 1.30, cv180x: cosine
    0.97 on MobileNetV4 with its first layers in BF16, while pure INT8 and pure BF16 agree);
    the cvimodel is what the board runs, so such a candidate is measured on the simulator."""
    if not tpu_outputs.is_file():
        return 1.0
    with np.load(model_outputs) as got, np.load(tpu_outputs) as ref:
        return _lowest_cosine(dict(got), dict(ref))


def _search_regions(
    graph: dict[str, dict[str, Any]],
    mix: Mix,
    build: Callable[[list[str], str], Candidate],
    int8_metric: float,
    prebuild: Callable[[list[tuple[list[str], str]]], None] = lambda specs: None,
) -> None:
    """Steps 1–3 of `search`; every candidate goes through ``build`` (which remembers)."""
    order, consumers = graph_order(graph)
    index = {n: i for i, n in enumerate(order)}
    runs = {
        no: run
        for no, run in enumerate(regions(order, consumers, mix.regions), 1)
        if len(run) <= mix.max_layers
    }
    prebuild([(run, f"sensitivity: region {no} ({_span(run, index)})") for no, run in runs.items()])
    gain = {
        no: build(run, f"sensitivity: region {no} ({_span(run, index)})").metric - int8_metric
        for no, run in runs.items()
    }
    # most helpful first; on a tie the earlier region (an early error grows downstream)
    chosen: dict[int, list[str]] = {}
    for no in sorted(runs, key=lambda no: (-gain[no], no)):
        chosen[no] = runs[no]
        layers = _union(chosen.values(), index)
        if len(layers) > mix.max_layers:
            return
        if build(layers, "regions " + "+".join(map(str, chosen))).meets:
            break
    else:
        return
    for no, run in list(chosen.items()):
        others = [r for n, r in chosen.items() if n != no]

        def meets(part: list[str], label: str, others: list[list[str]] = others) -> bool:
            layers = _union(others + [part], index)
            return bool(layers) and build(layers, label).meets

        if any(others) and meets([], f"without region {no}"):
            chosen[no] = []
            continue
        lo, hi = 0, len(run)  # the shortest head run[:hi] that meets (the whole run does)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (
                (lo, mid)
                if meets(run[:mid], f"region {no} → {_span(run[:mid], index)}")
                else (mid, hi)
            )
        end, lo, hi = hi, 0, hi  # then the latest start run[lo:end] that meets
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (
                (mid, hi)
                if meets(run[mid:end], f"region {no} → {_span(run[mid:end], index)}")
                else (lo, mid)
            )
        chosen[no] = run[lo:end]


def _union(runs: Iterable[Sequence[str]], index: dict[str, int]) -> list[str]:
    return sorted({n for r in runs for n in r}, key=index.__getitem__)


def _span(run: list[str], index: dict[str, int]) -> str:
    """Where a run sits, as 1-based positions in graph order."""
    a, b = index[run[0]] + 1, index[run[-1]] + 1
    return f"layer {a}" if a == b else f"layers {a}–{b}"


TABLE_HEADER = (
    "#",
    "",
    "candidate",
    "BF16 layers",
    "metric",
    "size",
    "ION",
    "fits Duo",
    "est. ms",
)


def table_cells(
    rows: Sequence[Candidate], chosen: int, failed: Sequence[Candidate] = ()
) -> list[list[str]]:
    """The trade-off table's cells, one list per row, under `TABLE_HEADER`; ``#`` is the
    row number ``mix.pick`` takes. A metric measured on the simulator (its MLIR disagreed)
    is marked ``sim``; candidates the compiler could not make follow, unnumbered."""
    return [
        [
            str(i + 1),
            "→" if i == chosen else "",
            r.label,
            r.shown_bf16,
            f"{r.metric:.4f}" + (" sim" if r.measured_on == "simulator" else ""),
            f"{r.size_bytes / 1e6:.2f} MB",
            f"{r.ion_mb:.2f} MB",
            "yes" if r.fits_duo else "no",
            f"{r.est_ms:.3g}" if r.est_ms else "—",
        ]
        for i, r in enumerate(rows)
    ] + [["—", "", r.label, r.shown_bf16, "not built", "—", "—", "—", "—"] for r in failed]


def failed_notes(failed: Sequence[Candidate]) -> list[str]:
    """One line per candidate the compiler could not make: its label and why."""
    return [f"{r.label}: {r.failed}" for r in failed]


def table_md(
    rows: Sequence[Candidate], chosen: int, target: str, failed: Sequence[Candidate] = ()
) -> str:
    """The trade-off table as Markdown, the metric column named after ``target``."""
    header = [target or h if h == "metric" else h for h in TABLE_HEADER]
    lines = [
        "| " + " | ".join(header) + " |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(rows, chosen, failed)]
    if any(r.measured_on == "simulator" for r in rows):
        lines += ["", "sim: measured on the simulator (its quantized MLIR disagreed with it)."]
    if failed:
        lines += ["", "Not built:", *(f"- {n}" for n in failed_notes(failed))]
    return "\n".join(lines) + "\n"
