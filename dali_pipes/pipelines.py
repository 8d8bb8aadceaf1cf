"""Image pipelines for training and evaluation: read -> decode -> codec -> geometry -> normalize.

The graph functions (`decode`, `train_geometry`, `eval_geometry`, `train_window`) are pure
functions of DALI nodes; `image_pipeline` is the `@pipeline_def` wrapper that attaches the
sharded reader. The reader's "label" is the sample's index into the file list: the iterator
turns it into whatever target the task holds for that sample.

Training on the CPU decodes and compresses only the part of the image the random-resized crop
keeps (`train_window`): the codec's 4:2:0 blocks are 16x16 tiles fixed to the image's origin, so
a region on that grid, one tile wider than the crop on each side, goes through the codec exactly
as it does inside the whole image (bit-identical inside; only the region's outermost pixel rows,
which the crop never reads, see other chroma neighbours). The crop window follows the law of
`fn.random_resized_crop`; the resize then differs from the whole-image path by at most one grey
level (float rounding of the resampling). It saves the decode and codec work outside the crop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nvidia.dali.math as dali_math
from nvidia.dali import fn, pipeline_def, types

from codecloop.dali_pipes.codec import graph_codec
from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.levels import LevelSpec

READER_NAME = "Reader"
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
    min_area: float = 0.08
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def sharded_reader(files: Sequence[str], shard_id: int, num_shards: int, shuffle: bool):
    """This shard's encoded files and their indices into `files` (the last batch padded, so every
    shard runs the same number of batches; the iterator drops the padding)."""
    return fn.readers.file(files=list(files), labels=list(range(len(files))), shard_id=shard_id,
                           num_shards=num_shards, pad_last_batch=True, random_shuffle=shuffle, name=READER_NAME)


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


def train_geometry(images, geometry: ImageGeometry):
    """Random-resized crop to `crop_size` (area `min_area`..1, aspect 3/4..4/3)."""
    return fn.random_resized_crop(
        images,
        size=[geometry.crop_size, geometry.crop_size],
        random_area=[geometry.min_area, 1.0],
        random_aspect_ratio=[3 / 4, 4 / 3],
        antialias=True,
    )


def train_window(encoded, geometry: ImageGeometry, tile: int = 16):
    """Per encoded image: a random-resized-crop window (`anchor`, `size`, HW pixels, the law of
    `fn.random_resized_crop`) and the region (`start`, `end`) on the codec's `tile`-pixel grid (JPEG's
    4:2:0 minimum coded unit: 16) holding it with one tile to spare on each side, clipped to the image."""
    shape = fn.peek_image_shape(encoded, adjust_orientation=ADJUST_ORIENTATION)
    anchor, size = fn.random_crop_generator(shape, random_area=[geometry.min_area, 1.0],
                                            random_aspect_ratio=[3 / 4, 4 / 3])
    start = dali_math.max(anchor // tile * tile - tile, 0)
    end = dali_math.min((anchor + size + tile - 1) // tile * tile + tile,
                        fn.cast(shape[0:2], dtype=types.INT32))
    return anchor, size, start, end


def resize_window(images, anchor, size, start, geometry: ImageGeometry):
    """Resize the window (`anchor`, `size`) of regions that begin at `start` to the crop size."""
    offset = fn.cast(anchor - start, dtype=types.FLOAT)
    return fn.resize(images, size=[geometry.crop_size, geometry.crop_size], roi_start=offset,
                     roi_end=offset + fn.cast(size, dtype=types.FLOAT), antialias=True)


def eval_geometry(images, geometry: ImageGeometry):
    """Resize the shorter side to `resize_size`; the center crop happens in `normalize`."""
    return fn.resize(images, resize_shorter=geometry.resize_size, antialias=True)


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


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def image_pipeline(
    files: Sequence[str],
    shard_id: int,
    num_shards: int,
    training: bool,
    spec: LevelSpec,
    codec: Codec,
    geometry: ImageGeometry,
    on_gpu: bool,
    codec_placement: str = "native",
    with_clean: bool = False,
    channels_last: bool = False,
):
    """Sharded classification pipeline for a codec that runs in the graph; outputs ``(image, index,
    codec_level[, clean_image])``,
    images CHW (HWC with `channels_last`), every output on the GPU when `on_gpu`.

    With `with_clean`, the clean image goes through the very same crop and flip as the
    compressed one (both are stacked along channels for the geometry), e.g. for a teacher.
    Training on the CPU with a tiled codec (`Codec.graph_tile`) at native resolution works on the crop's
    `train_window`.
    """
    encoded, index = sharded_reader(files, shard_id, num_shards, shuffle=training)
    view = train_geometry if training else eval_geometry
    windowed = codec.graph_tile is not None and not spec.is_none
    if codec_placement == "native" and training and not on_gpu and windowed:
        anchor, size, start, end = train_window(encoded, geometry, codec.graph_tile)
        images = fn.decoders.image_slice(encoded, start, end - start, axes=[0, 1], output_type=types.RGB,
                                         adjust_orientation=ADJUST_ORIENTATION)
        compressed, level = graph_codec(images, spec, codec.graph_stage)
        images = resize_window(fn.cat(compressed, images, axis=2) if with_clean else compressed, anchor, size, start,
                               geometry)
    elif codec_placement == "native":
        images = decode(encoded, on_gpu)
        compressed, level = graph_codec(images, spec, codec.graph_stage)
        images = view(fn.cat(compressed, images, axis=2) if with_clean else compressed, geometry)
    else:
        images = view(decode(encoded, on_gpu), geometry)
        compressed, level = graph_codec(images, spec, codec.graph_stage)
        images = fn.cat(compressed, images, axis=2) if with_clean else compressed
    mirror = fn.random.coin_flip() if training else None
    images = normalize(images, geometry, mirror=mirror, center_crop=not training, copies=2 if with_clean else 1,
                       channels_last=channels_last)
    index, level = on_device(fn.reshape(index, shape=[]), on_gpu), on_device(level, on_gpu)
    if with_clean:
        return (split_channels(images, 0, 3, channels_last), index, level,
                split_channels(images, 3, 6, channels_last))
    return images, index, level


@pipeline_def
def sweep_pipeline(
    files: Sequence[str],
    shard_id: int,
    num_shards: int,
    levels: Sequence[int],
    codec: Codec,
    geometry: ImageGeometry,
    on_gpu: bool,
    codec_placement: str = "native",
    channels_last: bool = False,
):
    """Evaluation at many levels of an in-graph codec in one pass: each image is read and decoded once, then
    every level's codec stage, resize, center crop and normalize run on it; outputs
    ``(index, clean view, view at levels[0], ...)``."""
    encoded, index = sharded_reader(files, shard_id, num_shards, shuffle=False)
    images = decode(encoded, on_gpu)
    if codec_placement == "native":
        views = [eval_geometry(images, geometry)]
        views += [eval_geometry(codec.graph_stage(images, level), geometry) for level in levels]
    else:
        resized = eval_geometry(images, geometry)
        views = [resized] + [codec.graph_stage(resized, level) for level in levels]
    return (on_device(fn.reshape(index, shape=[]), on_gpu),
            *[normalize(view, geometry, center_crop=True, channels_last=channels_last) for view in views])
