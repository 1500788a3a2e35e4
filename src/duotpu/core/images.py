"""Images: the photos that ship with scikit-image / scikit-learn, calibration sets, image folders.

Nothing is downloaded: the built-in photos come from installed packages.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from duotpu.config.errors import DataError
from duotpu.core.files import atomic_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: Colour photos of natural scenes shipped with scikit-image (name → loader attribute).
_SKIMAGE_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
)
_SKIMAGE_GRAY = ("camera", "coins", "moon", "brick", "grass", "gravel")
_SKLEARN_PHOTOS = ("china", "flower")


def builtin_photo(name: str) -> np.ndarray:
    """A built-in photo as an RGB uint8 array (H, W, 3); ``name`` like ``chelsea`` or ``china``."""
    if name in _SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        return np.ascontiguousarray(load_sample_image(f"{name}.jpg"))
    import skimage.data

    if name not in _SKIMAGE_PHOTOS + _SKIMAGE_GRAY + ("cat",):
        raise DataError(
            f"Unknown built-in image 'builtin:{name}'. Choose from: "
            f"{', '.join(_SKIMAGE_PHOTOS + _SKIMAGE_GRAY + _SKLEARN_PHOTOS)}."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3].astype(np.uint8))


def calibration_photos() -> list[tuple[str, np.ndarray]]:
    """The natural photos calibration crops are cut from (the test photo chelsea excluded)."""
    names = [n for n in _SKIMAGE_PHOTOS if n != "chelsea"] + ["camera"] + list(_SKLEARN_PHOTOS)
    return [(n, builtin_photo(n)) for n in names]


def save_image(path: Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array to ``path`` (format from the suffix), atomically."""
    import cv2

    path = Path(path)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[:, :, ::-1])):
            raise DataError(f"Could not write the image {path}.")
    return path


def resolve_image(spec: str, folder: Path) -> Path:
    """A test-input spec as a file on disk: ``builtin:NAME``, an image, or a preprocessed
    tensor (``.npz`` / ``.npy``, NCHW float32, given to the compiler as is)."""
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = Path(folder) / f"{name}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_image(path, builtin_photo(name))
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(
            f"The test image {path} does not exist. Give an image file, or "
            "'builtin:chelsea' for the cat photo that ships with scikit-image."
        )
    if path.suffix.lower() in (".npz", ".npy"):
        try:
            np.load(path)
        except (OSError, ValueError) as e:
            raise DataError(f"The test input {path} is not a readable numpy file: {e}.") from None
        return path
    problem = image_problem(path)
    if problem:
        raise DataError(f"The test image {path} cannot be used: {problem}.")
    return path


def image_problem(path: Path) -> str:
    """Why a file is not a whole image ('' when it is): decoded completely, so a truncated
    JPEG or PNG (which OpenCV reads anyway, grey where the data ends) is caught."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except OSError as e:  # PIL: "image file is truncated", "cannot identify image file"
        text = str(e)
        if "truncated" in text:
            return "the file is truncated (an interrupted copy or download?)"
        return "not an image file (or a damaged one)"
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"not a readable image ({type(e).__name__})"
    except Exception:  # noqa: BLE001 — Image.open replaced by another library (see scan_images)
        return "not an image file (or a damaged one)"
    return ""


def random_crops(
    photos: list[tuple[str, np.ndarray]], count: int, seed: int, min_side: int = 224
) -> list[tuple[str, np.ndarray]]:
    """``count`` random crops (area 25–100 %, aspect 3:4–4:3) with random horizontal flips."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        name, img = photos[i % len(photos)]
        h, w = img.shape[:2]
        for _ in range(20):
            area = rng.uniform(0.25, 1.0) * h * w
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
            if min(min_side, h) <= ch <= h and min(min_side, w) <= cw <= w:
                break
        else:
            ch, cw = h, w
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append((f"{i:04d}_{name}", np.ascontiguousarray(crop)))
    return out


def write_calibration_set(folder: Path, count: int, seed: int) -> list[Path]:
    """Write ``count`` crops of the built-in photos as JPEG files into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, crop in random_crops(calibration_photos(), count, seed):
        paths.append(save_image(folder / f"{name}.jpg", crop))
    return paths


def read_rgb(path: Path) -> np.ndarray | None:
    """Read an image file as RGB uint8, or ``None`` when it is not a readable image."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return img[:, :, ::-1]


@dataclass
class ImageFolder:
    """The readable images of a folder (searched recursively) and how many files were skipped."""

    paths: list[Path]
    skipped: list[Path]


def scan_list(path: Path) -> ImageFolder:
    """The images a list file names (one path a line, relative to the file's folder; ``#``
    comments) — the old ``--image_list``. A named file that is missing is an error."""
    path = Path(path)
    paths = []
    for ln, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        p = (path.parent / line).resolve()
        if not p.is_file():
            raise DataError(f"{path}, line {ln}: the image {line} does not exist.")
        paths.append(p)
    return ImageFolder(paths, [])


def list_files(folder: Path) -> list[Path]:
    """The files under ``folder`` (recursively, hidden ones left out), sorted; cheap enough for
    a cache key, since nothing is decoded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"The image folder {folder} does not exist. Give a folder of images "
            "(JPEG, PNG, ...) or 'builtin:natural'."
        )
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def scan_images(folder: Path) -> ImageFolder:
    """The image files under ``folder`` (by their header, nothing decoded: use
    `image_problem` on the ones taken); other files are skipped and counted."""
    from PIL import Image

    good: list[Path] = []
    bad: list[Path] = []
    for p in list_files(folder):
        ok = False
        if p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                with Image.open(p):
                    ok = True
            # any error: another library may have replaced Image.open (Ultralytics' patch
            # raises ModuleNotFoundError for pi_heif on a file Pillow does not know)
            except Exception:  # noqa: BLE001
                ok = False
        (good if ok else bad).append(p)
    return ImageFolder(good, bad)


#: Classes of the built-in synthetic detection set (`write_shapes_dataset`).
SHAPE_CLASSES = ("circle", "square", "triangle")


def write_shapes_dataset(
    folder: Path, count: int, size: int = 320, seed: int = 0, max_objects: int = 4
) -> Path:
    """A labelled detection set made offline: crops of the built-in photos with 1–``max_objects``
    filled circles, squares and triangles of random colour and size drawn on them, in the
    YOLO layout ``images/NNNNN.jpg`` + ``labels/NNNNN.txt`` (``class cx cy w h``, 0–1).
    Objects do not overlap by more than a little, so every label is visible."""
    import cv2

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [p for _, p in calibration_photos()]
    for i in range(count):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        s = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        img = np.ascontiguousarray(cv2.resize(photo[y : y + s, x : x + s], (size, size)))
        boxes: list[tuple[int, int, int, int]] = []
        lines = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _try in range(20):
                r = int(rng.integers(size // 16, size // 5))
                cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
                b = (cx - r, cy - r, cx + r, cy + r)
                if all(
                    min(b[2], o[2]) - max(b[0], o[0]) < r // 2
                    or min(b[3], o[3]) - max(b[1], o[1]) < r // 2
                    for o in boxes
                ):
                    break
            else:
                continue
            cls = int(rng.integers(len(SHAPE_CLASSES)))
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            if cls == 0:
                cv2.circle(img, (cx, cy), r, color, -1)
            elif cls == 1:
                cv2.rectangle(img, b[:2], b[2:], color, -1)
            else:
                pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
                cv2.fillPoly(img, [pts], color)
            boxes.append(b)
            lines.append(
                f"{cls} {cx / size:.6f} {cy / size:.6f} {2 * r / size:.6f} {2 * r / size:.6f}"
            )
        save_image(folder / "images" / f"{i:05d}.jpg", img)
        (folder / "labels" / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    return folder
