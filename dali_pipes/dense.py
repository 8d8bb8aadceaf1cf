"""Pipelines for dense and structured targets: codec on the whole image, then one view all targets follow.

Detection, segmentation, pose and depth share this graph. Per sample, the sample plan draws the
codec level, a crop box inside the sample's region (the whole image, or a
person box for top-down pose) and a flip, so a resumed run repeats them. DALI then

- reads the image file (`fn.io.file.read` of the path the feeder hands over), decodes it (nvJPEG on
  a GPU) and applies an in-graph codec (JPEG) at native resolution (a host codec, e.g. H.264,
  round-trips the image on CPU threads first, as for classification);
- reads and decodes the raster targets a task hands over as files (`RasterFiles`): 8-bit grey PNGs
  (masks) through a per-sample row of a lookup table (`fn.lookup_table`), 16-bit PNGs (depth) divided
  by a scale. DALI expands palette PNGs to RGB, so their indices (and ``.npy`` arrays) stay with the
  task's Python `load_targets`;
- resizes the crop box to the output size (images with antialiasing, raster targets such as
  masks and depth maps by nearest neighbour) and flips images and rasters alike;
- moves point targets (box corners, keypoints; pixel coordinates) by the same crop, scale and
  flip with `fn.coord_transform`, and pads them to the batch's longest list.

Output pixel ``j`` covers input ``x0 + (j + 0.5) * (x1 - x0) / width``: a point at input ``x``
lands at ``(x - x0) * width / (x1 - x0)`` (mirrored: ``width`` minus that), the same convention.
Reordering flipped box corners, clipping and flipping keypoint identities belong to the task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from PIL import Image

from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.feeder import Batches, ShardedFeeder, nchw, path_bytes
from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelSpec
from codecloop.dali_pipes.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageGeometry, decode, normalize, on_device
from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.sample_plan import CHOICE, CLEAN, FLIP, crop_boxes

Box = tuple[float, float, float, float]
TargetLoader = Callable[[int], Mapping[str, np.ndarray]]
LOOKUP_SIZE = 256  # values of an 8-bit raster


@dataclass(frozen=True)
class RasterFiles:
    """One raster target DALI reads and decodes in the graph, a PNG file per sample (indexed like the
    samples): 8-bit grey values mapped through row ``rows[i]`` of `lookup` (``(T, 256)`` uint8) when it
    is given, else 16-bit grey values divided by `scale` (float32). Decoded as stored: no EXIF rotation,
    as Pillow reads them."""

    paths: Sequence[str]
    lookup: np.ndarray | None = None
    rows: Sequence[int] | None = None
    scale: float = 1.0

    def row_offset(self, index: int) -> np.uint16:
        """Where sample `index`'s row starts in the flattened lookup table."""
        return np.uint16(LOOKUP_SIZE * (self.rows[index] if self.rows is not None else 0))


@dataclass(frozen=True)
class DenseGeometry:
    """Output size, the train crop's smallest area (fraction of the region), flips, normalization."""

    height: int = 256
    width: int = 256
    min_scale: float = 0.35
    flip: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def normalization(self) -> ImageGeometry:
        """The mean/std holder `normalize` takes."""
        return ImageGeometry(mean=self.mean, std=self.std)


@dataclass(frozen=True)
class DenseLayout:
    """Which targets a task's samples carry.

    `rasters`: HxW arrays the size of the image (masks, depth), resized by nearest neighbour.
    `points`: a ``(P, 2)`` float array of pixel coordinates under ``points``.
    `extras`: per-sample arrays passed through untouched, padded along their first axis.
    """

    rasters: tuple[str, ...] = ()
    points: bool = False
    extras: tuple[str, ...] = ()


@dataclass(frozen=True)
class DenseSample:
    """An image file, the region (x0, y0, x1, y1 pixels) its view is taken from (None: whole image) and
    its stored (width, height) where the index knows it (None: read from the header once)."""

    path: str
    region: Box | None = None
    size: tuple[int, int] | None = None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header."""
    with Image.open(path) as image:
        return image.size


def crop_box(region: Box, width: int, height: int, geometry: DenseGeometry, draws: np.ndarray | None) -> Box:
    """The region clamped to the image (the whole image if nothing of it is left); in training (`draws`
    given) a random sub-box of it by the sample plan's one crop law (area `min_scale`..1)."""
    x0, y0 = max(0.0, region[0]), max(0.0, region[1])
    x1, y1 = min(float(width), region[2]), min(float(height), region[3])
    if x1 - x0 < 1 or y1 - y0 < 1:
        x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    if draws is None:
        return x0, y0, x1, y1
    return tuple(float(value) for value in crop_boxes(draws[None], np.array([[x0, y0, x1, y1]]), geometry.min_scale)[0])


def point_matrix(box: Box, geometry: DenseGeometry, mirror: bool) -> np.ndarray:
    """The 2x3 ``[M T]`` taking input pixel coordinates to the output view of `box` (mirrored or not)."""
    x0, y0, x1, y1 = box
    scale_x, scale_y = geometry.width / (x1 - x0), geometry.height / (y1 - y0)
    if mirror:
        return np.array([[-scale_x, 0, geometry.width + x0 * scale_x], [0, scale_y, -y0 * scale_y]], np.float32)
    return np.array([[scale_x, 0, -x0 * scale_x], [0, scale_y, -y0 * scale_y]], np.float32)


class DenseFeeder(ShardedFeeder):
    """This rank's images and targets with a drawn codec level, crop box and flip per sample."""

    def __init__(self, samples: Sequence[DenseSample], layout: DenseLayout, load_targets: TargetLoader,
                 spec: LevelSpec, codec: Codec, geometry: DenseGeometry,
                 raster_files: Mapping[str, RasterFiles] | None = None, **sharding) -> None:
        super().__init__(len(samples), **sharding)
        if not codec.on_images:
            raise ValueError(f"codec {codec.name!r} cannot compress single images ({', '.join(codec.runs)})")
        self.samples, self.layout, self.load_targets = list(samples), layout, load_targets
        self.spec, self.codec, self.geometry = spec, codec, geometry
        self.in_graph = codec.graph_stage is not None
        self.raster_files = dict(raster_files or {})
        unknown = set(self.raster_files) - set(layout.rasters)
        if unknown:
            raise ValueError(f"raster_files names {', '.join(sorted(unknown))}, not a raster of the layout")
        self.python_rasters = tuple(name for name in layout.rasters if name not in self.raster_files)
        self._sizes: dict[int, tuple[int, int]] = {}  # header sizes, read once per sample, not per epoch

    def sample_path(self, index: int) -> str:
        return self.samples[index].path

    def outputs(self) -> tuple[str, ...]:
        points = ("points", "num_points") if self.layout.points else ()
        files = [f"{name}_{part}" for name, raster in self.raster_files.items()
                 for part in (("path", "offset") if raster.lookup is not None else ("path",))]
        return ("path" if self.in_graph else "image", "roi_start", "roi_end", "mirror", "points_mt", "level",
                *self.python_rasters, *files, *points, *self.layout.extras, "index", "valid")

    def _image(self, index: int, level: int) -> tuple[np.ndarray, int, int]:
        """The file's name (read and decoded by DALI, for an in-graph codec) or the host codec's round-tripped
        pixels, and the size."""
        path = self.samples[index].path
        if self.in_graph:
            if index not in self._sizes:
                self._sizes[index] = self.samples[index].size or image_size(path)
            return path_bytes(path), *self._sizes[index]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        if level != CLEAN_LEVEL:
            pixels = self.codec.roundtrip(pixels, level)
        return pixels, pixels.shape[1], pixels.shape[0]

    def load(self, index: int, draws: np.ndarray) -> dict[str, np.ndarray]:
        sample = self.samples[index]
        level = self.spec.pick(draws[CLEAN], draws[CHOICE])
        image, width, height = self._image(index, level)
        python = self.python_rasters or self.layout.points or self.layout.extras
        targets = self.load_targets(index) if python else {}
        out: dict[str, np.ndarray] = {"path" if self.in_graph else "image": image, "level": np.int32(level)}
        for name, files in self.raster_files.items():
            out[f"{name}_path"] = path_bytes(files.paths[index])
            if files.lookup is not None:
                out[f"{name}_offset"] = files.row_offset(index)
        for name in self.python_rasters:
            raster = np.asarray(targets[name])
            if raster.shape[:2] != (height, width):
                raise ValueError(f"{name} of {sample.path} is {raster.shape[1]}x{raster.shape[0]}, the image "
                                 f"{width}x{height}")
            out[name] = np.ascontiguousarray(raster.reshape(height, width, 1))
        region = sample.region or (0.0, 0.0, float(width), float(height))
        box = crop_box(region, width, height, self.geometry, draws if self.training else None)
        mirror = self.training and self.geometry.flip and draws[FLIP] < 0.5
        out["roi_start"] = np.array([box[1], box[0]], np.float32)
        out["roi_end"] = np.array([box[3], box[2]], np.float32)
        out["mirror"] = np.int32(mirror)
        out["points_mt"] = point_matrix(box, self.geometry, mirror)
        if self.layout.points:
            points = np.asarray(targets["points"], np.float32).reshape(-1, 2)
            out["points"], out["num_points"] = points, np.int32(len(points))
        for name in self.layout.extras:
            out[name] = np.asarray(targets[name])
        return out


def view(images, roi_start, roi_end, geometry: DenseGeometry, nearest: bool = False):
    """The crop box (`roi_start`, `roi_end`: y, x pixels) resized to the output size."""
    if nearest:
        return fn.resize(images, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                         size=[geometry.height, geometry.width], interp_type=types.INTERP_NN, antialias=False)
    return fn.resize(images, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                     size=[geometry.height, geometry.width], antialias=True)


def decode_raster(nodes: Mapping, name: str, files: RasterFiles, on_gpu: bool):
    """Raster `name` read from its file and decoded on the CPU (PNG has no GPU decoder), moved to the GPU,
    then mapped by its lookup table row (8-bit) or divided by its scale (16-bit)."""
    encoded = fn.io.file.read(nodes[f"{name}_path"])
    dtype = types.UINT8 if files.lookup is not None else types.UINT16
    raster = fn.decoders.image(encoded, device="cpu", output_type=types.ANY_DATA, dtype=dtype, adjust_orientation=False)
    raster = raster.gpu() if on_gpu else raster
    if files.lookup is None:
        return fn.cast(raster, dtype=types.FLOAT) / np.float32(files.scale)
    offset = nodes[f"{name}_offset"].gpu() if on_gpu else nodes[f"{name}_offset"]
    values = np.asarray(files.lookup, np.uint8).reshape(-1)
    return fn.lookup_table(fn.cast(raster, dtype=types.UINT16) + offset, keys=list(range(len(values))),
                           values=values.tolist(), dtype=types.UINT8, default_value=0)


def move_points(points, matrix):
    """Pixel coordinates through the view's ``[M T]``, padded to the batch's longest list."""
    return fn.pad(fn.coord_transform(points, MT=matrix), axes=(0,), fill_value=0.0)


@pipeline_def(enable_conditionals=True)
def dense_pipeline(feeder: DenseFeeder, on_gpu: bool, channels_last: bool = False):
    """Outputs ``(image, index, level, valid, points_mt, mirror, *rasters[, points, num_points], *extras)``.

    On a GPU, images, rasters, ``index`` and ``level`` are produced on the device; the point
    targets, their counts, flips and extras stay in host memory, where the task builds its
    per-image targets without waiting for the GPU. Images are CHW (HWC with `channels_last`).
    """
    names = feeder.outputs()
    layouts = ["HWC" if name in ("image", *feeder.python_rasters) else "" for name in names]
    nodes = dict(zip(names, fn.external_source(source=feeder, num_outputs=len(names), batch=True, batch_info=True,
                                               layout=layouts)))
    geometry = feeder.geometry
    if feeder.in_graph:
        images = decode(fn.io.file.read(nodes["path"]), on_gpu)
        if nodes["level"] != CLEAN_LEVEL:
            images = feeder.codec.graph_stage(images, nodes["level"])
    else:
        images = nodes["image"].gpu() if on_gpu else nodes["image"]
    roi = nodes["roi_start"], nodes["roi_end"]
    images = normalize(view(images, *roi, geometry), geometry.normalization(), mirror=nodes["mirror"],
                       channels_last=channels_last)
    rasters = []
    for name in feeder.layout.rasters:
        if name in feeder.raster_files:
            raster = decode_raster(nodes, name, feeder.raster_files[name], on_gpu)
        else:
            raster = nodes[name].gpu() if on_gpu else nodes[name]
        rasters.append(fn.flip(view(raster, *roi, geometry, nearest=True), horizontal=nodes["mirror"]))
    points = (move_points(nodes["points"], nodes["points_mt"]), nodes["num_points"]) if feeder.layout.points else ()
    extras = [fn.pad(nodes[name], axes=(0,), fill_value=0) for name in feeder.layout.extras]
    return (images, on_device(nodes["index"], on_gpu), on_device(nodes["level"], on_gpu), nodes["valid"],
            nodes["points_mt"], nodes["mirror"], *rasters, *points, *extras)


class DenseBatches(Batches):
    """Epochs of ``{image, index, codec_level, points_mt, mirror, *rasters, [points,
    num_points], *extras, **targets}`` batches; rasters are ``(B, H, W)``, points ``(B, P, 2)``.

    ``points``, ``num_points``, ``points_mt``, ``mirror`` and the extras are host tensors even on a
    GPU (see `dense_pipeline`); the rest is on the device.
    """

    def __init__(
        self,
        samples: Sequence[DenseSample],
        *,
        layout: DenseLayout,
        load_targets: TargetLoader,
        runtime: PipelineRuntime,
        training: bool,
        spec: LevelSpec,
        codec: Codec,
        geometry: DenseGeometry = DenseGeometry(),
        targets: Mapping[str, torch.Tensor] | None = None,
        checkpoint: bytes | str | None = None,
        raster_files: Mapping[str, RasterFiles] | None = None) -> None:
        feeder = DenseFeeder(samples, layout, load_targets, spec, codec, geometry, raster_files,
                             **runtime.feeder_options(training, checkpoint))
        pipe = dense_pipeline(feeder=feeder, on_gpu=runtime.device_id is not None, channels_last=runtime.channels_last,
                              **runtime.pipeline_options())
        names = ["image", "index", "codec_level", "valid", "points_mt", "mirror", *layout.rasters]
        names += ["points", "num_points"] if layout.points else []
        super().__init__(pipe, feeder, names + list(layout.extras), targets, runtime.channels_last)
        self.layout = layout

    def reshape(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images (B, C, H, W); rasters lose their channel axis, ``(B, H, W)``; extras keep their sample
        axis, ``(B, N, ...)``."""
        batch["image"] = nchw(batch["image"], self.channels_last)
        for name in self.layout.rasters:
            batch[name] = batch[name][..., 0]
        if self.layout.points:
            batch["points"] = batch["points"].reshape(len(batch["index"]), -1, 2)
        for name in self.layout.extras:
            if batch[name].ndim == 1:
                batch[name] = batch[name][:, None]
        return batch
