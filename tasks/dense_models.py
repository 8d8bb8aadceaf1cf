"""Model factories for the dense tasks: detection, segmentation, pose and depth.

Torchvision models are built by name with ``weights=None`` (local weights only, never a download).
Any timm encoder drives the model families of our own, in two kinds, so that the study's
"encoder-decoder networks resist compression best" can be tested on one encoder:

| kind | segmentation, depth | pose | detection |
| --- | --- | --- | --- |
| encoder-decoder | `UNet` ``unet_<enc>`` | `SimpleBaseline` ``simplebaseline_<enc>`` | FPN ``fasterrcnn_<enc>`` |
| no decoder | `PlainHead` ``plain_<enc>`` | `PlainHead` ``plain_<enc>`` | stride 16 ``fasterrcnn_c4_<enc>`` |

A ``pretrained_encoder`` file is loaded into the encoder / backbone with `load_encoder_weights`,
which also accepts a whole classifier checkpoint (its head is dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import detection, segmentation
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from codecloop.tasks.weights import read_state_dict, load_pretrained, load_state_dict_by_order

DETECTION_MODELS = (
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
)
SEGMENTATION_MODELS = ("deeplabv3_resnet50", "fcn_resnet50", "lraspp_mobilenet_v3_large")
POSE_MODELS = ("keypointrcnn_resnet50_fpn",)
DEPTH_MODELS: tuple[str, ...] = ()
UNET_PREFIX = "unet_"
SIMPLEBASELINE_PREFIX = "simplebaseline_"
PLAIN_PREFIX = "plain_"
FPN_PREFIX = "fasterrcnn_"
SINGLE_SCALE_PREFIX = "fasterrcnn_c4_"
MAX_LOG_DEPTH = 15.0
POSE_HEATMAP_STRIDE = 4
_COUNTER = "num_batches_tracked"

# task -> (torchvision names, timm-encoder prefixes; a longer prefix before the one it extends)
_FAMILIES = {
    "detection": (DETECTION_MODELS, (SINGLE_SCALE_PREFIX, FPN_PREFIX)),
    "segmentation": (SEGMENTATION_MODELS, (UNET_PREFIX, PLAIN_PREFIX)),
    "pose": (POSE_MODELS, (SIMPLEBASELINE_PREFIX, PLAIN_PREFIX)),
    "depth": (DEPTH_MODELS, (UNET_PREFIX, PLAIN_PREFIX)),
}


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> str:
    """Load a local weights file into an encoder / backbone; returns how it loaded.

    Tries `load_pretrained` (a checkpoint of this very encoder), then a classifier checkpoint of
    the same architecture: by key when every encoder key is in it, else by tensor order against
    its leading tensors (key names differ, e.g. a ported checkpoint or a whole saved model).
    """
    try:
        return load_pretrained(encoder, path)
    except ValueError as error:
        first_error = error
    source = read_state_dict(Path(path))
    target = encoder.state_dict()
    if all(key in source and source[key].shape == value.shape for key, value in target.items()):
        encoder.load_state_dict({key: source[key] for key in target}, strict=True)
        return f"exact keys, {len(target)} of {len(source)} entries from {Path(path).name} (rest dropped)"
    wanted = sum(not key.endswith(_COUNTER) for key in target)
    prefix: dict[str, torch.Tensor] = {}
    taken = 0
    for key, value in source.items():
        is_counter = key.endswith(_COUNTER)
        if not is_counter and taken == wanted:
            break
        prefix[key] = value
        taken += not is_counter
    try:
        load_state_dict_by_order(encoder, prefix)
    except ValueError as error:
        raise ValueError(f"{path}: not weights for this encoder ({first_error}; leading tensors: {error})") from error
    return f"by tensor order, leading {wanted} tensors of {len(source)} entries from {Path(path).name}"


def create_encoder(name: str, out_indices: Sequence[int] | None = None, output_stride: int | None = None) -> nn.Module:
    """A timm backbone returning a list of feature maps (``features_only``), random weights;
    `output_stride` 8 or 16 dilates its last stages instead of striding them."""
    if not timm.is_model(name):
        raise ValueError(f"unknown timm encoder {name!r} (timm.list_models() lists the valid names)")
    options: dict[str, object] = {} if out_indices is None else {"out_indices": tuple(out_indices)}
    if output_stride is not None:
        options["output_stride"] = output_stride
    try:
        return timm.create_model(name, features_only=True, pretrained=False, **options)
    except RuntimeError as error:
        raise ValueError(f"timm encoder {name!r} cannot return feature maps: {error}") from error


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


class UNet(nn.Module):
    """U-Net decoder on any timm encoder; forward(x) -> (B, out_channels, H, W) for any H, W.

    From the deepest feature up, each block upsamples (bilinear) to the next skip's exact size, so
    inputs need not be multiples of the encoder stride, concatenates, and applies two 3x3
    conv-BN-ReLU. `decoder_channels` gives each block's width, deepest first; entries beyond the
    encoder's skip count are unused. The 1x1 head runs before the final upsample to the input size:
    both are linear, so the order does not change the result, only the cost.
    """

    def __init__(self, encoder: str, out_channels: int, decoder_channels: Sequence[int] = (256, 128, 64, 32),
                 pretrained_encoder: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder)
        if pretrained_encoder:
            load_encoder_weights(self.encoder, pretrained_encoder)
        channels = self.encoder.feature_info.channels()
        skips = channels[-2::-1]
        if not skips or len(decoder_channels) < len(skips):
            raise ValueError(f"UNet on {encoder!r} needs {len(skips)} decoder widths (one per skip feature, "
                             f"at least one), got {len(decoder_channels)}")
        blocks, previous = [], channels[-1]
        for skip, width in zip(skips, decoder_channels):
            blocks.append(nn.Sequential(*_conv_bn_relu(previous + skip, width), *_conv_bn_relu(width, width)))
            previous = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(previous, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(self.decoder, features[-2::-1]):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return F.interpolate(self.head(y), size=x.shape[-2:], mode="bilinear", align_corners=False)


class PlainHead(nn.Module):
    """No decoder (FCN / DeepLab style): the timm encoder with its last stages dilated to stride
    `encoder_stride`, its deepest feature, one 3x3 conv-BN-ReLU, then a sub-pixel head (a 1x1 conv
    to ``out_channels * r * r`` and a pixel shuffle by r = encoder stride / `output_stride`, Shi et
    al. 2016): each deepest-level cell paints its own r x r patch of the output. No skip connection,
    no decoder stage: the counterpart of `UNet` / `SimpleBaseline` on the same encoder.
    forward(x) -> (B, out_channels, ceil(H / output_stride), ceil(W / output_stride)).
    """

    def __init__(self, encoder: str, out_channels: int, width: int = 256, output_stride: int = 1,
                 encoder_stride: int = 8, head_std: float | None = None,
                 pretrained_encoder: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, out_indices=(-1,), output_stride=encoder_stride)
        if pretrained_encoder:
            load_encoder_weights(self.encoder, pretrained_encoder)
        self.upscale = max(1, self.encoder.feature_info.reduction()[-1] // output_stride)
        self.neck = nn.Sequential(*_conv_bn_relu(self.encoder.feature_info.channels()[-1], width))
        self.head = nn.Sequential(nn.Conv2d(width, out_channels * self.upscale**2, 1), nn.PixelShuffle(self.upscale))
        self.output_stride = output_stride
        if head_std is not None:  # heatmaps: start near zero, as SimpleBaseline's head does
            nn.init.normal_(self.head[0].weight, std=head_std)
            nn.init.zeros_(self.head[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [-(-side // self.output_stride) for side in x.shape[-2:]]
        out = self.head(self.neck(self.encoder(x)[-1]))
        if out.shape[-2] < size[0] or out.shape[-1] < size[1]:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out[..., :size[0], :size[1]]


class LogDepth(nn.Module):
    """Wraps a one-channel network predicting log depth; forward(x) -> (B, H, W) depth = exp(log
    depth), always > 0.

    exp rather than softplus: the scale-invariant log loss takes log(depth), which is then the raw
    output itself, so its gradient neither saturates nor explodes near zero depth. The log is
    clamped to +-MAX_LOG_DEPTH and exponentiated in float32 so fp16 autocast cannot overflow.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_depth = self.network(x)[:, 0].float()
        return log_depth.clamp(-MAX_LOG_DEPTH, MAX_LOG_DEPTH).exp()


class SimpleBaseline(nn.Module):
    """SimpleBaseline pose network (Xiao et al. 2018): deepest timm feature, deconvolutions, heatmaps.

    forward(x) -> (B, num_keypoints, H', W') with H' about H / `heatmap_stride`; `heatmap_stride` is
    the encoder's stride over 2**deconv_layers (4.0 for a stride-32 encoder and 3 layers).
    """

    def __init__(self, encoder: str, num_keypoints: int, deconv_channels: int = 256, deconv_layers: int = 3,
                 pretrained_encoder: str | Path | None = None) -> None:
        super().__init__()
        self.encoder = create_encoder(encoder, out_indices=(-1,))
        if pretrained_encoder:
            load_encoder_weights(self.encoder, pretrained_encoder)
        layers, previous = [], self.encoder.feature_info.channels()[-1]
        for _ in range(deconv_layers):
            layers += [nn.ConvTranspose2d(previous, deconv_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(deconv_channels), nn.ReLU(inplace=True)]
            previous = deconv_channels
        self.deconv = nn.Sequential(*layers)
        self.head = nn.Conv2d(previous, num_keypoints, 1)
        self.heatmap_stride = self.encoder.feature_info.reduction()[-1] / 2**deconv_layers
        for module in [*self.deconv.modules(), self.head]:
            if isinstance(module, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.deconv(self.encoder(x)[-1]))


class MainOutput(nn.Module):
    """Wraps a torchvision segmentation model so forward(x) returns its ``"out"`` logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def model_names(task: str) -> str:
    """Human-readable list of the valid model names of `task`, for --help and error messages."""
    if task not in _FAMILIES:
        raise ValueError(f"unknown task {task!r}; dense tasks are {', '.join(_FAMILIES)}")
    names, prefixes = _FAMILIES[task]
    return ", ".join([*names, *(f"{prefix}<timm encoder> (e.g. {prefix}resnet18)" for prefix in prefixes)])


def check_model_name(task: str, name: str) -> tuple[str, str] | None:
    """``(prefix, timm encoder)`` of a ``<prefix><encoder>`` name; None for a torchvision name; else a
    ValueError naming the bad value and listing the valid names."""
    names, prefixes = _FAMILIES[task]
    if name in names:
        return None
    prefix = next((prefix for prefix in prefixes if name.startswith(prefix)), None)
    if prefix is None:
        raise ValueError(f"unknown {task} model {name!r}; valid: {model_names(task)}")
    encoder = name.removeprefix(prefix)
    if not timm.is_model(encoder):
        raise ValueError(f"unknown {task} model {name!r}: {encoder!r} is not a timm model; valid: "
                         f"{model_names(task)}")
    return prefix, encoder


class FeaturePyramid(nn.Module):
    """A detector backbone from any timm encoder: its last three stages through torchvision's FPN,
    plus a max-pooled level (strides 8 to 64 for most encoders)."""

    def __init__(self, encoder: str, out_channels: int = 128, pretrained_encoder: str | Path | None = None) -> None:
        super().__init__()
        stages = len(create_encoder(encoder).feature_info)
        self.body = create_encoder(encoder, out_indices=range(stages - 3, stages))
        if pretrained_encoder:
            load_encoder_weights(self.body, pretrained_encoder)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), out_channels,
                                         extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.fpn({str(level): feature for level, feature in enumerate(self.body(x))})


class SingleScale(nn.Module):
    """A detector backbone without a decoder: the timm encoder's stride-16 stage (Faster R-CNN's
    original "C4" feature) through a 1x1 projection to `out_channels`; no top-down pathway."""

    def __init__(self, encoder: str, out_channels: int = 128, pretrained_encoder: str | Path | None = None) -> None:
        super().__init__()
        strides = create_encoder(encoder).feature_info.reduction()
        if 16 not in strides:
            raise ValueError(f"timm encoder {encoder!r} has no stride-16 stage (strides {strides})")
        self.body = create_encoder(encoder, out_indices=(strides.index(16),))
        if pretrained_encoder:
            load_encoder_weights(self.body, pretrained_encoder)
        self.projection = nn.Conv2d(self.body.feature_info.channels()[-1], out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"0": self.projection(self.body(x)[-1])}


def timm_faster_rcnn(encoder: str, num_classes: int, image_size: int, pretrained_encoder: str | Path | None = None,
                     pyramid: bool = True) -> nn.Module:
    """Faster R-CNN on a timm encoder, anchors of 16 to 128 pixels, inputs normalized with the
    encoder's own mean and std (as its pretrained weights expect): on a `FeaturePyramid` (one anchor
    size per level) or, with ``pyramid=False``, on the `SingleScale` stride-16 map (all four sizes
    there, RoIs pooled from it)."""
    config = timm.create_model(encoder, pretrained=False).pretrained_cfg
    options: dict[str, object] = {}
    if pyramid:
        backbone: nn.Module = FeaturePyramid(encoder, pretrained_encoder=pretrained_encoder)
        anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    else:
        backbone = SingleScale(encoder, pretrained_encoder=pretrained_encoder)
        anchors = AnchorGenerator(sizes=((16, 32, 64, 128),), aspect_ratios=((0.5, 1.0, 2.0),))
        options["box_roi_pool"] = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    return detection.FasterRCNN(backbone, num_classes=num_classes, min_size=image_size, max_size=image_size,
                                rpn_anchor_generator=anchors,
                                image_mean=list(config.get("mean", (0.485, 0.456, 0.406))),
                                image_std=list(config.get("std", (0.229, 0.224, 0.225))), **options)


def _build(factory: Callable[..., nn.Module], **options: object) -> nn.Module:
    return factory(weights=None, weights_backbone=None, **options)


def create_detection_model(name: str, num_classes: int, image_size: int,
                           pretrained_encoder: str | Path | None = None) -> nn.Module:
    """A torchvision detector, random weights, or ``fasterrcnn_[c4_]<timm encoder>``
    (`timm_faster_rcnn`, with `pretrained_encoder` weights); `num_classes` counts the background class.

    RCNN / RetinaNet / FCOS resize inputs to `image_size` (min and max side) instead of their
    800 px default; ssdlite320 always works at its own 320 px.
    """
    family = check_model_name("detection", name)
    if family is not None:
        prefix, encoder = family
        return timm_faster_rcnn(encoder, num_classes, image_size, pretrained_encoder,
                                pyramid=prefix != SINGLE_SCALE_PREFIX)
    options: dict[str, object] = {"num_classes": num_classes}
    if name != "ssdlite320_mobilenet_v3_large":
        options |= {"min_size": image_size, "max_size": image_size}
    return _build(getattr(detection, name), **options)


def create_segmentation_model(name: str, num_classes: int, pretrained_encoder: str | Path | None = None) -> nn.Module:
    """A segmentation network whose forward(x) returns (B, num_classes, H, W) logits."""
    family = check_model_name("segmentation", name)
    if family is not None:
        model_class = UNet if family[0] == UNET_PREFIX else PlainHead
        return model_class(family[1], num_classes, pretrained_encoder=pretrained_encoder)
    options = {} if name.startswith("lraspp") else {"aux_loss": False}
    model = _build(getattr(segmentation, name), num_classes=num_classes, **options)
    if pretrained_encoder:
        load_encoder_weights(model.backbone, pretrained_encoder)
    return MainOutput(model)


def create_pose_model(name: str, num_keypoints: int, image_size: int,
                      pretrained_encoder: str | Path | None = None) -> nn.Module:
    """Keypoint R-CNN (person class + background, resized to `image_size`), or top-down heatmaps at
    stride 4 from a SimpleBaseline or a `PlainHead`."""
    family = check_model_name("pose", name)
    if family is not None:
        prefix, encoder = family
        if prefix == SIMPLEBASELINE_PREFIX:
            return SimpleBaseline(encoder, num_keypoints, pretrained_encoder=pretrained_encoder)
        return PlainHead(encoder, num_keypoints, output_stride=POSE_HEATMAP_STRIDE, head_std=0.001,
                         pretrained_encoder=pretrained_encoder)
    model = _build(getattr(detection, name), num_classes=2, num_keypoints=num_keypoints,
                   min_size=image_size, max_size=image_size)
    if pretrained_encoder:
        load_encoder_weights(model.backbone.body, pretrained_encoder)
    return model


def create_depth_model(name: str, pretrained_encoder: str | Path | None = None) -> nn.Module:
    """A `UNet` or `PlainHead` predicting log depth: forward(x) -> (B, H, W) positive depth (`LogDepth`)."""
    prefix, encoder = check_model_name("depth", name)
    model_class = UNet if prefix == UNET_PREFIX else PlainHead
    return LogDepth(model_class(encoder, 1, pretrained_encoder=pretrained_encoder))
