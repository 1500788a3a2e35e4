"""``duotpu app BUILD``: a build turned into a folder that runs on the board by itself.

The folder holds the build's cvimodel(s), ``app.json`` (preprocessing, task, labels,
thresholds, the decode of a detector, the CPU tail of a cut model — all from the build's
manifest and recipe), the board runtime (`duotpu.onboard`: Python standard library and
numpy only) and ``main.py``. It is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import duotpu.onboard as onboard_pkg
from duotpu.builder.manifest import Manifest
from duotpu.config.errors import ConfigError, ModelError
from duotpu.core import labels
from duotpu.core.preprocess import input_hw, resize_dims, tpu_mean_scale
from duotpu.inference.runtime import BuiltModel, open_model
from duotpu.onboard import app as onboard_app
from duotpu.onboard import tail as onboard_tail

#: the package's name inside an app folder
RUNTIME_DIR = "duotpu_onboard"

_MAIN = '''#!/usr/bin/env python3
"""{name}: a duotpu build that runs on the board by itself.

    python3 main.py IMAGE|FOLDER ... [--json] [--count N] [--model int8|bf16|mix]

Needs python3 and numpy (the stock Duo images have both) and the SDK's libcviruntime.so
(LD_LIBRARY_PATH, $TPU_SDK_PATH/lib or /mnt/system/lib). See README.txt.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from duotpu_onboard.app import main  # noqa: E402

sys.exit(main(folder=HERE))
'''

_README = """{name} — a duotpu app (made by duotpu {version} from {build})

On the board:
    python3 main.py photo.ppm                 # a file, several, or a folder
    python3 main.py photos/ --json            # one JSON document
    python3 main.py photo.ppm --count 50      # TPU time over 50 runs
    python3 main.py photo.ppm --model bf16    # another model of this app: {modes}

Images: PPM/PGM, BMP, .npy (uint8 RGB pictures or ready float32 tensors) and raw frames
(.yuv/.nv21/.nv12/.rgb/.bgr of the input's exact size) need nothing but numpy; JPEG and PNG
need OpenCV or Pillow on the board (the stock images have neither: convert on the PC).

From your own Python:
    import sys; sys.path.insert(0, "/root/{folder}")
    from duotpu_onboard.app import App
    app = App("/root/{folder}")
    print(app.infer("photo.ppm")["result"])

Task: {task}. Input: {input}. Chip: {chip}.
"""


@dataclass(frozen=True)
class AppFolder:
    """What ``duotpu app`` wrote: the folder, its config and the models in it."""

    folder: Path
    config: dict[str, Any]
    models: tuple[str, ...]
    size_bytes: int


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("duotpu")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _tail_graph(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A cut model's ``NAME.tail.onnx`` as the plain graph the board runs, and its constants."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    nodes: list[Mapping[str, Any]] = []
    for n in m.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            continue
        attrs: dict[str, Any] = {}
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            elif isinstance(v, onnx.TensorProto):
                v = numpy_helper.to_array(v).tolist()
            elif isinstance(v, (list, tuple)):
                v = [x.decode() if isinstance(x, bytes) else x for x in v]
            attrs[a.name] = v
        nodes.append(
            {
                "op": n.op_type,
                "name": n.name,
                "inputs": list(n.input),
                "outputs": list(n.output),
                "attrs": attrs,
            }
        )
    try:
        onboard_tail.check(nodes)
    except onboard_tail.TailError as e:
        raise ModelError(f"{path.name}: {e}") from None
    inputs = {
        i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in m.graph.input
        if i.name not in consts
    }
    graph = {"inputs": inputs, "nodes": nodes, "outputs": [o.name for o in m.graph.output]}
    return graph, consts


def app_config(models: dict[str, BuiltModel]) -> dict[str, Any]:
    """``app.json`` for the build's models (the first is the default)."""
    first = next(iter(models.values()))
    r = first.recipe
    t = first.info.programs[0].inputs[0]
    shape = tuple(t.shape)
    channels = (
        shape[1] if len(shape) == 4 and not (t.pixel_format and "PACKED" in t.pixel_format) else 3
    )
    mean_s, scale_s = tpu_mean_scale(r.preprocess, channels if channels in (1, 3) else 3)
    net = (1, channels, *input_hw(shape, t.pixel_format or ""))
    out0 = first.info.programs[0].outputs
    cfg: dict[str, Any] = {
        "format": onboard_app.FORMAT,
        "name": r.name,
        "chip": r.chip,
        "task": r.task,
        "default": next(iter(models)),
        "models": {
            mode: {
                "file": f"models/{m.cvimodel.name}",
                "programs": [int(p.inputs[0].shape[0]) for p in m.info.programs],
                "pixel_format": m.info.programs[0].inputs[0].pixel_format
                if m.info.programs[0].inputs[0].dtype in ("uint8", "int8")
                and m.info.programs[0].inputs[0].pixel_format
                else "",
            }
            for mode, m in models.items()
        },
        "input": {"name": t.name, "shape": list(shape)},
        # the recipe's shapes for tensor inputs (the cvimodel pads them to 4 dims)
        "inputs": [
            {"name": ci.name, "shape": list(ri.shape if r.tensor_inputs else ci.shape)}
            for ci, ri in zip(first.info.programs[0].inputs, r.inputs)
        ],
        "tensor_inputs": r.tensor_inputs,
        "preprocess": {
            "resize": list(resize_dims(r.preprocess, net)),
            "resize_mode": r.preprocess.resize_mode,
            "pad_value": r.preprocess.pad_value,
            "mean": [float(v) for v in mean_s.split(",")],
            "scale": [float(v) for v in scale_s.split(",")],
            "pixel_format": r.preprocess.pixel_format,
        },
        "output_shapes": {o.name: list(o.shape) for o in out0},
        "first_output": None,
        "labels": None,
        "detect": None,
        "tail": None,
    }
    if r.task == "classify":
        first_name = first.output_names[0]
        cfg["first_output"] = first_name
        n = int(np.prod(out0[0].shape[1:])) if out0 else 0
        if first.tail is None and n == 1000:
            cfg["labels"] = labels.imagenet_classes()
    if r.task == "detect" and first.head is not None:
        cfg["detect"] = {
            "head": first.head.to_json(),
            "conf": r.detect.conf,
            "iou": r.detect.iou,
            "max_det": r.detect.max_det,
        }
    return cfg


def make_app(
    build: str | Path,
    out: str | Path | None = None,
    modes: list[str] | None = None,
    c: bool = False,
    sdk: str | Path | None = None,
    target: str = "riscv64-musl",
) -> AppFolder:
    """Write the board app of build folder ``build`` into ``out`` (default ``BUILD/app``).

    ``modes`` picks the models (default: every model of the build, INT8 first). ``c`` also
    writes the C app (``c/``), compiled for ``target`` when ``sdk`` (the board's runtime SDK
    folder, whose ``lib/libcviruntime.so`` it links) is given. Raises
    `ConfigError` for a folder that is not a build, and
    `ModelError` for a cut model whose CPU tail has an op the
    board app cannot run."""
    build = Path(build)
    listed = Manifest.read(build).models
    order = [m for m in ("int8", "mix", "bf16") if m in listed] + [
        m for m in listed if m not in ("int8", "mix", "bf16")
    ]
    if modes:
        unknown = [m for m in modes if m not in listed]
        if unknown:
            raise ConfigError(
                f"The build {build} has no {', '.join(unknown)} model; it has {', '.join(order)}."
            )
        order = [m for m in modes]
    if not order:
        raise ConfigError(f"The build {build} delivered no cvimodel; rebuild it first.")
    models = {m: open_model(build / listed[m].cvimodel) for m in order}
    cfg = app_config(models)
    first = next(iter(models.values()))
    if c and first.recipe.tensor_inputs:
        shown = ", ".join(f"{i['name']} {i['shape']}" for i in cfg["inputs"])
        raise ConfigError(
            f"The C app reads images, and {first.recipe.name} takes tensors ({shown}). Make the "
            "Python app (duotpu app without --c): its main.py takes .npz files of the inputs, "
            "and its App class takes arrays by input name."
        )
    final = Path(out) if out else build / "app"
    tmp = final.with_name(f".{final.name}.part")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "models").mkdir(parents=True)
    try:
        for m in models.values():
            shutil.copyfile(m.cvimodel, tmp / "models" / m.cvimodel.name)
        if first.tail is not None:
            graph, consts = _tail_graph(first.tail)
            np.savez(tmp / "tail.npz", **consts)
            cfg["tail"] = {"graph": graph, "constants": "tail.npz"}
        src = Path(onboard_pkg.__file__).parent
        (tmp / RUNTIME_DIR).mkdir()
        for f in sorted(src.glob("*.py")):
            shutil.copyfile(f, tmp / RUNTIME_DIR / f.name)
        (tmp / "app.json").write_text(json.dumps(cfg, indent=1))
        main = tmp / "main.py"
        main.write_text(_MAIN.format(name=cfg["name"]))
        main.chmod(0o755)
        inp = cfg["input"]
        (tmp / "README.txt").write_text(
            _README.format(
                name=cfg["name"],
                version=_version(),
                build=build,
                modes=", ".join(models),
                folder=final.name,
                task=cfg["task"],
                input=f"{inp['name']} {inp['shape']}",
                chip=cfg["chip"],
            )
        )
        if c:
            from .capp import write_c_app

            write_c_app(tmp, cfg, Path(sdk) if sdk else None, target)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    return AppFolder(final, cfg, tuple(models), size)
