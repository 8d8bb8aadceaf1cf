"""Image codecs on the host: a level drawn per image, encoded online on CPU threads or read from a ladder.

Two kinds of sample share one pipeline:

- an image file (online mode): decoded and round-tripped through the codec's `roundtrip` (for
  H.264, libx264 as one intra frame) at the drawn level, on the pipeline's pool of CPU threads; a
  clean sample is the untouched image;
- a ``(clip, frame)`` of a ladder (`codecloop transcode` on sequence folders or videos): that frame
  of the drawn rung, decoded by NVDEC on a GPU or by PyAV on a CPU; clean is the codec's clean rung.

Then, as for an in-graph codec: random-resized crop + flip (train) or resize + center crop (eval),
normalize. Crop boxes and flips come from the sample plan, so a resumed run repeats them and a run of
another codec with the same seed sees the same ones. With ``with_clean`` the clean image goes through
the very same crop and flip (a teacher's view). Every sample reports its ``codec_level``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def
from PIL import Image

from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.feeder import FedBatches, ShardedFeeder
from codecloop.dali_pipes.sample_plan import CHOICE, CLEAN, FLIP, crop_boxes
from codecloop.dali_pipes.iterator import nchw
from codecloop.dali_pipes.ladder import Ladder
from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelSpec, ladder_rung
from codecloop.dali_pipes.pipelines import ImageGeometry, normalize, on_device
from codecloop.dali_pipes.video import decode_frames, require_nvdec

LadderFrame = tuple[str, int]


def random_resized_box(width: int, height: int, draws: np.ndarray, min_area: float) -> tuple[float, ...]:
    """A crop box by the sample plan's one law (area `min_area`..1, aspect 3/4..4/3) as relative (y0, x0, y1, x1)."""
    x0, y0, x1, y1 = crop_boxes(draws[None], np.array([[0.0, 0.0, width, height]]), min_area)[0]
    return y0 / height, x0 / width, y1 / height, x1 / width


class ImageFeeder(ShardedFeeder):
    """This rank's images at drawn levels: outputs ``data`` (an image, or the rung's bytes for NVDEC),
    ``frame_indices`` (NVDEC only), ``clean`` / ``clean_data`` (with `with_clean`), ``roi_start``,
    ``roi_end``, ``mirror``, ``level``, ``index``, ``valid``."""

    def __init__(self, samples: Sequence[str | LadderFrame], spec: LevelSpec, codec: Codec, min_area: float, *,
                 ladder: Ladder | None = None, decode_on_cpu: bool = True, with_clean: bool = False,
                 **sharding) -> None:
        super().__init__(len(samples), **sharding)
        if ladder is None and codec.roundtrip is None:
            raise ValueError(f"codec {codec.name!r} has no host round trip for images ({', '.join(codec.runs)})")
        if ladder is not None and codec.ladder_clean_rung is None:
            raise ValueError(f"codec {codec.name!r} does not read ladders ({', '.join(codec.runs)})")
        self.samples, self.spec, self.codec, self.min_area, self.ladder = list(samples), spec, codec, min_area, ladder
        self.decode_on_gpu = ladder is not None and not decode_on_cpu
        self.with_clean = with_clean
        self.rungs = ladder.crfs() if ladder is not None else None
        if ladder is not None:
            spec.check_ladder(self.rungs, codec.ladder_clean_rung, f"ladder {ladder.root}")
            unknown = [clip for clip, _ in self.samples if clip not in ladder.rungs]
            if unknown:
                raise ValueError(f"clip {unknown[0]!r} is not in the ladder {ladder.root}")

    def describe(self, index: int) -> str:
        sample = self.samples[index]
        return f"frame {sample[1]} of clip {sample[0]!r}" if self.ladder is not None else str(sample)

    def outputs(self) -> tuple[str, ...]:
        names = ["data", "frame_indices"] if self.decode_on_gpu else ["data"]
        if self.with_clean:
            names.append("clean_data" if self.decode_on_gpu else "clean")
        roi = ("roi_start", "roi_end") if self.training else ()
        return (*names, *roi, "mirror", "level", "index", "valid")

    def _ladder_frame(self, clip: str, frame: int, level: int) -> np.ndarray:
        rung = ladder_rung(level, self.codec.ladder_clean_rung)
        path = self.ladder.path(clip, rung)
        if self.decode_on_gpu:
            return np.fromfile(path, np.uint8)
        return decode_frames(path, [frame], self.ladder.rungs[clip][rung].fps)[0]

    def load(self, index: int, draws: np.ndarray) -> dict[str, np.ndarray]:
        sample = self.samples[index]
        level = self.spec.pick(draws[CLEAN], draws[CHOICE], self.rungs)
        out: dict[str, np.ndarray] = {"level": np.int32(level)}
        if self.ladder is not None:
            clip, frame = sample
            rung = self.ladder.rungs[clip][ladder_rung(level, self.codec.ladder_clean_rung)]
            width, height = rung.width, rung.height
            out["data"], out["frame_indices"] = self._ladder_frame(clip, frame, level), np.array([frame], np.int32)
            if self.with_clean:
                out["clean_data" if self.decode_on_gpu else "clean"] = self._ladder_frame(clip, frame, CLEAN_LEVEL)
        else:
            with Image.open(sample) as image:
                clean = np.asarray(image.convert("RGB"))
            height, width = clean.shape[:2]
            out["data"] = clean if level == CLEAN_LEVEL else self.codec.roundtrip(clean, level)
            out["clean"] = clean
        box = random_resized_box(width, height, draws, self.min_area) if self.training else (0.0, 0.0, 1.0, 1.0)
        out["roi_start"], out["roi_end"] = np.array(box[:2], np.float32), np.array(box[2:], np.float32)
        out["mirror"] = np.int32(self.training and draws[FLIP] < 0.5)
        return out


def decode_ladder_frames(encoded, frame_indices):
    """The one frame `frame_indices` of each H.264 stream, decoded by NVDEC, as HWC on the GPU (a frame
    past the stream's end is an error, not a black frame)."""
    return fn.decoders.video(encoded, device="mixed", frames=frame_indices, pad_mode="none")[0]


def image_view(images, roi_start, roi_end, geometry: ImageGeometry):
    """Train: the crop box (`roi_start`, `roi_end`) resized to `crop_size`; eval (no box): the shorter
    side resized to `resize_size`."""
    if roi_start is not None:
        return fn.resize(images, roi_start=roi_start, roi_end=roi_end, roi_relative=True,
                         size=[geometry.crop_size, geometry.crop_size], antialias=True)
    return fn.resize(images, resize_shorter=geometry.resize_size, antialias=True)


@pipeline_def
def host_codec_pipeline(feeder: ImageFeeder, geometry: ImageGeometry, on_gpu: bool, channels_last: bool = False):
    """Images from `feeder`; outputs ``(image, index, level, valid[, clean_image])``, images CHW (HWC with
    `channels_last`)."""
    names = feeder.outputs()
    layouts = ["HWC" if name in ("data", "clean") and not feeder.decode_on_gpu else "" for name in names]
    nodes = dict(zip(names, fn.external_source(source=feeder, num_outputs=len(names), batch=True, batch_info=True,
                                               layout=layouts)))
    views = []
    for data, clean in (("data", False), ("clean", True)):
        if clean and not feeder.with_clean:
            continue
        if feeder.decode_on_gpu:
            images = decode_ladder_frames(nodes["clean_data" if clean else "data"], nodes["frame_indices"])
        else:
            images = nodes[data].gpu() if on_gpu else nodes[data]
        view = image_view(images, nodes.get("roi_start"), nodes.get("roi_end"), geometry)
        views.append(normalize(view, geometry, mirror=nodes["mirror"], center_crop=not feeder.training,
                               channels_last=channels_last))
    return views[0], on_device(nodes["index"], on_gpu), on_device(nodes["level"], on_gpu), nodes["valid"], *views[1:]


class HostCodecBatches(FedBatches):
    """Epochs of ``{image, index, codec_level[, clean_image], **targets}`` batches of images at drawn levels
    of a host codec.

    `samples` are image files (online round trip) or ``(clip, frame)`` pairs of `ladder`.
    """

    def __init__(
        self,
        samples: Sequence[str | LadderFrame],
        *,
        batch_size: int,
        training: bool,
        spec: LevelSpec,
        codec: Codec,
        geometry: ImageGeometry = ImageGeometry(),
        ladder: Ladder | None = None,
        targets: Mapping[str, torch.Tensor] | None = None,
        shard_id: int = 0,
        num_shards: int = 1,
        device_id: int | None = None,
        num_threads: int = 1,
        seed: int = 0,
        prefetch_queue_depth: int = 2,
        checkpoint: bytes | str | None = None,
        with_clean: bool = False,
        channels_last: bool = False,
    ) -> None:
        start_epoch, start_batch = FedBatches.start(checkpoint)
        self.channels_last = channels_last
        feeder = ImageFeeder(samples, spec, codec, geometry.min_area, ladder=ladder, decode_on_cpu=device_id is None,
                             with_clean=with_clean, training=training, batch_size=batch_size,
                             shard_id=shard_id, num_shards=num_shards, seed=seed, start_epoch=start_epoch,
                             start_batch=start_batch, threads=num_threads)
        if feeder.decode_on_gpu:
            require_nvdec()
        pipe = host_codec_pipeline(feeder=feeder, geometry=geometry, on_gpu=device_id is not None,
                                   channels_last=channels_last, batch_size=batch_size, num_threads=num_threads,
                                   device_id=device_id, prefetch_queue_depth=prefetch_queue_depth)
        device = torch.device("cuda", device_id) if device_id is not None else torch.device("cpu")
        names = ["image", "index", "codec_level", "valid"] + (["clean_image"] if with_clean else [])
        super().__init__(pipe, feeder, names, device, targets)

    def reshape(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images as (B, C, H, W) (views of NHWC data with `channels_last`)."""
        for name in ("image", "clean_image"):
            if name in batch:
                batch[name] = nchw(batch[name], self.channels_last)
        return batch
