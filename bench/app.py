"""Benchmark: the board app (`duotpu app`) on the host — per-stage times, import time and peak
memory of the Python app in a fresh numpy-only Python, the C app beside it, and the CPU work per
image — next to the budget of a 64 MB Duo.

The TPU column is the CV18xx *simulator's* time on this PC, not the board's: board times come
from `duotpu board app bench BUILD IMAGE`. Memory is measured without the simulator (which a
board does not have): the Python app's peak RSS after importing numpy and the app and opening
nothing; the model's own memory on a board is ION (`duotpu info`).

Builds the demo model (INT8) and a YOLOv8n (random weights, 320x320, INT8) when missing.
Prints a table and writes it to bench/results/app.md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import emit  # noqa: E402  (bench/ is on sys.path when run as a script)

HERE = Path(__file__).parent
ROOT = HERE.parent
DUO_RAM_MB, DUO_ION_MB = 64.0, 16.0


def _build(name: str, out: Path) -> Path:
    """A build folder (built once: later runs are all cache)."""
    from duotpu import build, load_recipe

    if name == "demo":
        r = load_recipe(ROOT / "recipes" / "efficientnet_lite0.toml")
        r = r.with_overrides({"quantize": ["int8"], "calibration.count": 25})
    else:
        r = load_recipe(ROOT / "recipes" / "yolov8n.toml")
        r = r.with_overrides(
            {"inputs.shape": [1, 3, 320, 320], "calibration.count": 25, "name": "yolov8n_320"}
        )
    build(r, out_dir=out)
    return out


def _board_python(tmp: Path) -> Path:
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.11.*/bin/python3"))
    base = str(pyenv[-1]) if pyenv else sys.executable
    venv = tmp / "venv"
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy==1.26.4"], check=True)
    return py


def _env() -> dict[str, str]:
    from duotpu.compiler.env import tool_env

    env = tool_env()
    env.pop("PYTHONPATH", None)
    return env


def _peak_rss_mb(py: Path, app: Path) -> float:
    """Peak RSS (MB) of a board Python that imported numpy and the app and ran its
    preprocessing on one photo (the process reports its own VmHWM, in KB)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import numpy as np, json\n"
        "from duotpu_onboard import images, preprocess, heads\n"
        "cfg = json.load(open(sys.argv[1] + '/app.json'))\n"
        "p = cfg['preprocess']; img = images.read(sys.argv[2])\n"
        "x, _ = preprocess.tensor(img, cfg['input']['shape'], p['resize'], p['resize_mode'],\n"
        "    p['pad_value'], p['mean'], p['scale'], p['pixel_format'])\n"
        # VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's peak across exec
        "print([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])\n"
    )
    out = subprocess.run(
        [str(py), "-I", "-c", code, str(app), str(_PHOTO[0])],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[-1]) / 1024.0


_PHOTO: list[Path] = []


def _median_seconds(argv: list[str], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _cpu_work(cfg: dict) -> str:
    """What the board's CPU does per image besides the TPU, in operations."""
    h, w = cfg["preprocess"]["resize"]
    shape = cfg["input"]["shape"]
    px = h * w * 3
    pre = f"resize ~{px * 8 / 1e6:.1f} M int ops, normalise {shape[2] * shape[3] * 3 / 1e6:.2f} M"
    if cfg["task"] == "detect":
        head = cfg["detect"]["head"]
        cells = sum((shape[2] // s) * (shape[3] // s) for s in head["strides"])
        exps = cells * (4 * head.get("reg_max", 16) + head["nc"])
        return f"{pre}; decode {cells} cells: {exps / 1e6:.2f} M exp (DFL + sigmoid), NMS"
    return f"{pre}; softmax over the classes"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--out", default=str(HERE / "results" / "app.md"))
    args = ap.parse_args()
    from duotpu import make_app
    from duotpu.board.capp import stb_include, write_c_app
    from duotpu.compiler.env import tpu_mlir_root
    from duotpu.core import images
    from duotpu.onboard.images import write_ppm

    rows = []
    with tempfile.TemporaryDirectory(prefix="duotpu-bench-app-") as t:
        tmp = Path(t)
        py = _board_python(tmp)
        photos = []
        crops = images.random_crops(images.calibration_photos(), args.images, seed=77)
        for k, (_, rgb) in enumerate(crops):
            photos.append(write_ppm(tmp / f"p{k}.ppm", rgb[:, :, ::-1]))
        bare = _median_seconds([str(py), "-I", "-c", "pass"])
        hwm = (
            "print([ln.split()[1] for ln in open('/proc/self/status') "
            "if ln.startswith('VmHWM')][0])"
        )
        rss_py = (
            int(
                subprocess.run(
                    [str(py), "-I", "-c", hwm], capture_output=True, text=True, check=True
                ).stdout
            )
            / 1024
        )
        rss_np = (
            int(
                subprocess.run(
                    [str(py), "-I", "-c", "import numpy\n" + hwm],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            / 1024
        )
        np_only = _median_seconds([str(py), "-I", "-c", "import numpy"])
        for name, folder in (("demo", "efficientnet_lite0_int8"), ("yolo", "yolov8n_320")):
            build = ROOT / "build" / "bench-app" / folder
            if not (build / "manifest.json").is_file():
                _build(name, build)
            app = make_app(build, tmp / f"app-{name}").folder
            cfg = json.loads((app / "app.json").read_text())
            imp = _median_seconds(
                [
                    str(py),
                    "-I",
                    "-c",
                    f"import sys; sys.path.insert(0, {str(app)!r}); import duotpu_onboard.app",
                ]
            )
            _PHOTO[:] = photos[:1]
            rss = _peak_rss_mb(py, app)
            proc = subprocess.run(
                [str(py), "-I", str(app / "main.py"), *map(str, photos), "--json"],
                env=_env(),
                capture_output=True,
                text=True,
                check=True,
            )
            doc = json.loads(proc.stdout)
            stage = {
                k: statistics.mean(r["times_ms"][k] for r in doc["results"])
                for k in ("preprocess", "tpu", "postprocess")
            }
            lib = tpu_mlir_root() / "lib"
            c = write_c_app(
                app, cfg, target="host", lib_dir=lib, extra=["-Wl,--allow-shlib-undefined"]
            )
            assert c.binary is not None
            cout = subprocess.run(
                [str(c.binary), *map(str, photos)],
                env=_env(),
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            pre_c = [float(x) for x in re.findall(r"\[pre ([\d.]+) ms", cout)]
            post_c = [float(x) for x in re.findall(r"post ([\d.]+) ms\]", cout)]
            rows.append(
                (
                    name,
                    cfg,
                    stage,
                    (imp - bare) * 1000,
                    (np_only - bare) * 1000,
                    rss,
                    statistics.mean(pre_c),
                    statistics.mean(post_c),
                    c.binary.stat().st_size,
                )
            )
    free = DUO_RAM_MB - DUO_ION_MB
    lines = [
        "# The board app on the host (bench/app.py)",
        "",
        f"{args.images} photo crops as PPM; Python app in a fresh Python 3.11 + numpy 1.26.4 "
        "venv; the TPU column is the host *simulator*, not the board (board times: "
        "`duotpu board app bench`).",
        "",
        "| model | input | Python pre ms | Python post ms | C pre ms | C post ms | TPU ms "
        "(simulator) | app import ms (numpy's share) | Python peak RSS MB | C binary KB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _name, cfg, st, imp, npi, rss, pre_c, post_c, size in rows:
        lines.append(
            f"| {cfg['name']} | {cfg['input']['shape']} | {st['preprocess']:.1f} | "
            f"{st['postprocess']:.1f} | {pre_c:.1f} | {post_c:.1f} | {st['tpu']:.0f} | "
            f"{imp:.0f} ({npi:.0f}) | {rss:.1f} | {size / 1024:.0f} |"
        )
    lines += [
        "",
        f"Budget of a 64 MB Duo: {DUO_RAM_MB:.0f} MB RAM − {DUO_ION_MB:.0f} MB ION = "
        f"{free:.0f} MB for the kernel and user space. The Python app's peak RSS above is "
        "what python3 + numpy + the app take while preprocessing (the model itself lives in "
        f"ION); on this x86-64 host python3 alone is {rss_py:.1f} MB and with numpy (the "
        f"manylinux wheel, OpenBLAS inside) {rss_np:.1f} MB. The board's numpy is another "
        "build: `duotpu board app run|bench` reports the app's peak memory on the board "
        "(VmHWM). The C app needs neither.",
        "",
        "C binary: "
        + (
            "with stb_image (reads JPEG and PNG besides PPM / PGM / BMP)."
            if stb_include()
            else "without stb_image (PPM / PGM / BMP only; Debian's libstb-dev adds JPEG and "
            "PNG, and size)."
        ),
        "",
        "CPU work per image besides the TPU:",
        "",
    ]
    lines += [f"- {cfg['name']}: {_cpu_work(cfg)}" for _, cfg, *_ in rows]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
