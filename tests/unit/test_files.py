"""The one atomic-write helper every writer uses."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from duotpu.core.files import atomic_path, atomic_write


def test_a_half_written_file_is_never_seen_under_its_name_or_suffix(tmp_path):
    atomic_write(tmp_path / "old.cvimodel", b"old")
    with atomic_path(tmp_path / "net.cvimodel") as tmp:
        tmp.write_bytes(b"half")
        # a `*.cvimodel` glob of the folder (eval, build-many, the app) sees only whole files
        assert [p.name for p in tmp_path.glob("*.cvimodel")] == ["old.cvimodel"]
    assert (tmp_path / "net.cvimodel").read_bytes() == b"half"
    with atomic_path(tmp_path / "x.npz") as tmp:  # writers that go by the suffix work
        np.savez(tmp, a=np.arange(3))
    assert np.array_equal(np.load(tmp_path / "x.npz")["a"], np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "y.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.cvimodel", "old.cvimodel", "x.npz"]


def test_two_writers_of_one_file_do_not_share_a_temporary_name(tmp_path):
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for _ in range(50):
                atomic_write(tmp_path / "same.json", str(k) * 1000)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    text = (tmp_path / "same.json").read_text()
    assert len(set(text)) == 1 and len(text) == 1000  # one writer's whole content


def test_image_checks_survive_a_replaced_image_open(tmp_path, monkeypatch):
    """Ultralytics replaces PIL's Image.open on import; on a file Pillow does not know, its
    opener raises ModuleNotFoundError (pi_heif). The calibration folder check skips such a file
    instead of ending the build with an internal error."""
    from PIL import Image

    from duotpu.core import images

    images.write_calibration_set(tmp_path, 2, seed=1)
    (tmp_path / "broken.jpg").write_bytes(b"not really a jpeg")
    real = Image.open

    def patched(fp, *a, **k):
        try:
            return real(fp, *a, **k)
        except Image.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'") from None

    monkeypatch.setattr(Image, "open", patched)
    scan = images.scan_images(tmp_path)
    assert len(scan.paths) == 2 and [p.name for p in scan.skipped] == ["broken.jpg"]
    assert images.image_problem(tmp_path / "broken.jpg").startswith("not an image")
