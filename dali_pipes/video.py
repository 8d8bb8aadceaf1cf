"""Video pipelines on an H.264 CRF ladder: rung drawn per clip -> decode -> resize -> crop -> normalize.

The graph functions are pure functions of DALI nodes; `video_pipeline` attaches the
`LadderFeeder` external source. On a GPU the rung's bytes are decoded by NVDEC
(``fn.decoders.video``, device "mixed") at the frame indices the feeder drew; on a CPU the feeder
decodes them with PyAV and the rest of the graph is the same, so both yield identical layouts.
`VideoBatches` turns the pipeline into dict batches
``{video, index, h264_crf, **targets}`` with ``video`` float ``(B, C, T, H, W)``, or
``(B, K, C, T, H, W)`` when evaluating K clips per video.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from dali_pipes.crf import CrfSpec
from dali_pipes.feeder import ClipSampling, LadderFeeder
from dali_pipes.ladder import Ladder

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class VideoGeometry:
    """Shorter side after resize, square crop size, normalization constants (0..1 units)."""

    crop_size: int = 112
    resize_size: int = 128
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD


def decode_clips(encoded, frame_indices):
    """Decode the frames `frame_indices` of each H.264 stream with NVDEC; FHWC uint8 RGB on the GPU."""
    return fn.decoders.video(encoded, device="mixed", frames=frame_indices)


def clip_geometry(frames, crop_x, crop_y, mirror, geometry: VideoGeometry):
    """Resize the shorter side, crop a square at (`crop_x`, `crop_y`), mirror, normalize to float FCHW."""
    frames = fn.resize(frames, resize_shorter=geometry.resize_size, antialias=True)
    return fn.crop_mirror_normalize(
        frames,
        dtype=types.FLOAT,
        output_layout="FCHW",
        crop=(geometry.crop_size, geometry.crop_size),
        crop_pos_x=crop_x,
        crop_pos_y=crop_y,
        mirror=mirror,
        mean=[255.0 * value for value in geometry.mean],
        std=[255.0 * value for value in geometry.std],
    )


@pipeline_def
def video_pipeline(feeder: LadderFeeder, geometry: VideoGeometry, on_gpu: bool):
    """Clips from `feeder`; outputs ``(video, index, crf, valid)``."""
    names = feeder.outputs()
    nodes = dict(zip(names, fn.external_source(source=feeder, num_outputs=len(names), batch=True, batch_info=True,
                                               layout=["FHWC" if not on_gpu else ""] + [""] * (len(names) - 1))))
    frames = decode_clips(nodes["data"], nodes["frame_indices"]) if on_gpu else nodes["data"]
    video = clip_geometry(frames, nodes["crop_x"], nodes["crop_y"], nodes["mirror"], geometry)
    return video, nodes["index"], nodes["crf"], nodes["valid"]


class VideoBatches:
    """Epochs of ``{video, index, h264_crf, **targets}`` batches from one shard of a ladder's clips.

    `targets` maps a name to a tensor indexed by sample index (position in `clips`).
    `checkpoint()` records the epoch and batch after the last batch returned; ``checkpoint=``
    resumes there with the same draws.
    """

    def __init__(
        self,
        ladder: Ladder,
        clips: Sequence[str],
        *,
        batch_size: int,
        training: bool,
        spec: CrfSpec,
        sampling: ClipSampling = ClipSampling(),
        geometry: VideoGeometry = VideoGeometry(),
        targets: Mapping[str, torch.Tensor] | None = None,
        shard_id: int = 0,
        num_shards: int = 1,
        device_id: int | None = None,
        num_threads: int = 1,
        seed: int = 0,
        prefetch_queue_depth: int = 2,
        checkpoint: bytes | str | None = None,
    ) -> None:
        position = json.loads(checkpoint) if checkpoint else {"epoch": 0, "batch": 0}
        self.epoch, self.batch = position["epoch"], position["batch"]
        self.device = torch.device("cuda", device_id) if device_id is not None else torch.device("cpu")
        self.targets = {name: value.to(self.device) for name, value in (targets or {}).items()}
        self.sampling = sampling
        self.feeder = LadderFeeder(
            ladder, clips, spec, sampling, training=training, batch_size=batch_size, shard_id=shard_id,
            num_shards=num_shards, seed=seed, decode_on_cpu=device_id is None, start_epoch=self.epoch,
            start_batch=self.batch, threads=num_threads)
        pipe = video_pipeline(
            feeder=self.feeder, geometry=geometry, on_gpu=device_id is not None, batch_size=batch_size,
            num_threads=num_threads, device_id=device_id, prefetch_queue_depth=prefetch_queue_depth,
            )
        self._iterator = DALIGenericIterator([pipe], ["video", "index", "h264_crf", "valid"],
                                             last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)

    def __len__(self) -> int:
        """Batches per epoch on this shard (the same on every shard)."""
        return self.feeder.batches_per_epoch()

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; then the position moves to the next epoch."""
        for (outputs,) in self._iterator:
            keep = outputs["valid"].reshape(-1).bool()
            video = outputs["video"][keep.to(outputs["video"].device)]
            count, frames, channels, height, width = video.shape
            clips = self.sampling.clips_per_video
            video = video.reshape(count, clips, frames // clips, channels, height, width).permute(0, 1, 3, 2, 4, 5)
            video = video[:, 0] if clips == 1 else video
            index = outputs["index"].reshape(-1)[keep].to(self.device, dtype=torch.long)
            batch = {
                "video": video.contiguous().to(self.device, non_blocking=True),
                "index": index,
                "h264_crf": outputs["h264_crf"].reshape(-1)[keep].to(self.device, non_blocking=True),
            }
            for name, table in self.targets.items():
                batch[name] = table[index]
            self.batch += 1
            yield batch
        self._iterator.reset()
        self.epoch, self.batch = self.epoch + 1, 0

    def checkpoint(self) -> bytes:
        """The epoch and batch after the last batch this iterator returned."""
        return json.dumps({"epoch": self.epoch, "batch": self.batch}).encode()
