"""duotpu: PyTorch / ONNX models to verified, quantized cvimodels for the Milk-V Duo TPU.

The Python API mirrors the CLI::

    import duotpu
    recipe = duotpu.load_recipe("recipes/efficientnet_lite0.toml")
    result = duotpu.build(recipe)
    result.models["int8"].cvimodel, result.models["int8"].cosine
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (BoardError, ConfigError, DataError, DuoTpuError, ModelError,  # noqa: F401
                     SetupError, ToleranceError, ToolchainError)
from .recipe import (Calibration, Deploy, InputSpec, ModelSource, Preprocess,  # noqa: F401
                     Recipe, Tolerance, load_recipe, recipe_from_dict)


def build(recipe, out_dir=None, work_dir=None, events=None, **overrides):
    """Build ``recipe`` (a :class:`Recipe` or a TOML path) into verified cvimodels.

    Keyword ``overrides`` use dotted recipe keys with ``__`` for dots, e.g.
    ``build("r.toml", calibration__count=20)``. Returns a :class:`~duotpu.pipeline.BuildResult`.
    """
    from . import pipeline
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if overrides:
        recipe = recipe.with_overrides({k.replace("__", "."): v for k, v in overrides.items()},
                                       "build() arguments")
    return pipeline.build(recipe, out_dir, work_dir, events or (lambda e: None))
