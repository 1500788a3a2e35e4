"""``duotpu board ...``: the Duo over SSH."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import duotpu
from duotpu import ConfigError
from duotpu.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    _console,
    _print_detections,
    _print_generic,
    _results,
)


# --------------------------------------------------------------------------------------------
# duotpu board ...
# --------------------------------------------------------------------------------------------
def _open_board(args):
    import getpass

    board = duotpu.board
    profile = board.resolve_board(args.board)
    prompt = getpass.getpass if sys.stdin.isatty() else None
    return board.Board(
        profile, accept_new_host_key=args.accept_new_host_key, password_prompt=prompt
    )


def _checked(b, models, force: bool, con) -> None:
    board = duotpu.board
    for p in board.check_models(b, [Path(m) for m in models], force):
        con.print(f"[yellow]warning (--force):[/] {p}")


def cmd_board_add(args) -> int:
    board = duotpu.board
    p = board.BoardProfile(
        name=args.name,
        host=args.host,
        port=args.port,
        user=args.user,
        key_file=args.key or "",
        password_env=args.password_env,
        sdk_dir=args.sdk_dir,
        work_dir=args.work_dir,
    )
    path = board.save_profile(p)
    _console().print(f"saved board '{p.name}' ({p.user}@{p.host}:{p.port}) to {path}")
    return EXIT_OK


def cmd_board_doctor(args) -> int:
    board = duotpu.board
    con = _console()
    with _open_board(args) as b:
        d = board.doctor(b)
        p = b.profile
    if args.json:
        print(json.dumps(d.__dict__, indent=2))
        return EXIT_OK if not d.problems else EXIT_FAIL
    con.print(f"[bold]{p.user}@{p.host}:{p.port}[/]")
    con.print(
        f"  OS {d.os or '?'} on {d.arch or '?'}; SoC {d.soc or '?'} → TPU chip "
        f"{d.chip or 'unknown'}"
    )
    con.print(
        f"  TPU device: {'present' if d.tpu_device else 'MISSING'}; RAM "
        f"{d.mem_total_mb:.0f} MB ({d.mem_free_mb:.0f} MB available); ION heap "
        f"{'unreadable' if d.ion_mb is None else f'{d.ion_mb:.2f} MB'}"
    )
    con.print(
        f"  SDK at {p.sdk_dir}: {'ok' if d.sdk_ok else 'not usable'}; runtime "
        f"{d.runtime_version or '?'}"
    )
    for prob in d.problems:
        con.print(f"[red]problem:[/] {prob}")
    if not d.problems:
        con.print("[green]ready[/]")
    return EXIT_OK if not d.problems else EXIT_FAIL


def cmd_board_push(args) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    board = duotpu.board
    con = _console()
    with _open_board(args) as b:
        with Progress(
            "{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=con,
            transient=True,
        ) as prog:
            task = prog.add_task("uploading", total=None)
            rep = board.push(
                b,
                [Path(m) for m in args.models or []],
                Path(args.sdk) if args.sdk else None,
                args.force,
                lambda done, total: prog.update(task, completed=done, total=total),
            )
    for p in rep.problems:
        con.print(f"[yellow]warning (--force):[/] {p}")
    res = rep.result
    con.print(
        f"uploaded {len(res.uploaded)} file(s) ({res.bytes_sent / 1e6:.2f} MB), "
        f"{len(res.skipped)} unchanged"
    )
    return EXIT_OK


def _board_model(args):
    return duotpu.open_model(args.model, getattr(args, "recipe", None))


def _board_inputs(model, items):
    tensors = []
    for item in items:
        p = Path(item)
        if not p.is_file():
            raise ConfigError(f"The input {item} does not exist.")
        if model.recipe.tensor_inputs:  # .npz samples, an array per input name (checked)
            tensors += duotpu.tensors_for(model, [p])
        elif p.suffix == ".npz":
            with np.load(p) as z:
                tensors.append(np.array(z[z.files[0]]))
        else:
            tensors += duotpu.tensors_for(model, [p])
    return tensors


def cmd_board_run(args) -> int:
    board = duotpu.board
    model = _board_model(args)
    tensors = _board_inputs(model, args.inputs)
    con = _console()
    with _open_board(args) as b:
        _checked(b, [args.model], args.force, con)
        outs = board.run_model(b, model.cvimodel, model.info, tensors, model.input_name)
    # a cut model: the rest on this CPU (reading the inputs too, where it does)
    outs = [duotpu.apply_tail(model, o, t) for o, t in zip(outs, tensors)]
    results = _results(args, model, args.inputs, outs, "input", tensors)
    if args.json:
        print(
            json.dumps(
                {"model": str(model.cvimodel), "board": b.profile.host, "results": results},
                indent=2,
            )
        )
        return EXIT_OK
    if model.head is not None:
        _print_detections(con, results, "input", f"on {b.profile.host}")
        return EXIT_OK
    if model.recipe.task == "generic":
        _print_generic(con, results, "input", f"on {b.profile.host}")
        return EXIT_OK
    for r in results:
        con.print(
            f"[bold]{r['input']}[/] on {b.profile.host}: "
            + ", ".join(f"{x['name']} {x['probability']:.3f}" for x in r["top"])
        )
    return EXIT_OK


def cmd_board_bench(args) -> int:
    board = duotpu.board
    con = _console()
    measured = []
    with _open_board(args) as b:
        _checked(b, args.model, args.force, con)
        for path in args.model:
            model = duotpu.open_model(path, getattr(args, "recipe", None))
            image = args.image or model.recipe.test_image or "builtin:chelsea"
            if Path(image).is_dir():
                image = str(duotpu.list_images(Path(image))[0])
            if image.startswith("builtin:"):
                tensor = duotpu.tensors_for(model, [image])[0]
            else:
                tensor = _board_inputs(model, [image])[0]
            r = board.bench(b, model.cvimodel, tensor, model.input_name, args.count)
            measured.append((model.cvimodel, r, board.estimate_for(b.profile, model.cvimodel)))
        profile = b.profile
    fit = None
    if args.calibrate:
        profile, fit = board.calibrate(profile, [(p, r) for p, r, _ in measured])
        measured = [(p, r, board.estimate_for(profile, p)) for p, r, _ in measured]
    if args.json:
        print(
            json.dumps(
                {
                    "board": profile.name,
                    "models": [
                        {
                            "model": str(p),
                            "runs": r.runs,
                            "mean_ms": r.mean_ms,
                            "fps": r.fps,
                            "median_ms": r.median_ms,
                            "p90_ms": r.p90_ms,
                            "inference_ms": r.inference_ms,
                            "tdma_ms": r.tdma_ms,
                            "tiu_ms": r.tiu_ms,
                            "estimate": {
                                "ms": e.ms,
                                "tiu_ms": e.tiu_ms,
                                "tdma_ms": e.tdma_ms,
                            },
                        }
                        for p, r, e in measured
                    ],
                    "fitted": fit,
                },
                indent=2,
            )
        )
        return EXIT_OK
    for p, r, e in measured:
        con.print(
            f"[bold]{p.name}[/] on {profile.host}: {r.runs} runs, median "
            f"{r.median_ms:.2f} ms, p90 {r.p90_ms:.2f} ms, mean {r.mean_ms:.2f} ms, "
            f"{r.fps:.1f} fps"
        )
        if r.tpu_split:
            con.print("  TPU time: " + r.tpu_split)
        err = e.ms / r.median_ms - 1 if r.median_ms else 0.0
        con.print(
            f"  estimate{' (this board)' if any(board.fitted(profile).values()) else ''}: "
            f"{e.ms:.2f} ms (TIU {e.tiu_ms:.2f}, TDMA {e.tdma_ms:.2f}), {err * 100:+.0f} % vs "
            "the measured median"
        )
    if fit is not None:
        con.print(
            f"fitted to {profile.name}: compute scale {fit['tiu_scale']:g}, DDR "
            f"{fit['ddr_bytes_per_cycle']:g} bytes/cycle, {fit['tdma_overhead']:g} cycles per "
            "TDMA command — saved in its profile; later estimates for this board use them"
        )
    return EXIT_OK


def cmd_board_compare(args) -> int:
    from dataclasses import asdict

    board = duotpu.board
    model = _board_model(args)
    tensor = _board_inputs(model, [args.input])[0]
    con = _console()
    with _open_board(args) as b:
        _checked(b, [args.model], args.force, con)
        rows = board.compare(b, model, tensor)
    if args.json:
        print(
            json.dumps(
                {"model": str(model.cvimodel), "outputs": [asdict(r) for r in rows]}, indent=2
            )
        )
        return EXIT_OK
    for row in rows:
        con.print(
            f"{row.output}: board vs simulator cosine {row.board_vs_simulator:.6f}"
            + (
                f", board vs fp32 {row.board_vs_fp32:.6f}, simulator vs fp32 "
                f"{row.simulator_vs_fp32:.6f}"
                if row.board_vs_fp32 is not None and row.simulator_vs_fp32 is not None
                else ""
            )
        )
        if not row.agrees:
            con.print(
                "[red]  the board disagrees with the simulator[/]: check the SDK version "
                "and the input preprocessing."
            )
    return EXIT_OK


def cmd_board_app(args) -> int:
    con = _console()
    build = Path(args.build)
    with _open_board(args) as b:
        if args.app_command == "push":
            pushed = duotpu.board.push_app(b, build, args.force)
            if args.json:
                print(
                    json.dumps(
                        {
                            "remote": pushed.remote,
                            "uploaded": pushed.sent.uploaded,
                            "skipped": len(pushed.sent.skipped),
                            "python": pushed.python,
                            "numpy": pushed.numpy,
                            "problems": pushed.problems,
                        }
                    )
                )
                return EXIT_OK
            for p in pushed.problems:
                con.print(f"[yellow]warning (--force):[/] {p}")
            con.print(
                f"app on the board: {pushed.remote} ({len(pushed.sent.uploaded)} files sent, "
                f"{len(pushed.sent.skipped)} unchanged; python {pushed.python}, numpy "
                f"{pushed.numpy})",
                highlight=False,
            )
            con.print(f"run it there:  python3 {pushed.remote}/main.py IMAGE...", highlight=False)
            return EXIT_OK
        items: list[Path] = []
        for item in args.inputs:
            path = Path(item)
            items += duotpu.list_images(path) if path.is_dir() else [path]
        count = args.count if args.app_command == "bench" else 0
        run = duotpu.board.run_app(
            b, build, items[:1] if count else items, args.model, count, args.force
        )
    if args.json:
        print(
            json.dumps(
                {
                    "remote": run.remote,
                    "model": run.model,
                    "agreement": run.agreement,
                    "cosine": run.cosine,
                    "agrees": run.agrees,
                    "results": run.results,
                    "bench": run.bench,
                    "peak_rss_mb": run.peak_rss_mb,
                }
            )
        )
        return EXIT_OK if run.agrees else EXIT_FAIL
    from rich.markup import escape

    sent = items[:1] if count else items
    for item, r in zip(sent, run.results):
        t = r["times_ms"]
        con.print(
            escape(
                f"{item.name}: {_answer(r['result'])}  [pre {t['preprocess']:.1f} ms, "
                f"tpu {t['tpu']:.1f} ms, post {t['postprocess']:.1f} ms]"
            ),
            highlight=False,
        )
    if run.bench:
        bn = run.bench
        con.print(
            f"TPU over {bn['runs']} runs on the board: mean {bn['mean_ms']:.2f} ms, p50 "
            f"{bn['p50_ms']:.2f} ms ({1000.0 / bn['mean_ms']:.1f} fps)",
            highlight=False,
        )
    if run.peak_rss_mb is not None:
        con.print(f"the app's peak memory on the board: {run.peak_rss_mb:.1f} MB (VmHWM)")
    worst = min(run.cosine.values()) if run.cosine else 1.0
    verdict = "[green]agrees[/]" if run.agrees else "[red]DIFFERS[/]"
    con.print(
        f"board vs host ({run.model}): {verdict} — agreement {run.agreement:.3f}, lowest output "
        f"cosine {worst:.6f} over {len(run.results)} input(s)"
    )
    return EXIT_OK if run.agrees else EXIT_FAIL


def _answer(result) -> str:
    if isinstance(result, list) and result and "probability" in result[0]:
        return ", ".join(f"{c['name']} {c['probability']:.3f}" for c in result[:3])
    if isinstance(result, list):
        return f"{len(result)} objects" + (
            ": " + ", ".join(f"{d['name']} {d['score']:.2f}" for d in result[:4]) if result else ""
        )
    return ", ".join(f"{n} {v['shape']}" for n, v in result.items())
