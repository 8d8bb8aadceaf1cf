"""The Python side of the H.264 video pipelines: which clip, rung, frames and crop each sample gets.

`LadderFeeder` is a DALI external-source callable (batch mode). For every batch it picks this
rank's samples, draws per sample a CRF rung, the frames of a clip (T frames at a stride; several
clips per video for evaluation), a crop position and a flip, all from a generator seeded by
(seed, epoch, sample), so draws do not depend on the world size and a resumed run repeats them.
On a GPU it hands DALI the rung's H.264 bytes and the frame indices (NVDEC decodes); without
one it decodes those frames with PyAV itself, since DALI's CPU decoder does not read H.264.

A clip shorter than its span loops: frame ``i`` of the span reads frame ``i mod n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from dali_pipes.crf import CrfSpec
from dali_pipes.ladder import Ladder


@dataclass(frozen=True)
class ClipSampling:
    """How frames are taken from a clip: `frames` (T) at `stride`, `clips_per_video` spans (eval)."""

    frames: int = 16
    stride: int = 2
    clips_per_video: int = 1

    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.frames - 1) * self.stride + 1

    def frame_indices(self, count: int, rng: np.random.Generator | None) -> np.ndarray:
        """Indices into a clip of `count` frames: one random span (`rng` given) or evenly spaced spans."""
        room = max(0, count - self.span())
        if rng is not None:
            starts = [int(rng.integers(room + 1))]
        else:
            starts = np.linspace(0, room, self.clips_per_video).round().astype(int).tolist()
        steps = np.arange(self.frames) * self.stride
        return np.concatenate([(start + steps) % count for start in starts]).astype(np.int32)


def decode_frames(path: Path | str, indices: Sequence[int], fps: float) -> np.ndarray:
    """Frames `indices` of an H.264 rung as RGB uint8 ``(len(indices), H, W, 3)``, decoded by PyAV.

    Seeks to the keyframe before the first wanted frame (rungs have one every <= 15 frames).
    """
    wanted = sorted(set(int(i) for i in indices))
    found: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        if wanted[0] > 0:
            container.seek(int(wanted[0] / fps / time_base), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            position = round(float(frame.pts * time_base) * fps)
            if position in wanted:
                found[position] = frame.to_ndarray(format="rgb24")
            if position >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"{path}: frame {missing[0]} could not be decoded")
    return np.stack([found[int(i)] for i in indices])


class LadderFeeder:
    """External-source callable producing this rank's batches of clips drawn from a CRF ladder.

    Outputs per sample, named by `outputs()`: ``data`` (H.264 bytes for NVDEC, or frames decoded
    here as FHWC), ``frame_indices`` (NVDEC only), ``crop_x``, ``crop_y``, ``mirror``, ``index``,
    ``crf``, ``valid``.
    Every rank runs the same number of batches; training pads a short shard with repeats,
    evaluation pads with samples marked ``valid = 0`` that the iterator drops.
    """

    def __init__(self, ladder: Ladder, clips: Sequence[str], spec: CrfSpec, sampling: ClipSampling, *,
                 training: bool, batch_size: int, shard_id: int = 0, num_shards: int = 1, seed: int = 0,
                 decode_on_cpu: bool = True, start_epoch: int = 0, start_batch: int = 0,
                 threads: int = 1) -> None:
        if not clips:
            raise ValueError("no clips to read")
        unknown = [clip for clip in clips if clip not in ladder.rungs]
        if unknown:
            raise ValueError(f"clip {unknown[0]!r} is not in the ladder {ladder.root} ({len(unknown)} missing); "
                             f"rerun: {ladder.settings.get('command', 'codecloop transcode')}")
        self.rungs = ladder.crfs()
        spec.check_ladder(self.rungs, f"ladder {ladder.root}")
        self.ladder, self.clips, self.spec, self.sampling = ladder, list(clips), spec, sampling
        self.training, self.batch_size = training, batch_size
        self.shard_id, self.num_shards, self.seed = shard_id, num_shards, seed
        self.decode_on_cpu, self.start_epoch, self.start_batch = decode_on_cpu, start_epoch, start_batch
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def outputs(self) -> tuple[str, ...]:
        """Names of the per-sample outputs, in the order `__call__` returns them."""
        head = ("data",) if self.decode_on_cpu else ("data", "frame_indices")
        return head + ("crop_x", "crop_y", "mirror", "index", "crf", "valid")

    def shard_size(self) -> int:
        """Sample slots per rank and epoch (the largest shard)."""
        return math.ceil(len(self.clips) / self.num_shards)

    def batches_per_epoch(self) -> int:
        """Batches every rank runs per epoch."""
        return math.ceil(self.shard_size() / self.batch_size)

    def shard_order(self, epoch: int) -> list[tuple[int, bool]]:
        """``(sample index, valid)`` slots of this rank for `epoch`, padded to `shard_size`."""
        order = np.arange(len(self.clips))
        if self.training:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        mine = [(int(i), True) for i in order[self.shard_id::self.num_shards]]
        padding = self.shard_size() - len(mine)
        if padding:
            mine += [(int(order[k % len(order)]), self.training) for k in range(padding)]
        return mine

    def draw(self, index: int, epoch: int) -> tuple[int, np.ndarray, float, float, int]:
        """``(crf, frame indices, crop_x, crop_y, mirror)`` of one sample in one epoch."""
        rng = np.random.default_rng([self.seed, epoch, index, 1])
        crf = self.spec.draw(rng, self.rungs)
        count = self.ladder.rungs[self.clips[index]][crf].frames
        if not self.training:
            return crf, self.sampling.frame_indices(count, None), 0.5, 0.5, 0
        frames = self.sampling.frame_indices(count, rng)
        return crf, frames, float(rng.random()), float(rng.random()), int(rng.random() < 0.5)

    def _load(self, index: int, crf: int, frames: np.ndarray) -> np.ndarray:
        clip = self.clips[index]
        path = self.ladder.path(clip, crf)
        if self.decode_on_cpu:
            return decode_frames(path, frames, self.ladder.rungs[clip][crf].fps)
        return np.fromfile(path, dtype=np.uint8)

    def __call__(self, info) -> tuple[list[np.ndarray], ...]:
        """The batch `info.iteration` of epoch `info.epoch_idx` (counted from the start position)."""
        epoch = self.start_epoch + info.epoch_idx
        batch = info.iteration + (self.start_batch if info.epoch_idx == 0 else 0)
        if batch >= self.batches_per_epoch():
            raise StopIteration
        slots = self.shard_order(epoch)[batch * self.batch_size:(batch + 1) * self.batch_size]
        draws = [self.draw(index, epoch) for index, _ in slots]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads))
        data = list(self._pool.map(self._load, [index for index, _ in slots], [d[0] for d in draws],
                                   [d[1] for d in draws]))
        columns = {
            "data": data,
            "frame_indices": [d[1] for d in draws],
            "crop_x": [np.float32(d[2]) for d in draws],
            "crop_y": [np.float32(d[3]) for d in draws],
            "mirror": [np.int32(d[4]) for d in draws],
            "index": [np.int64(index) for index, _ in slots],
            "crf": [np.int32(d[0]) for d in draws],
            "valid": [np.int32(valid) for _, valid in slots],
        }
        return tuple(columns[name] for name in self.outputs())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None}
