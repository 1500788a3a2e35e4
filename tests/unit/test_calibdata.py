"""Calibration data given in Python: arrays, dicts, or ONNX Runtime's reader protocol."""

import numpy as np
import pytest

from duotpu.builder import calibdata
from duotpu.config.errors import DataError
from duotpu.config.recipe import Mix, Target, parse_target

SHAPE = (1, 3, 8, 8)


class Reader:
    """ONNX Runtime's CalibrationDataReader shape: get_next() until None."""

    def __init__(self, arrays):
        self.it = iter(arrays)

    def get_next(self):
        a = next(self.it, None)
        return None if a is None else {"input": a}


def test_arrays_dicts_and_readers_become_the_same_npz_inputs(tmp_path):
    rng = np.random.default_rng(0)
    batch = [rng.normal(size=SHAPE).astype(np.float32) for _ in range(5)]
    a = calibdata.write_arrays(batch, tmp_path, [("input", SHAPE)])
    files = calibdata.array_files(a)
    assert len(files) == 5  # every array given is used (calibration.count does not cut them)
    got = np.load(files[1])
    assert got.files == ["input"] and np.array_equal(got["input"], batch[1])
    # CHW items get their batch axis; a reader and dicts give the same folder (same content)
    assert calibdata.write_arrays([x[0] for x in batch], tmp_path, [("input", SHAPE)]) == a
    assert calibdata.write_arrays(Reader(batch), tmp_path, [("input", SHAPE)]) == a
    assert calibdata.write_arrays(Reader(batch[:2]), tmp_path, [("input", SHAPE)]) != a
    assert isinstance(Reader([]), calibdata.CalibrationDataReader)


def test_wrong_calibration_items_are_named(tmp_path):
    good = np.zeros(SHAPE, np.float32)
    with pytest.raises(DataError, match=r"item 1 has shape \[1, 3, 4, 4\].*\[1, 3, 8, 8\]"):
        calibdata.write_arrays([good, np.zeros((1, 3, 4, 4))], tmp_path, [("input", SHAPE)])
    with pytest.raises(DataError, match="feeds a, b; the model's inputs are input"):
        calibdata.write_arrays([{"a": good, "b": good}], tmp_path, [("input", SHAPE)])
    with pytest.raises(DataError, match="no arrays"):
        calibdata.write_arrays([], tmp_path, [("input", SHAPE)])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_samples_of_several_inputs_are_checked_by_name(tmp_path):
    inputs = [("audio", (1, 576)), ("state", (2, 1, 128))]
    audio, state = np.ones((1, 576)), np.zeros((2, 1, 128))
    folder = tmp_path / "cal"
    folder.mkdir()
    np.savez(folder / "a.npz", audio=audio, state=state)
    np.savez(folder / "b.npz", audio=audio[0], state=state[None])  # no batch / one too many
    got = calibdata.read_sample(folder / "a.npz", inputs)
    assert got["audio"].dtype == np.float32 and got["state"].shape == (2, 1, 128)
    with pytest.raises(DataError, match=r"b.npz has shape \[1, 2, 1, 128\] for input 'state'"):
        calibdata.folder_samples(folder, inputs, 10)
    with pytest.raises(DataError, match="is one array; the model has 2 inputs"):
        calibdata.write_arrays([audio], tmp_path, inputs)
    with pytest.raises(DataError, match=r"no .npz files.*np.savez\(path, audio=…, state=…\)"):
        calibdata.folder_samples(tmp_path / "empty", inputs, 10)
    made = calibdata.write_arrays([{"state": state, "audio": audio}] * 2, tmp_path, inputs)
    assert sorted(np.load(calibdata.array_files(made)[0]).files) == ["audio", "state"]
    np.save(tmp_path / "one.npy", audio)
    assert calibdata.read_sample(tmp_path / "one.npy", inputs[:1])["audio"].shape == (1, 576)


def test_a_target_is_parsed_once_into_a_typed_value():
    t = parse_target(" cos >= 0.99 ")
    assert t == Target("cos", 0.99) and str(t) == "cos>=0.99"
    assert Mix(target="map>=0.5").goal == Target("map", 0.5) and Mix().goal is None


def test_a_cos_target_weighs_every_output_of_a_multi_output_model():
    """A segmentation model's second output (mask prototypes) counts: the metric is the least
    similar output's cosine per image, so a candidate that keeps only the first output right does
    not meet ``cos>=0.99``."""
    from duotpu.builder import mixprec
    from duotpu.config.recipe import Recipe

    rng = np.random.default_rng(1)
    fp32 = [[rng.normal(size=(1, 8)), rng.normal(size=(1, 4, 4))] for _ in range(3)]
    score = mixprec.scorer(Recipe(), "cos", fp32, [])
    same = [{"a": f[0], "b": f[1]} for f in fp32]
    assert score(same) > 0.999
    second_off = [{"a": f[0], "b": f[1] + rng.normal(size=f[1].shape)} for f in fp32]
    assert score(second_off) < 0.9
