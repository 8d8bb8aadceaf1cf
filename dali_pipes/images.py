"""Image pipelines fed by the sample plan: a codec level, crop box and flip drawn per image, for every codec.

The feeder hands DALI, per image, what the plan drew; how the image gets there depends on how the
codec runs (`codecloop.dali_pipes.codecs`):

- in the graph (JPEG): the file's path; DALI reads it (``fn.io.file.read``), decodes it (nvJPEG on a
  GPU) and runs the codec stage at native resolution. Training on the CPU decodes and compresses only
  a window around the crop box, on the codec's tile grid (`tile_window`): inside it the codec is
  bit-identical to the whole image's, and the work outside the crop is saved;
- on the host (H.264): the image decoded and round-tripped through the codec's `roundtrip` on the
  feeder's CPU threads (there is no GPU encoder);
- from a ladder: a ``(clip, frame)`` of a `codecloop transcode` ladder, that frame of the drawn rung
  (a codec of the list and a CRF on its scale, `RungDraw`): on a GPU the rung file's path, read by
  DALI (``fn.io.file.read``) and decoded by NVDEC; on a CPU decoded by PyAV.

Then, for all: the crop box resized to the crop size (train) or the shorter side resized and a center
crop (eval), flip, normalize. Crop boxes, flips and levels come from the plan, so a resumed run repeats
them and runs of two codecs with one seed see the same crops and flips. With ``with_clean`` the clean
image goes through the very same crop and flip (a teacher's view). A one-pass sweep (`levels`) decodes
each image once and returns its view at every level of an in-graph codec.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from PIL import Image

from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.dense import image_size
from codecloop.dali_pipes.feeder import Batches, ShardedFeeder, nchw, path_bytes
from codecloop.dali_pipes.ladder import Ladder
from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelSpec
from codecloop.dali_pipes.pipelines import (ADJUST_ORIENTATION, CODEC_PLACEMENTS, ImageGeometry, decode, normalize,
                                            on_device, split_channels)
from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.sample_plan import CHOICE, CLEAN, FLIP, crop_boxes
from codecloop.dali_pipes.video import RungDraw, codec_list, decode_frames, require_nvdec

LadderFrame = tuple[str, int]
Box = tuple[float, float, float, float]


def tile_window(boxes: np.ndarray, sizes: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `boxes` (x0, y0, x1, y1) in an image of `sizes` (width, height): the region ``(start, shape)``
    (y, x pixels, int32) on a `tile`-pixel grid fixed to the image's origin that holds the box with one tile to
    spare on each side, clipped to the image: a codec working on tiles compresses it exactly as it does inside
    the whole image (JPEG 4:2:0: 16x16)."""
    low, high = boxes[:, [1, 0]], boxes[:, [3, 2]]
    start = np.maximum(np.floor(low / tile) * tile - tile, 0)
    end = np.minimum(np.ceil(high / tile) * tile + tile, np.asarray(sizes, np.float64)[:, ::-1])
    return np.ascontiguousarray(start, np.int32), np.ascontiguousarray(end - start, np.int32)


class ImageFeeder(ShardedFeeder):
    """This rank's images with the plan's level, crop box and flip; see the module docstring for what it
    hands DALI per codec. Outputs (by mode): ``path`` / ``window_start``, ``window_shape`` (in-graph codec),
    ``data``, ``clean`` (host codec, ladder on the CPU), ``rung_path``, ``frame_indices``, ``clean_rung_path``
    (ladder on a GPU: the rung files DALI reads), then ``roi_start``, ``roi_end`` (train; y, x pixels of the
    decoded image or window), ``mirror``, ``level``, ``codec_index``, ``index``, ``valid``. On a ladder `codec`
    may be a list of ladder codecs, one drawn per image (`RungDraw`); elsewhere it is one codec."""

    def __init__(self, samples: Sequence[str | LadderFrame], spec: LevelSpec, codec: Codec | Sequence[Codec],
                 min_scale: float, *,
                 ladder: Ladder | None = None, on_gpu: bool = False, with_clean: bool = False,
                 codec_placement: str = "native", levels: Sequence[int] = (),
                 sizes: Mapping[str, tuple[int, int]] | None = None, **sharding) -> None:
        super().__init__(len(samples), **sharding)
        if codec_placement not in CODEC_PLACEMENTS:
            raise ValueError(f"codec_placement {codec_placement!r} must be one of {CODEC_PLACEMENTS}")
        codecs = codec_list(codec)
        if ladder is None and len(codecs) > 1:
            raise ValueError(f"codecs {', '.join(c.name for c in codecs)}: only ladder frames draw a codec from a "
                             "list; single images take one codec")
        codec = codecs[0]
        if ladder is None and not codec.on_images:
            raise ValueError(f"codec {codec.name!r} cannot compress single images (it runs: {', '.join(codec.runs)})")
        self.mode = "ladder" if ladder is not None else "graph" if codec.graph_stage is not None else "host"
        if levels and self.mode != "graph":
            raise ValueError(f"a one-pass sweep needs a codec that runs in the graph; {codec.name!r} does not")
        self.samples, self.spec, self.codec, self.min_scale, self.ladder = list(samples), spec, codec, min_scale, ladder
        self.on_gpu, self.with_clean, self.codec_placement, self.levels = on_gpu, with_clean, codec_placement, levels
        self.decode_on_gpu = self.mode == "ladder" and on_gpu
        self.windowed = (self.mode == "graph" and self.training and not on_gpu and codec_placement == "native"
                         and codec.graph_tile is not None and not spec.is_none)
        self.draw = RungDraw(ladder, codecs, spec) if ladder is not None else None
        self.sizes = dict(sizes or {})  # stored (width, height) by path: the index's, else read once from the header
        if ladder is not None:
            unknown = [clip for clip, _ in self.samples if clip not in ladder.rungs]
            if unknown:
                raise ValueError(f"clip {unknown[0]!r} is not in the ladder {ladder.root}")

    def sample_path(self, index: int) -> str | None:
        return self.samples[index] if self.mode == "graph" else None

    def describe(self, index: int) -> str:
        sample = self.samples[index]
        return f"frame {sample[1]} of clip {sample[0]!r}" if self.mode == "ladder" else str(sample)

    def outputs(self) -> tuple[str, ...]:
        if self.levels:  # a one-pass sweep: no flip, every level in the graph
            return ("path", "index", "valid")
        if self.mode == "graph":
            names = ["path", "window_start", "window_shape"] if self.windowed else ["path"]
        elif self.decode_on_gpu:
            names = ["rung_path", "frame_indices", "clean_rung_path"] if self.with_clean else ["rung_path",
                                                                                               "frame_indices"]
        else:
            names = ["data", "clean"] if self.with_clean else ["data"]
        roi = ("roi_start", "roi_end") if self.training else ()
        return (*names, *roi, "mirror", "level", "codec_index", "index", "valid")

    def _size(self, index: int) -> tuple[int, int]:
        path = self.samples[index]
        if path not in self.sizes:
            self.sizes[path] = image_size(path)
        return self.sizes[path]

    def _ladder_frame(self, clip: str, frame: int, codec_index: int, level: int) -> np.ndarray:
        """The rung file's name (GPU: read by DALI, decoded by NVDEC) or the frame decoded by PyAV (CPU)."""
        rung = self.draw.rung(clip, codec_index, level)
        path = self.ladder.root / rung.path
        if self.decode_on_gpu:
            return path_bytes(str(path))
        return decode_frames(path, [frame], rung.fps)[0]

    def load_batch(self, indices: list[int], draws: np.ndarray) -> list[dict[str, np.ndarray]]:
        """An in-graph codec's batch, vectorised: Python only hands DALI names, levels, boxes and flips."""
        if self.mode != "graph":
            return super().load_batch(indices, draws)
        levels, mirrors = self.spec.picks(draws[:, CLEAN], draws[:, CHOICE]), (draws[:, FLIP] < 0.5) & self.training
        out = [{"path": path_bytes(self.samples[index]), "level": level, "mirror": np.int32(mirror),
                "codec_index": np.int32(0)}
               for index, level, mirror in zip(indices, levels, mirrors)]
        if self.training:
            sizes = np.array([self._size(index) for index in indices], np.float64)
            boxes = crop_boxes(draws, np.column_stack([np.zeros((len(indices), 2)), sizes]), self.min_scale)
            offsets = np.zeros((len(indices), 2))
            if self.windowed:
                starts, shapes = tile_window(boxes, sizes, self.codec.graph_tile)
                offsets = starts.astype(np.float64)
                for sample, start, shape in zip(out, starts, shapes):
                    sample["window_start"], sample["window_shape"] = start, shape
            roi_start = np.ascontiguousarray(boxes[:, [1, 0]] - offsets, np.float32)  # rows DALI reads, packed
            roi_end = np.ascontiguousarray(boxes[:, [3, 2]] - offsets, np.float32)
            for sample, start, end in zip(out, roi_start, roi_end):
                sample["roi_start"], sample["roi_end"] = start, end
        return out

    def load(self, index: int, draws: np.ndarray) -> dict[str, np.ndarray]:
        sample = self.samples[index]
        codec_index, level = 0, self.spec.pick(draws[CLEAN], draws[CHOICE])
        if self.mode == "ladder":
            codec_index, level = (int(value[0]) for value in self.draw.picks(draws[None]))
        out: dict[str, np.ndarray] = {"level": np.int32(level), "codec_index": np.int32(codec_index),
                                      "mirror": np.int32(self.training and draws[FLIP] < 0.5)}
        if self.mode == "ladder":
            clip, frame = sample
            rung = self.draw.rung(clip, codec_index, level)
            width, height = rung.width, rung.height
            names = ("rung_path", "clean_rung_path") if self.decode_on_gpu else ("data", "clean")
            out[names[0]] = self._ladder_frame(clip, frame, codec_index, level)
            out["frame_indices"] = np.array([frame], np.int32)
            if self.with_clean:
                out[names[1]] = self._ladder_frame(clip, frame, codec_index, CLEAN_LEVEL)
        else:
            with Image.open(sample) as image:
                clean = np.asarray(image.convert("RGB"))
            height, width = clean.shape[:2]
            out["data"] = clean if level == CLEAN_LEVEL else self.codec.roundtrip(clean, level)
            out["clean"] = clean
        if self.training:
            box = crop_boxes(draws[None], np.array([[0.0, 0.0, width, height]]), self.min_scale)[0]
            out["roi_start"] = np.array([box[1], box[0]], np.float32)
            out["roi_end"] = np.array([box[3], box[2]], np.float32)
        return out


def decode_ladder_frames(encoded, frame_indices):
    """The one frame `frame_indices` of each H.264 stream, decoded by NVDEC, as HWC on the GPU (a frame
    past the stream's end is an error, not a black frame)."""
    return fn.decoders.video(encoded, device="mixed", frames=frame_indices, pad_mode="none")[0]


def image_view(images, roi_start, roi_end, geometry: ImageGeometry):
    """Train: the crop box (`roi_start`, `roi_end`: y, x pixels) resized to `crop_size`; eval (no box): the
    shorter side resized to `resize_size` (the center crop happens in `normalize`)."""
    if roi_start is not None:
        return fn.resize(images, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                         size=[geometry.crop_size, geometry.crop_size], antialias=True)
    return fn.resize(images, resize_shorter=geometry.resize_size, antialias=True)


def graph_images(nodes: dict, feeder: ImageFeeder):
    """Decoded images of an in-graph codec's feeder: the whole file, or (windowed) its window only."""
    encoded = fn.io.file.read(nodes["path"])
    if feeder.windowed:
        return fn.decoders.image_slice(encoded, nodes["window_start"], nodes["window_shape"], axes=[0, 1],
                                       output_type=types.RGB, adjust_orientation=ADJUST_ORIENTATION)
    return decode(encoded, feeder.on_gpu)


@pipeline_def(enable_conditionals=True)
def image_pipeline(feeder: ImageFeeder, geometry: ImageGeometry, channels_last: bool = False):
    """Images from `feeder`; outputs ``(image, index, level, codec_index, valid[, clean_image])`` or, for a one-pass
    sweep,
    ``(index, valid, clean view, view at levels[0], ...)``; images CHW (HWC with `channels_last`)."""
    names, on_gpu = feeder.outputs(), feeder.on_gpu
    host_images = feeder.mode != "graph" and not feeder.decode_on_gpu
    layouts = ["HWC" if name in ("data", "clean") and host_images else "" for name in names]
    nodes = dict(zip(names, fn.external_source(source=feeder, num_outputs=len(names), batch=True, batch_info=True,
                                               layout=layouts)))
    roi = nodes.get("roi_start"), nodes.get("roi_end")
    index, valid = on_device(nodes["index"], on_gpu), nodes["valid"]
    if feeder.levels:
        images = graph_images(nodes, feeder)
        if feeder.codec_placement == "after_resize":
            resized = image_view(images, *roi, geometry)
            views = [resized] + [feeder.codec.graph_stage(resized, level) for level in feeder.levels]
        else:
            views = [image_view(view, *roi, geometry)
                     for view in [images] + [feeder.codec.graph_stage(images, level) for level in feeder.levels]]
        return (index, valid, *[normalize(view, geometry, center_crop=True, channels_last=channels_last)
                                for view in views])
    if feeder.mode == "graph":
        clean = graph_images(nodes, feeder)
        if feeder.codec_placement == "after_resize":
            clean = image_view(clean, *roi, geometry)
        compressed = clean
        if nodes["level"] != CLEAN_LEVEL:
            compressed = feeder.codec.graph_stage(clean, nodes["level"])
        if feeder.codec_placement == "native":
            stacked = image_view(fn.cat(compressed, clean, axis=2) if feeder.with_clean else compressed, *roi, geometry)
        else:
            stacked = fn.cat(compressed, clean, axis=2) if feeder.with_clean else compressed
    else:
        if feeder.decode_on_gpu:
            compressed = decode_ladder_frames(fn.io.file.read(nodes["rung_path"]), nodes["frame_indices"])
            clean = (decode_ladder_frames(fn.io.file.read(nodes["clean_rung_path"]), nodes["frame_indices"])
                     if feeder.with_clean else None)
        else:
            compressed = nodes["data"].gpu() if on_gpu else nodes["data"]
            clean = (nodes["clean"].gpu() if on_gpu else nodes["clean"]) if feeder.with_clean else None
        stacked = image_view(fn.cat(compressed, clean, axis=2) if feeder.with_clean else compressed, *roi, geometry)
    copies = 2 if feeder.with_clean else 1
    images = normalize(stacked, geometry, mirror=nodes["mirror"], center_crop=not feeder.training, copies=copies,
                       channels_last=channels_last)
    level, codec_index = on_device(nodes["level"], on_gpu), on_device(nodes["codec_index"], on_gpu)
    if feeder.with_clean:
        return (split_channels(images, 0, 3, channels_last), index, level, codec_index, valid,
                split_channels(images, 3, 6, channels_last))
    return images, index, level, codec_index, valid


class ImageBatches(Batches):
    """Epochs of ``{image, index, codec_level, codec_index[, clean_image], **targets}`` batches of images at drawn
    levels of any codec that compresses images (see the module docstring). `samples` are image files, or
    ``(clip, frame)`` pairs of `ladder` (`codec` may then be a list of ladder codecs; ``codec_index`` says which
    each sample read). `sizes` maps image files to their stored ``(width, height)`` where known (the scan's
    `SampleIndex.sizes`), so training opens no file header; the rest are read once."""

    def __init__(
        self,
        samples: Sequence[str | Path | LadderFrame],
        *,
        runtime: PipelineRuntime,
        training: bool,
        spec: LevelSpec,
        codec: Codec | Sequence[Codec],
        geometry: ImageGeometry = ImageGeometry(),
        ladder: Ladder | None = None,
        targets: Mapping[str, torch.Tensor] | None = None,
        codec_placement: str = "native",
        checkpoint: bytes | str | None = None,
        with_clean: bool = False,
        sizes: Mapping[str, tuple[int, int]] | None = None) -> None:
        feeder = ImageFeeder([str(s) if isinstance(s, Path) else s for s in samples], spec, codec, geometry.min_scale,
                             ladder=ladder, on_gpu=runtime.device_id is not None, with_clean=with_clean,
                             codec_placement=codec_placement, sizes=sizes,
                             **runtime.feeder_options(training, checkpoint))
        if feeder.decode_on_gpu:
            require_nvdec()
        names = ["image", "index", "codec_level", "codec_index", "valid"] + (["clean_image"] if with_clean else [])
        super().__init__(image_pipeline(feeder=feeder, geometry=geometry, channels_last=runtime.channels_last,
                                        **runtime.pipeline_options()),
                         feeder, names, targets, runtime.channels_last)

    def reshape(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images as (B, C, H, W) (views of NHWC data with `channels_last`)."""
        for name in ("image", "clean_image"):
            if name in batch:
                batch[name] = nchw(batch[name], self.channels_last)
        return batch


class SweepBatches(Batches):
    """One epoch of evaluation batches holding every sweep level's view of the same images: ``{index,
    **targets, views}``, ``views`` mapping each level (None: clean) to its ``image`` tensor. One read and decode
    per image for all levels of an in-graph codec, instead of one full pass per level."""

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        levels: Sequence[int],
        codec: Codec,
        runtime: PipelineRuntime,
        geometry: ImageGeometry = ImageGeometry(),
        targets: Mapping[str, torch.Tensor] | None = None,
        codec_placement: str = "native") -> None:
        self.levels: list[int | None] = [None, *levels]
        feeder = ImageFeeder([str(path) for path in files], codec.parse_spec("none"), codec, geometry.min_scale,
                             on_gpu=runtime.device_id is not None, codec_placement=codec_placement,
                             levels=list(levels), **runtime.feeder_options(training=False))
        self._names = [f"view{position}" for position in range(len(self.levels))]
        super().__init__(image_pipeline(feeder=feeder, geometry=geometry, channels_last=runtime.channels_last,
                                        **runtime.pipeline_options()),
                         feeder, ["index", "valid", *self._names], targets, runtime.channels_last)

    def reshape(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The views gathered under ``views``, each (B, C, H, W)."""
        batch["views"] = {level: nchw(batch.pop(name), self.channels_last)
                          for level, name in zip(self.levels, self._names)}
        return batch
