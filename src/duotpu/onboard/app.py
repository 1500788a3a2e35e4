"""The board app: a build's cvimodel, its preprocessing and its task head, run on the board by
itself (``python3 main.py photo.ppm``). ``duotpu app BUILD`` writes the folder this reads:
``app.json`` (from the build's manifest), the cvimodel(s), this package and ``main.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import cvi, heads, images, preprocess, tail

APP_FILE = "app.json"
FORMAT = 1


class AppError(Exception):
    """The app cannot do what was asked; the message says what, where and what to do."""


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


class App:
    """A built model ready to run: ``App(folder).infer("photo.ppm")``."""

    def __init__(
        self,
        folder: "str | Path",
        model: Optional[str] = None,
        lib: "str | Path | None" = None,
        program: Optional[int] = None,
    ):
        self.folder = Path(folder)
        try:
            self.config: Dict[str, Any] = json.loads((self.folder / APP_FILE).read_text())
        except (OSError, ValueError) as e:
            raise AppError(
                f"{self.folder / APP_FILE} cannot be read ({e}): run this from the folder "
                "`duotpu app BUILD` made, or give it with --app."
            ) from None
        if int(self.config.get("format", 0)) > FORMAT:
            raise AppError(
                f"{APP_FILE} is format {self.config['format']}; this app reads {FORMAT}: copy "
                "the app folder again."
            )
        models = self.config["models"]
        self.mode = model or self.config["default"]
        entry = models.get(self.mode)
        if entry is None:
            path = Path(self.mode)
            if not path.is_file():
                raise AppError(
                    f"No model {self.mode!r} in this app; it has {', '.join(models)} "
                    "(or give a .cvimodel file)."
                )
            entry = {"file": str(path.resolve()), "programs": [1]}
        self.entry = entry
        self.batches: List[int] = list(entry.get("programs", [1]))
        self.program = program
        if program is None and len(self.batches) > 1:
            self.program = self.batches.index(1) if 1 in self.batches else 0
        self.model = cvi.Model(
            self.folder / entry["file"], lib=lib, program=self.program, chip=self.config["chip"]
        )
        self.input = self.model.inputs[0]
        self._tail = None
        if self.config.get("tail"):
            t = self.config["tail"]
            with np.load(self.folder / t["constants"]) as z:
                self._tail = (t["graph"], {k: z[k] for k in z.files})

    # -- one input -----------------------------------------------------------------------
    def prepare(self, item: "str | Path | np.ndarray") -> Tuple[Any, Optional[Tuple[int, int]]]:
        """An image file, a raw frame or a ready tensor → the model's input array and the
        image's (h, w) (``None`` when boxes stay in network pixels). An ``.npz`` file (one
        array per input name, as ``np.savez`` writes) feeds a model of several inputs."""
        info = self.input
        if isinstance(item, np.ndarray):
            picture = item
        else:
            p = Path(item)
            if p.suffix.lower() == ".npz":
                return self._arrays(p), None
            if len(self.model.inputs) > 1:
                raise AppError(
                    f"{p}: this model takes {len(self.model.inputs)} inputs ("
                    + ", ".join(i.describe() for i in self.model.inputs)
                    + "); give an .npz file with one array per input name."
                )
            if p.suffix.lower() in images.RAW:
                data = np.fromfile(str(p), np.uint8)
                if data.size != info.size:
                    raise AppError(
                        f"{p} holds {data.size} bytes; the model's input {info.describe()} "
                        f"takes a frame of {info.size} bytes."
                    )
                return data, None
            try:
                picture = images.read(p)
            except images.ImageError as e:
                raise AppError(str(e)) from None
        if picture.dtype != np.uint8:  # a ready input tensor
            want = tuple(info.shape)
            if tuple(picture.shape) != want and picture.size != info.count:
                raise AppError(
                    f"The tensor has shape {list(picture.shape)}; the model's input is "
                    f"{info.describe()}."
                )
            return picture.astype(np.float32), None
        return self._from_picture(picture), (int(picture.shape[0]), int(picture.shape[1]))

    def _arrays(self, path: Path) -> Dict[str, np.ndarray]:
        try:
            with np.load(str(path)) as z:
                given = {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError) as e:
            raise AppError(f"{path} is not a readable .npz file ({e}).") from None
        out: Dict[str, np.ndarray] = {}
        for info in self.model.inputs:
            a = given.get(info.name)
            if a is None and len(self.model.inputs) == 1 and len(given) == 1:
                a = next(iter(given.values()))
            if a is None or a.size != info.count:
                raise AppError(
                    f"{path} has "
                    + (f"shape {list(a.shape)} for" if a is not None else "no array named")
                    + f" {info.name!r}; the model's input is {info.describe()} (arrays in the "
                    f"file: {', '.join(given) or 'none'})."
                )
            out[info.name] = a.astype(np.float32).reshape(info.shape)
        for k, a in given.items():  # inputs only a cut model's CPU tail reads (a state)
            out.setdefault(k, a.astype(np.float32))
        return out

    def _from_picture(self, bgr: np.ndarray) -> np.ndarray:
        pre, info = self.config["preprocess"], self.input
        fused = self.entry.get("pixel_format") or ""
        want = 1 if (fused == "GRAYSCALE" or (not fused and info.shape[1] == 1)) else 3
        if bgr.ndim == 2 and want == 3:
            bgr = np.repeat(bgr[:, :, None], 3, axis=2)
        args = (pre["resize"], pre["resize_mode"], pre["pad_value"])
        if fused:
            if fused.startswith("YUV"):
                raise AppError(
                    f"This model takes {fused} camera frames: give a raw frame file "
                    f"({', '.join(images.RAW)}) of {info.size} bytes, or build it with another "
                    "--fuse-preprocess format for pictures."
                )
            x, _ = preprocess.frame(bgr, info.shape, *args, pixel_format=fused)
            return x
        x, _ = preprocess.tensor(
            bgr,
            info.shape,
            *args,
            mean=pre["mean"],
            scale=pre["scale"],
            pixel_format=pre["pixel_format"],
        )
        return x

    def forward(self, x: "np.ndarray | Dict[str, np.ndarray]") -> Dict[str, np.ndarray]:
        """The TPU: outputs by the cvimodel's names, shaped as the build reports them."""
        out = self.model.run(x)
        shapes = self.config.get("output_shapes", {})
        for name, v in out.items():
            s = shapes.get(name)
            if s and v.size == int(np.prod(s)) and self.model.inputs[0].shape[0] == s[0]:
                out[name] = v.reshape(s)
        return out

    def finish(self, outputs: Dict[str, np.ndarray], inputs: Any = None) -> Dict[str, np.ndarray]:
        """A cut model's TPU outputs → the whole model's outputs (its CPU tail, which may read
        the model's ``inputs`` too: the array given to `forward`, or arrays by name)."""
        if self._tail is None:
            return outputs
        graph, constants = self._tail
        if inputs is None:
            given: Dict[str, np.ndarray] = {}
        elif isinstance(inputs, dict):
            given = inputs
        else:
            given = {self.input.name: inputs}
        wanted = [n for n in graph["inputs"] if n not in given]
        names = heads.match_names(wanted, list(outputs))
        values = {k: outputs[v] for k, v in names.items() if v}
        values.update({k: given[k] for k in graph["inputs"] if k in given})
        missing = [k for k in graph["inputs"] if k not in values]
        if missing:
            raise AppError(
                f"The part of the model that runs on the CPU reads {', '.join(missing)}, which "
                "neither the TPU's outputs nor the given inputs hold: give "
                + ("them" if len(missing) > 1 else "it")
                + " in the .npz file, by name."
            )
        return tail.run(graph, constants, values)

    def postprocess(
        self,
        outputs: Dict[str, np.ndarray],
        image_hw: Optional[Tuple[int, int]],
        top: int = 5,
        conf: Optional[float] = None,
        iou: Optional[float] = None,
    ) -> Any:
        """The task's answer: top-k classes, detected objects, or a summary of each output."""
        task = self.config["task"]
        if task == "classify":
            first = outputs[self.config.get("first_output") or next(iter(outputs))]
            return heads.classify(first[:1], top, self.config.get("labels"))[0]
        if task == "detect":
            d = self.config["detect"]
            head = d["head"]
            net_hw = tuple(head["input_hw"])
            pre = self.config["preprocess"]
            mode, resize = pre["resize_mode"], pre["resize"]
            if image_hw is None:
                mode, resize, image_hw = "stretch", net_hw, net_hw
            maps = [m[:1] for m in heads.maps_in_order(head, outputs)]
            found = heads.detect(
                head,
                maps,
                mode,
                resize,
                [image_hw],
                d["conf"] if conf is None else conf,
                d["iou"] if iou is None else iou,
                d["max_det"],
            )[0]
            for f in found:
                f["box"] = [round(v, 1) for v in f["box"]]
                f["score"] = round(f["score"], 4)
                if "keypoints" in f:
                    f["keypoints"] = [[round(x, 1), round(y, 1)] for x, y in f["keypoints"]]
            return found
        return {
            name: {
                "shape": list(v.shape),
                "min": float(v.min()),
                "max": float(v.max()),
                "mean": float(v.mean()),
            }
            for name, v in outputs.items()
        }

    def infer(self, item: "str | Path", **kw: Any) -> Dict[str, Any]:
        """One input end to end, with the time each stage took (ms)."""
        t0 = time.perf_counter()
        x, hw = self.prepare(item)
        t_pre = _ms(t0)
        t1 = time.perf_counter()
        raw = self.forward(x)
        t_tpu = _ms(t1)
        t2 = time.perf_counter()
        outputs = self.finish(raw, x)
        answer = self.postprocess(outputs, hw, **kw)
        t_post = _ms(t2)
        return {
            "image": str(item),
            "model": self.mode,
            "result": answer,
            "outputs": outputs,
            "times_ms": {"preprocess": t_pre, "tpu": t_tpu, "postprocess": t_post},
        }

    def close(self) -> None:
        self.model.close()


def peak_rss_mb() -> Optional[float]:
    """This process's peak resident memory (VmHWM), in MB; ``None`` where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def _items(paths: Sequence[str]) -> List[Path]:
    out: List[Path] = []
    known = images.NATIVE + images.DECODED + images.RAW + (".npz",)
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in known)
        else:
            out.append(p)
    return out


def _line(r: Dict[str, Any], task: str) -> str:
    t = r["times_ms"]
    times = f"[pre {t['preprocess']:.1f} ms, tpu {t['tpu']:.1f} ms, post {t['postprocess']:.1f} ms]"
    res = r["result"]
    if task == "classify":
        body = ", ".join(f"{c['name']} {c['probability']:.3f}" for c in res[:3])
    elif task == "detect":
        body = f"{len(res)} objects" + (
            ": " + ", ".join(f"{d['name']} {d['score']:.2f} {d['box']}" for d in res[:5])
            if res
            else ""
        )
    else:
        body = ", ".join(f"{n} {v['shape']} mean {v['mean']:.4g}" for n, v in res.items())
    return f"{r['image']}: {body}  {times}"


def main(argv: Optional[Sequence[str]] = None, folder: "str | Path | None" = None) -> int:
    """``python3 main.py IMAGE... [--json] [--count N]``: the exit code."""
    ap = argparse.ArgumentParser(
        prog="main.py",
        description="Run a duotpu build on this board: images or a folder in, answers out.",
    )
    ap.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE|FOLDER",
        help="PPM/PGM/BMP/.npy, raw "
        "frames, JPEG/PNG when OpenCV or Pillow is installed, .npz (one array per input "
        "name); folders are searched",
    )
    ap.add_argument(
        "--app",
        default=str(folder or Path(__file__).resolve().parent.parent),
        help="the app folder (default: this one)",
    )
    ap.add_argument("--model", help="which model of the app (int8, bf16, mix) or a .cvimodel")
    ap.add_argument("--lib", help="libcviruntime.so (default: LD_LIBRARY_PATH, the SDK)")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("--top", type=int, default=5, help="classes shown (classify)")
    ap.add_argument("--conf", type=float, help="score threshold (detect)")
    ap.add_argument("--iou", type=float, help="NMS overlap (detect)")
    ap.add_argument(
        "--count", type=int, default=0, help="benchmark: run the TPU N times on the first input"
    )
    ap.add_argument("--save", metavar="FILE.npz", help="write every output of every input")
    ap.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = ap.parse_args(argv)
    real_stdout = None
    if args.json:  # the runtime library prints on stdout: keep the JSON document alone there
        sys.stdout.flush()
        real_stdout = os.dup(1)
        os.dup2(2, 1)
    try:
        return _run(args, real_stdout)
    except (AppError, cvi.CviError, tail.TailError, images.ImageError) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (AppError, images.ImageError)) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, json_fd: Optional[int] = None) -> int:
    t0 = time.perf_counter()
    app = App(args.app, args.model, args.lib)
    t_open = _ms(t0)
    items = _items(args.inputs)
    if not items:
        raise AppError(f"No images in {', '.join(args.inputs)}.")
    task = app.config["task"]
    results, saved = [], {}
    try:
        for k, item in enumerate(items):
            t_read = time.perf_counter()
            if not Path(item).is_file():
                raise AppError(f"{item}: no such file.")
            r = app.infer(item, top=args.top, conf=args.conf, iou=args.iou)
            r["times_ms"]["total"] = _ms(t_read)
            for name, v in r.pop("outputs").items():
                saved[f"{k}/{name}"] = v
            results.append(r)
            if not args.json:
                print(_line(r, task), flush=True)
        bench = None
        if args.count > 0:
            x, _ = app.prepare(items[0])
            times = []
            for _ in range(args.count):
                t1 = time.perf_counter()
                app.forward(x)
                times.append(_ms(t1))
            times.sort()
            bench = {
                "runs": len(times),
                "mean_ms": round(sum(times) / len(times), 3),
                "min_ms": times[0],
                "p50_ms": times[len(times) // 2],
                "max_ms": times[-1],
            }
            if not args.json:
                print(
                    f"tpu x{bench['runs']}: mean {bench['mean_ms']:.2f} ms, p50 "
                    f"{bench['p50_ms']:.2f}, min {bench['min_ms']:.2f}, max {bench['max_ms']:.2f}"
                    f" ({1000.0 / bench['mean_ms']:.1f} fps)"
                )
    finally:
        app.close()
    if args.save:
        tmp = args.save + ".part.npz"
        np.savez(tmp, **saved)
        os.replace(tmp, args.save)
    if args.json:
        doc = {
            "peak_rss_mb": peak_rss_mb(),
            "app": app.config["name"],
            "model": app.mode,
            "chip": app.config["chip"],
            "open_ms": t_open,
            "results": results,
            "bench": bench,
        }
        sys.stdout.flush()
        with os.fdopen(json_fd if json_fd is not None else os.dup(1), "w") as f:
            f.write(json.dumps(doc) + "\n")
    return 0
