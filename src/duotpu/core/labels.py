"""Class names: ImageNet's built in (from torchvision's metadata), or a user's label file."""

from __future__ import annotations

from pathlib import Path

from duotpu.config.errors import DataError
from duotpu.onboard import heads


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in class-index order."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


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
