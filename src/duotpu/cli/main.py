"""The parser of every command, signal handling, and the one place errors become messages."""

from __future__ import annotations

import argparse
import errno
import signal
import traceback
from typing import NoReturn

import duotpu
from duotpu import BuildFailed, ConfigError, DuoTpuError, ToleranceError, ToolchainError
from duotpu.cli.board import (
    cmd_board_add,
    cmd_board_app,
    cmd_board_bench,
    cmd_board_compare,
    cmd_board_doctor,
    cmd_board_push,
    cmd_board_run,
)
from duotpu.cli.build import cmd_build, cmd_build_many, cmd_demo
from duotpu.cli.common import (
    EXIT_FAIL,
    EXIT_USAGE,
    _add_detect_flags,
    _add_recipe_flags,
    _add_scale_flags,
    _err_console,
)
from duotpu.cli.evaluate import cmd_eval
from duotpu.cli.inspect import cmd_app, cmd_info, cmd_predict
from duotpu.cli.legacy import cmd_legacy


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (what is wrong, where the help is), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``duotpu`` argument parser."""
    p = _Parser(
        prog="duotpu",
        description="PyTorch / ONNX → verified, quantized cvimodels for the "
        "Milk-V Duo TPU (CV180x / CV181x), without Docker.",
    )
    p.add_argument("--version", action="version", version=f"duotpu {duotpu.__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    b = sub.add_parser(
        "build",
        help="export → transform → calibrate → deploy → verify",
        description="Build a model into verified cvimodels. SOURCE is an .onnx "
        "or .pt file, torchvision:NAME or package.module:function; "
        "or give everything in --recipe.",
    )
    b.add_argument("source", nargs="?", help="the model (overrides model.source)")
    b.add_argument("--recipe", "-r", help="recipe TOML file")
    b.add_argument("--out", "-o", help="folder for the final files (default build/NAME)")
    b.add_argument("--work-dir", help="folder for intermediate files (default OUT/work)")
    b.add_argument("--labels", help="class names file (one per line, or synset_words.txt)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    _add_recipe_flags(b)
    _add_scale_flags(b)
    b.set_defaults(func=cmd_build)

    bm = sub.add_parser(
        "build-many",
        help="build several recipes, in parallel with --workers N or on a Ray cluster",
        description="Build every RECIPE (TOML) into OUT_ROOT/NAME, as `duotpu build` would; "
        "a failed recipe does not stop the others. A table of every build at the end.",
    )
    bm.add_argument("recipes", nargs="+", metavar="RECIPE", help="recipe TOML files")
    bm.add_argument("--out-root", help="folder for the builds' folders (default build/)")
    bm.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field in every recipe",
    )
    bm.add_argument("--json", action="store_true", help="print the results as JSON")
    bm.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    _add_scale_flags(bm)
    bm.set_defaults(func=cmd_build_many)

    d = sub.add_parser(
        "demo",
        help="the built-in demo: EfficientNet-Lite0 → INT8 + BF16, "
        "verified, then the cat photo classified",
    )
    d.add_argument(
        "--out", "-o", help="folder for the final files (default build/efficientnet_lite0)"
    )
    d.add_argument("--work-dir", help="folder for intermediate files")
    d.add_argument("--json", action="store_true", help="print the result as JSON")
    d.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    d.add_argument("--labels", default=None, help=argparse.SUPPRESS)
    _add_recipe_flags(d)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser(
        "info",
        help="what a cvimodel holds and whether it fits each Duo board",
        description="Read cvimodel files: chip, version, programs, inputs and "
        "outputs, sections, board memory need and fit per board.",
    )
    i.add_argument("models", nargs="+", metavar="MODEL.cvimodel")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.add_argument(
        "--layers",
        type=int,
        nargs="?",
        const=10,
        metavar="N",
        help="the N (10) most expensive layers of the latency estimate",
    )
    i.add_argument(
        "--ion",
        action="append",
        default=[],
        metavar="BOARD=MB",
        help="ION heap of a board (duo, duo256m, duos) instead of the assumed one",
    )
    i.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    i.set_defaults(func=cmd_info)

    pr = sub.add_parser(
        "predict",
        help="classify images with a cvimodel on the CV18xx simulator",
        description="Preprocess images as at build time (recipe beside the "
        "model, or --recipe) and run the cvimodel on the simulator.",
    )
    pr.add_argument("model", metavar="MODEL.cvimodel")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--recipe", help="recipe the model was built with (default: beside it)")
    pr.add_argument("--labels", help="class names: one per line, or synset_words.txt")
    pr.add_argument("--topk", type=int, default=5, help="classes shown (5)")
    _add_detect_flags(pr)
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.add_argument(
        "--board",
        help="run on this board over SSH instead of the simulator (saved NAME or user@host[:port])",
    )
    pr.add_argument(
        "--accept-new-host-key", action="store_true", help="with --board: trust a new host key"
    )
    pr.add_argument(
        "--force", action="store_true", help="with --board: run even when a check fails"
    )
    pr.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser(
        "eval",
        help="accuracy of built models against fp32 (and labels)",
        description="Evaluate the cvimodels of a build folder (or one cvimodel) "
        "on a folder of images: agreement with fp32, or accuracy "
        "when subfolders name classes; writes report.json/html.",
    )
    ev.add_argument("model", metavar="BUILD_DIR|MODEL.cvimodel")
    ev.add_argument(
        "--images",
        required=True,
        help="folder of images (classifiers: subfolders = classes; detectors: "
        "YOLO layout images/ + labels/)",
    )
    ev.add_argument("--recipe", help="recipe the model was built with (default: beside it)")
    ev.add_argument("--labels", help="class names file (for class-named subfolders)")
    ev.add_argument(
        "--backend",
        choices=["mlir", "cvimodel"],
        default="mlir",
        help="mlir: tpu_mlir's interpreter on the quantized MLIR (fast, checked "
        "against the simulator); cvimodel: the CV18xx simulator",
    )
    ev.add_argument(
        "--check",
        type=int,
        default=None,
        metavar="N",
        help="check the fast path against the simulator on N images (default 2)",
    )
    ev.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="fp32 top-1 minus top-2 probability for an image to be decisive",
    )
    ev.add_argument(
        "--layers",
        type=int,
        default=2,
        metavar="N",
        help="per-layer similarity on N images (0: skip)",
    )
    ev.add_argument("--limit", type=int, default=0, help="use at most this many images")
    ev.add_argument("--out", help="report folder (default BUILD_DIR/eval)")
    ev.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    _add_scale_flags(ev)
    ev.set_defaults(func=cmd_eval)

    lg = sub.add_parser(
        "legacy",
        help="run an old cvitek command line as written "
        "(model_transform.py, run_calibration.py, "
        "model_deploy.py)",
        description="Old tutorials' command lines, run with tpu_mlir through "
        "duotpu; prints the equivalent recipe.",
    )
    lg.add_argument(
        "tool", metavar="TOOL.py", help="model_transform.py, run_calibration.py or model_deploy.py"
    )
    lg.add_argument("tool_args", nargs=argparse.REMAINDER, metavar="...")
    lg.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    lg.set_defaults(func=cmd_legacy)

    ap = sub.add_parser(
        "app",
        help="turn a build into a folder that runs on the board by itself (Python + numpy)",
        description="Write BUILD/app (or --out): the build's cvimodels, app.json (preprocessing, "
        "task, labels, thresholds), the board runtime (Python standard library + numpy over "
        "the SDK's libcviruntime.so) and main.py. On the board: python3 main.py IMAGE...",
    )
    ap.add_argument("build", metavar="BUILD_DIR", help="the folder `duotpu build` wrote")
    ap.add_argument("--out", metavar="DIR", help="where the app goes (default BUILD_DIR/app)")
    ap.add_argument(
        "--model",
        action="append",
        metavar="MODE",
        help="the models to include (int8, bf16, mix; repeatable; default all, INT8 first)",
    )
    ap.add_argument(
        "--c",
        action="store_true",
        help="also the C app (c/: source, generated header, Makefile); compiled with --sdk",
    )
    ap.add_argument(
        "--sdk",
        metavar="SDK_DIR",
        help="the board's runtime SDK folder (its lib/libcviruntime.so is linked); implies --c",
    )
    ap.add_argument(
        "--target",
        default="riscv64-musl",
        choices=["riscv64-musl", "aarch64-gnu", "host"],
        help="the C app's CPU: riscv64-musl (Duo, the Duo's loader), aarch64-gnu (Duo 256M / "
        "Duo S arm64 images); default riscv64-musl",
    )
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    ap.set_defaults(func=cmd_app)

    bd = sub.add_parser("board", help="deploy, run, benchmark and diagnose a Duo over SSH")
    bsub = bd.add_subparsers(dest="board_command", metavar="BOARD_COMMAND", required=True)

    def board_args(q, models=False):
        q.add_argument(
            "--board",
            help="saved board NAME or user@host[:port] (default: the "
            "saved one, else root@192.168.42.1)",
        )
        q.add_argument(
            "--accept-new-host-key",
            action="store_true",
            help="trust the board's host key the first time (its fingerprint is shown otherwise)",
        )
        q.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show tracebacks on errors",
        )
        if models:
            q.add_argument(
                "--force",
                action="store_true",
                help="push/run even when the model does not fit the board",
            )
            q.add_argument("--recipe", help="recipe the model was built with")

    a = bsub.add_parser("add", help="save a board profile")
    a.add_argument("name")
    a.add_argument("--host", default="192.168.42.1", help="address (the Duo's USB network)")
    a.add_argument("--port", type=int, default=22, help="SSH port (22)")
    a.add_argument("--user", default="root", help="user (root)")
    a.add_argument(
        "--key", help="private key file (else the password from --password-env or a prompt)"
    )
    a.add_argument(
        "--password-env",
        default="DUOTPU_BOARD_PASSWORD",
        help="environment variable holding the password",
    )
    a.add_argument(
        "--sdk-dir", default="/root/tpu-sdk", help="the runtime SDK's folder on the board"
    )
    a.add_argument(
        "--work-dir", default="/root/duotpu", help="duotpu's folder on the board (models, apps)"
    )
    a.set_defaults(func=cmd_board_add)
    dc = bsub.add_parser("doctor", help="check the board: OS, TPU, memory, ION, SDK, runtime")
    board_args(dc)
    dc.add_argument("--json", action="store_true", help="print JSON")
    dc.set_defaults(func=cmd_board_doctor)
    pu = bsub.add_parser("push", help="upload the runtime SDK and models (unchanged files skipped)")
    board_args(pu, models=True)
    pu.add_argument("models", nargs="*", metavar="MODEL.cvimodel")
    pu.add_argument(
        "--sdk", help="local SDK folder (tpu-sdk-cv180x, tpu-sdk-sg200x, cvitek_tpu_sdk)"
    )
    pu.set_defaults(func=cmd_board_push)
    ru = bsub.add_parser("run", help="run a model on the board: images or npz in, top-k out")
    board_args(ru, models=True)
    ru.add_argument("model", metavar="MODEL.cvimodel")
    ru.add_argument("inputs", nargs="+", metavar="IMAGE|NPZ")
    ru.add_argument("--labels", help="class names file (one a line)")
    ru.add_argument("--topk", type=int, default=5, help="classes shown (5)")
    _add_detect_flags(ru)
    ru.add_argument("--json", action="store_true", help="print JSON")
    ru.set_defaults(func=cmd_board_run)
    be = bsub.add_parser("bench", help="latency on the board: median, p90, TPU time split")
    board_args(be, models=True)
    be.add_argument("model", metavar="MODEL.cvimodel", nargs="+")
    be.add_argument("--count", type=int, default=50, help="runs to time (50)")
    be.add_argument(
        "--calibrate",
        action="store_true",
        help="fit the latency estimate's constants to this board and save them in its profile",
    )
    be.add_argument("--image", help="input image (default: the build's test image)")
    be.add_argument("--json", action="store_true", help="print JSON")
    be.set_defaults(func=cmd_board_bench)
    bapp = bsub.add_parser(
        "app",
        help="the board app (duotpu app) on the board: push, run (checked against the host), bench",
    )
    asub = bapp.add_subparsers(dest="app_command", metavar="APP_COMMAND", required=True)
    for name, helptext in (
        ("push", "write the build's app and upload it (chip, runtime, ION, python3, RAM checked)"),
        ("run", "run the app on the board on images; compare its answers with the host's"),
        ("bench", "the app's per-stage times on the board and the TPU time over --count runs"),
    ):
        q = asub.add_parser(name, help=helptext)
        board_args(q)
        q.add_argument("build", metavar="BUILD_DIR")
        q.add_argument("--force", action="store_true", help="upload even when a check fails")
        q.add_argument("--json", action="store_true", help="print JSON")
        if name != "push":
            q.add_argument("inputs", nargs="+", metavar="IMAGE|FOLDER")
            q.add_argument("--model", help="int8, bf16 or mix (default: the app's first)")
        if name == "bench":
            q.add_argument("--count", type=int, default=50, help="TPU runs to time (50)")
        q.set_defaults(func=cmd_board_app)
    co = bsub.add_parser("compare", help="board vs host simulator vs fp32, per output")
    board_args(co, models=True)
    co.add_argument("model", metavar="MODEL.cvimodel")
    co.add_argument("input", metavar="IMAGE|NPZ")
    co.add_argument("--json", action="store_true", help="print JSON")
    co.set_defaults(func=cmd_board_compare)
    return p


def _stop_on_signals() -> dict:
    """SIGINT and SIGTERM sent to duotpu alone (a supervisor, `timeout`, `kill PID`) stop every
    child process within a second or two and end the command like Ctrl-C: finished stages are
    kept, the exit code is 128 + the signal (130, 143)."""
    fired: list[int] = []

    def handler(signum, _frame):
        duotpu.stop_children(signum)
        if not fired:  # a second signal while stopping must not interrupt the clean-up
            fired.append(signum)
            raise duotpu.Interrupted(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread (main() called from a thread)
            pass
    return previous


_USER_FILE_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _report_error(e: BaseException, debug: bool) -> int:
    from rich.markup import escape

    con = _err_console()
    if debug:
        con.print(traceback.format_exc(), markup=False, highlight=False)
    if isinstance(e, ToolchainError):
        con.print(f"[red bold]error:[/] {escape(str(e))}")
        if e.tail:
            con.print(f"[dim]last lines of {e.log_path}:[/]")
            con.print(e.tail, markup=False, highlight=False)
    elif isinstance(e, ToleranceError):
        con.print(f"[red bold]verification failed:[/] {escape(str(e))}")
    elif isinstance(e, BuildFailed):
        con.print(f"[red bold]{len(e.errors)} parts of the build failed:[/]")
        for i, sub in enumerate(e.errors, 1):
            con.print(f"[red]({i})[/] {escape(str(sub))}", highlight=False)
        if e.note:
            con.print(escape(e.note), highlight=False)
        return EXIT_FAIL
    elif isinstance(e, DuoTpuError):
        con.print(f"[red bold]error:[/] {escape(str(e))}")
    elif isinstance(e, OSError) and e.errno in _USER_FILE_ERRNOS:
        # the user's file system said no (permissions, a read-only or full disk): not ours
        where = f" {e.filename}" if e.filename else ""
        con.print(
            f"[red bold]error:[/] cannot use{escape(where)}: {escape(e.strerror or str(e))}. "
            "This is a file, folder or disk of yours: make it writable or free space, or choose "
            "another place (--out, --work-dir)."
        )
    else:
        con.print(
            f"[red bold]internal error:[/] {type(e).__name__}: {escape(str(e))}. Run again with "
            "--debug for the traceback and report it."
        )
    return EXIT_USAGE if isinstance(e, ConfigError) else EXIT_FAIL


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``duotpu`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    previous = _stop_on_signals()
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        duotpu.stop_children(getattr(e, "signum", signal.SIGINT))
        _err_console().print(
            "[yellow]interrupted[/] — run the same command again to resume; "
            "finished stages are kept."
        )
        return 128 + int(getattr(e, "signum", signal.SIGINT))
    except Exception as e:  # noqa: BLE001 — the one place errors become messages
        return _report_error(e, debug)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
