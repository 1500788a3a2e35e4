"""The recipe: TOML loading, key/type checks, overrides, round trip."""
from pathlib import Path

import pytest

from duotpu.errors import ConfigError
from duotpu.recipe import load_recipe, recipe_from_dict

DEMO = Path(__file__).parents[1] / "src/duotpu/recipes/efficientnet_lite0.toml"


def test_demo_recipe_loads_and_round_trips(tmp_path):
    r = load_recipe(DEMO)
    assert r.name == "efficientnet_lite0" and r.chip == "cv180x"
    assert r.quantize == ("int8", "bf16")
    assert r.inputs[0].shape == (1, 3, 224, 224)
    assert r.preprocess.resize_mode == "short_side" and r.preprocess.resize == (256, 256)
    p = tmp_path / "again.toml"
    p.write_text(r.to_toml())
    assert load_recipe(p) == r


@pytest.mark.parametrize("data,key", [
    ({"nmae": "x"}, "nmae"),
    ({"calibration": {"cuont": 3}}, "calibration.cuont"),
    ({"preprocess": {"means": [0, 0, 0]}}, "preprocess.means"),
])
def test_unknown_key_is_named(data, key):
    base = {"name": "m", "model": {"source": "m.onnx"}}
    base.update(data)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        recipe_from_dict(base)


@pytest.mark.parametrize("data,key", [
    ({"calibration": {"count": "many"}}, "calibration.count"),
    ({"preprocess": {"mean": "0.5"}}, "preprocess.mean"),
    ({"inputs": [{"shape": [1, 3, "a", 4]}]}, r"inputs\[0\].shape\[2\]"),
    ({"chip": "cv1800"}, "chip"),
    ({"quantize": ["int4"]}, r"quantize\[0\]"),
])
def test_wrong_type_is_named(data, key):
    base = {"name": "m", "model": {"source": "m.onnx"}}
    base.update(data)
    with pytest.raises(ConfigError, match=key):
        recipe_from_dict(base)


def test_value_checks():
    base = {"name": "m", "model": {"source": "m.onnx"}}
    with pytest.raises(ConfigError, match="pixel_format"):
        recipe_from_dict({**base, "inputs": [{"shape": [1, 1, 28, 28]}]})
    with pytest.raises(ConfigError, match="resize"):
        recipe_from_dict({**base, "preprocess": {"resize": [100, 100]}})
    with pytest.raises(ConfigError, match="name"):
        recipe_from_dict({"name": "bad name!", "model": {"source": "m.onnx"}})


def test_overrides_and_relative_paths(tmp_path):
    (tmp_path / "r.toml").write_text(
        'name = "m"\n[model]\nsource = "sub/m.onnx"\n[calibration]\nimages = "imgs"\n')
    r = load_recipe(tmp_path / "r.toml", {"calibration.count": 7, "chip": "cv181x"})
    assert r.model.source == str(tmp_path / "sub/m.onnx")
    assert r.calibration.images == str(tmp_path / "imgs")
    assert r.calibration.count == 7 and r.chip == "cv181x"
    with pytest.raises(ConfigError, match="calibration.count"):
        r.with_overrides({"calibration.count": "x"})


def test_bad_toml_is_a_config_error(tmp_path):
    (tmp_path / "r.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(tmp_path / "r.toml")
