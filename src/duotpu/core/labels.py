"""Class names: ImageNet's built in (from torchvision's metadata), or a user's label file."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from duotpu.config.errors import DataError
from duotpu.onboard import heads


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in class-index order (torchvision's metadata)."""
    return list(_imagenet_categories())


@functools.lru_cache(maxsize=1)
def _imagenet_categories() -> tuple[str, ...]:
    import sys
    from types import ModuleType

    meta: ModuleType | None = sys.modules.get("torchvision.models._meta")
    if meta is None:
        # the metadata module alone (plain data): importing torchvision for it costs 2-3 s,
        # which a build would otherwise spend writing its report
        spec = importlib.util.find_spec("torchvision")
        origin = Path(spec.origin).parent / "models" / "_meta.py" if spec and spec.origin else None
        loaded = (
            importlib.util.spec_from_file_location("_duotpu_imagenet_meta", origin)
            if origin is not None and origin.is_file()
            else None
        )
        if loaded is None or loaded.loader is None:
            meta = importlib.import_module("torchvision.models._meta")
        else:
            meta = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(meta)
    return tuple(meta._IMAGENET_CATEGORIES) if meta is not None else ()


def read_labels(path: Path) -> list[str]:
    """A label file: one class a line, either a plain name or the SDK's ``synset_words.txt``
    form (``n01440764 tench, Tinca tinca``: the id is dropped, the first name kept)."""
    try:
        lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    except OSError as e:
        raise DataError(f"Cannot read the label file {path}: {e.strerror}.") from None
    out = []
    for ln in lines:
        first, _, rest = ln.partition(" ")
        if rest and first[:1] == "n" and first[1:].isdigit():
            ln = rest
        out.append(ln.split(",")[0].strip())
    return out


#: the name of a class (its number when there is no name)
class_name = heads.class_name
