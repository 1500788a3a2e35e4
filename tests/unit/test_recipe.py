"""The recipe: TOML loading, key/type checks, overrides, round trip."""

from pathlib import Path

import pytest

from duotpu.config.errors import ConfigError
from duotpu.config.recipe import load_recipe, recipe_from_dict

DEMO = Path(__file__).parents[2] / "src/duotpu/recipes/efficientnet_lite0.toml"


def test_demo_recipe_loads_and_round_trips(tmp_path):
    r = load_recipe(DEMO)
    assert r.name == "efficientnet_lite0" and r.chip == "cv180x"
    assert r.quantize == ("int8", "bf16")
    assert r.inputs[0].shape == (1, 3, 224, 224)
    assert r.preprocess.resize_mode == "short_side" and r.preprocess.resize == (256, 256)
    p = tmp_path / "again.toml"
    p.write_text(r.to_toml())
    assert load_recipe(p) == r


@pytest.mark.parametrize(
    "data,key",
    [
        ({"nmae": "x"}, "nmae"),
        ({"calibration": {"cuont": 3}}, "calibration.cuont"),
        ({"preprocess": {"means": [0, 0, 0]}}, "preprocess.means"),
    ],
)
def test_unknown_key_is_named(data, key):
    base = {"name": "m", "model": {"source": "m.onnx"}}
    base.update(data)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        recipe_from_dict(base)


@pytest.mark.parametrize(
    "data,key",
    [
        ({"calibration": {"count": "many"}}, "calibration.count"),
        ({"preprocess": {"mean": "0.5"}}, "preprocess.mean"),
        ({"inputs": [{"shape": [1, 3, "a", 4]}]}, r"inputs\[0\].shape\[2\]"),
        ({"chip": "cv1800"}, "chip"),
        ({"quantize": ["int4"]}, r"quantize\[0\]"),
    ],
)
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
        recipe_from_dict(
            {**base, "inputs": [{"shape": [1, 3, 224, 224]}], "preprocess": {"resize": [100, 100]}}
        )
    # no shape yet: it is settled from the model, and the resize checked then
    assert recipe_from_dict({**base, "preprocess": {"resize": [100, 100]}}).inputs[0].shape == ()
    with pytest.raises(ConfigError, match="name"):
        recipe_from_dict({"name": "bad name!", "model": {"source": "m.onnx"}})


def test_overrides_and_relative_paths(tmp_path):
    (tmp_path / "r.toml").write_text(
        'name = "m"\n[model]\nsource = "sub/m.onnx"\n[calibration]\nimages = "imgs"\n'
    )
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


def test_relative_paths_in_a_toml_recipe_are_taken_from_its_folder(tmp_path, monkeypatch):
    """Every path key (from the dataclasses' field metadata) resolves against the recipe's
    folder, not the working directory: mix.qtable and mix.images included."""
    from duotpu.config.recipe import path_keys

    assert {
        "model.source",
        "model.weights",
        "calibration.images",
        "test_image",
        "mix.qtable",
        "mix.images",
    } <= set(path_keys())
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "r.toml").write_text(
        'name = "m"\ntest_image = "imgs/cat.png"\nquantize = ["int8"]\n'
        '[model]\nsource = "m.onnx"\nweights = "DEFAULT"\n'
        '[calibration]\nimages = "calib"\n'
        '[mix]\ntarget = "cos>=0.99"\nqtable = "my.qtable"\nimages = "val"\n'
    )
    monkeypatch.chdir(tmp_path)  # somewhere else
    r = load_recipe(folder / "r.toml")
    assert r.model.source == str(folder / "m.onnx") and r.model.weights == "DEFAULT"
    assert r.calibration.images == str(folder / "calib")
    assert r.test_image == str(folder / "imgs" / "cat.png")
    assert r.mix.qtable == str(folder / "my.qtable") and r.mix.images == str(folder / "val")
    built_in = recipe_from_dict({"name": "m", "model": {"source": "torchvision:resnet18"}})
    assert built_in.calibration.images == "builtin:natural"


def test_gray_input_needs_no_mean_or_std():
    """Defaults follow the input's channel count; only values the user gave are checked."""
    r = recipe_from_dict(
        {
            "name": "g",
            "model": {"source": "m.onnx"},
            "inputs": [{"name": "x", "shape": [1, 1, 64, 256]}],
            "preprocess": {"pixel_format": "gray"},
        }
    )
    assert r.preprocess.mean == (0.0,) and r.preprocess.std == (1.0,)
    with pytest.raises(ConfigError, match="preprocess.mean' has 3 values"):
        recipe_from_dict(
            {
                "name": "g",
                "model": {"source": "m.onnx"},
                "inputs": [{"name": "x", "shape": [1, 1, 64, 256]}],
                "preprocess": {"pixel_format": "gray", "mean": [0.1, 0.2, 0.3]},
            }
        )


def test_every_recipe_flag_comes_from_field_metadata_and_sets_its_field():
    """The command line's recipe flags are read from the dataclasses: each one parses its text
    into a value the recipe takes, lands on its own key, and is listed in the build guide's
    recipe table (the one list: a field with a flag cannot be left out of --help or the guide;
    the generated recipe reference lists them by construction)."""
    from duotpu.config.recipe import Recipe, flag_overrides, recipe_flags

    flags = recipe_flags()
    assert len({f.option for f in flags}) == len(flags) and len(flags) >= 30
    guide = (Path(__file__).parents[2] / "docs" / "guides" / "build.md").read_text()
    table = guide[guide.index("### The recipe") : guide.index("### Python API")]
    missing = [f.option for f in flags if f"`{f.option}" not in table]
    assert not missing, f"flags missing from the build guide's recipe table: {missing}"
    samples = {"int": "7", "float": "0.5", "ints": "1,3,32x32", "floats": "0.1,0.2", "bool": ""}
    by_key = {f.key: f for f in flags}
    assert by_key["calibration.count"].parse("7") == 7
    assert by_key["inputs.shape"].parse("1x3x48x192") == [1, 3, 48, 192]
    assert by_key["quantize"].parse("INT8, bf16") == ["int8", "bf16"]
    assert by_key["model.outputs"].parse("a/b:0,c") == ["a/b:0", "c"]
    with pytest.raises(ValueError, match="whole number"):
        by_key["calibration.count"].parse("many")
    for f in flags:
        if f.kind in samples and f.kind != "bool":
            assert f.parse(samples[f.kind]) is not None
    base = Recipe(name="m", model=Recipe().model.__class__(source="m.onnx"))
    over = flag_overrides(
        {
            "calibration.count": 7,
            "inputs.shape": [1, 3, 48, 192],
            "deploy.pixel_format": "BGR_PACKED",
            "tolerance.verify_int8": 0.5,
            "preprocess.mean": None,  # not given
        }
    )
    assert over["deploy.fuse_preprocess"] is True  # --fuse-preprocess implies it
    assert "preprocess.mean" not in over
    r = base.with_overrides(over)
    assert r.calibration.count == 7 and r.inputs[0].shape == (1, 3, 48, 192)
    assert r.deploy.fuse_preprocess and r.deploy.pixel_format == "BGR_PACKED"
    assert r.tolerance.verify_int8 == 0.5 and r.inputs[0].name == "input"


def test_tensor_inputs_are_several_or_not_nchw_and_take_no_image_options():
    two = {
        "name": "vad",
        "model": {"source": "vad.onnx"},
        "inputs": [{"name": "audio", "shape": [1, 576]}, {"name": "state", "shape": [2, 1, 128]}],
    }
    r = recipe_from_dict(two, "t")
    assert (
        r.tensor_inputs
        and not recipe_from_dict({"name": "x", "model": {"source": "m.onnx"}}, "t").tensor_inputs
    )
    one = dict(two, inputs=[{"name": "audio", "shape": [1, 576]}])
    assert recipe_from_dict(one, "t").tensor_inputs  # one input, not N,C,H,W
    for extra, what in (
        ({"preprocess": {"mean": [0.5, 0.5, 0.5]}}, "preprocessing .* applies to image inputs"),
        ({"mix": {"target": "cos>=0.99", "fast_search": True}}, "mix.fast_search"),
        ({"deploy": {"batch_sizes": [1, 4]}}, "are for image models"),
        ({"test_image": "cat.jpg"}, "test_image must be an .npz file"),
        (
            {"inputs": [{"name": "a", "shape": [1]}, {"name": "a", "shape": [2]}]},
            "each model input once",
        ),
        ({"inputs": [{"name": "a", "shape": [1, 0]}]}, "input 'a' must be positive"),
    ):
        with pytest.raises(ConfigError, match=what):
            recipe_from_dict(dict(two, **extra), "t")


def test_the_no_preprocessing_hint_says_what_the_model_gets():
    """A recipe without preprocessing feeds RGB pixels scaled to 0–1, stretched to the input's
    size: the hint a failed verification gives says so, and names nothing a recipe chose."""
    import numpy as np

    from duotpu.builder.verify import preprocessing_hint
    from duotpu.core.preprocess import preprocess_image

    base = {"name": "p", "model": {"source": "m.onnx"}}
    plain = recipe_from_dict({**base, "inputs": [{"name": "x", "shape": [1, 3, 8, 8]}]})
    white = np.full((16, 32, 3), 255, np.uint8)
    x = preprocess_image(white, plain.preprocess, (1, 3, 8, 8))
    assert x.shape == (1, 3, 8, 8) and float(x.max()) == 1.0
    assert "RGB pixels scaled to 0–1" in preprocessing_hint(plain)
    for chosen in ({"resize_mode": "letterbox"}, {"std": [0.5]}, {"pixel_format": "bgr"}):
        r = recipe_from_dict(
            {**base, "inputs": [{"name": "x", "shape": [1, 3, 8, 8]}], "preprocess": chosen}
        )
        assert preprocessing_hint(r) == "", chosen
