"""Graph building blocks shared by the image pipelines: decode, normalize, the geometry settings.

Pure functions of DALI nodes; the pipelines that compose them are in `codecloop.dali_pipes.images`
(classification), `codecloop.dali_pipes.dense` (detection, segmentation, pose, depth) and
`codecloop.dali_pipes.video` (clips).
"""

from __future__ import annotations

from dataclasses import dataclass

from nvidia.dali import fn, types

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CODEC_PLACEMENTS = ("native", "after_resize")
# Images are decoded in their stored orientation: an EXIF orientation tag is not applied. COCO's
# annotations, Pillow, torchvision.io and pycocotools all use the stored pixel grid, and the stored
# size is what file headers (and the scan) report, so every size, box, mask and keypoint follows it.
ADJUST_ORIENTATION = False


@dataclass(frozen=True)
class ImageGeometry:
    """Crop size, eval resize, train crop scale and the normalization constants (0..1 units)."""

    crop_size: int = 224
    resize_size: int = 256
    min_scale: float = 0.08
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def on_device(node, on_gpu: bool):
    """A small per-sample output (index, codec level) moved to the GPU inside the pipeline, so that
    the hand-off to torch is a device-to-device copy, never a copy from pageable host memory (which
    waits for the GPU's queued work)."""
    return node.gpu() if on_gpu else node


def split_channels(images, start: int, stop: int, channels_last: bool):
    """Channels `start`..`stop` of normalized images (CHW, or HWC with `channels_last`)."""
    return images[:, :, start:stop] if channels_last else images[start:stop]


def decode(encoded, on_gpu: bool):
    """Decode encoded images to RGB uint8 HWC in their stored orientation, with nvJPEG ("mixed") on a GPU."""
    return fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB,
                             adjust_orientation=ADJUST_ORIENTATION)


def normalize(images, geometry: ImageGeometry, mirror=None, center_crop: bool = False, copies: int = 1,
              channels_last: bool = False):
    """To float CHW (HWC with `channels_last`), (x/255 - mean)/std, with an optional per-sample mirror
    and center crop.

    `copies` > 1 normalizes that many RGB images stacked along the channel axis.
    """
    return fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="HWC" if channels_last else "CHW",
        crop=(geometry.crop_size, geometry.crop_size) if center_crop else None,
        mean=[255.0 * value for value in geometry.mean] * copies,
        std=[255.0 * value for value in geometry.std] * copies,
        mirror=mirror if mirror is not None else 0,
    )
