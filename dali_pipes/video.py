"""Video pipelines on a ladder (H.264, HEVC, AV1 CRFs): rung drawn per clip -> decode -> resize -> crop -> normalize.

`LadderFeeder` draws per clip and epoch a rung (`RungDraw`: a codec of the list, then a CRF on that codec's scale;
clean: that codec's clean rung), the frames of a clip (T frames
at a stride; several evenly spaced clips per video for evaluation), a crop position and a flip. On a GPU it
hands DALI the rung file's name, read in the graph, and the frame indices, decoded by NVDEC
(``fn.decoders.video``, device "mixed"); without one it decodes those frames with PyAV itself, since DALI's
CPU decoder does not read H.264, and the rest of the graph is the same, so both yield identical layouts.
A clip shorter than its span loops: frame ``i`` of the span reads frame ``i mod n``.
`VideoBatches` yields ``{video, index, codec_level, codec_index, **targets}`` (``codec_index``: the position of
the sample's codec in the codec list) with ``video`` float
``(B, C, T, H, W)``, or ``(B, K, C, T, H, W)`` when evaluating K clips per video.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.feeder import Batches, ShardedFeeder, path_bytes
from codecloop.dali_pipes.ladder import SWSCALE_THREADS, Ladder, Rung
from codecloop.dali_pipes.levels import LevelSpec, ladder_rung
from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.sample_plan import CHOICE, CLEAN, CODEC, CROP_X, CROP_Y, FLIP, START
from codecloop.dali_pipes.pipelines import on_device

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class ClipSampling:
    """How frames are taken from a clip: `frames` (T) at `stride`, `clips_per_video` spans (eval)."""

    frames: int = 16
    stride: int = 2
    clips_per_video: int = 1

    def span(self) -> int:
        """Source frames one clip covers."""
        return (self.frames - 1) * self.stride + 1

    def frame_indices(self, count: int, start_draw: float | None) -> np.ndarray:
        """Indices into a clip of `count` frames: one span placed by a uniform draw in [0, 1) (training),
        or evenly spaced spans (`start_draw` None)."""
        room = max(0, count - self.span())
        if start_draw is not None:
            starts = [min(int(start_draw * (room + 1)), room)]
        else:
            starts = np.linspace(0, room, self.clips_per_video).round().astype(int).tolist()
        steps = np.arange(self.frames) * self.stride
        return np.concatenate([(start + steps) % count for start in starts]).astype(np.int32)


def decode_frames(path: Path | str, indices: Sequence[int], fps: float) -> np.ndarray:
    """Frames `indices` of a rung (H.264, HEVC or AV1) as RGB uint8 ``(len(indices), H, W, 3)``, decoded by PyAV.

    Seeks to the keyframe before the first wanted frame (rungs have one every <= 15 frames).
    """
    import av
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
                found[position] = frame.to_ndarray(format="rgb24", threads=SWSCALE_THREADS)
            if position >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"{path}: frame {missing[0]} could not be decoded")
    return np.stack([found[int(i)] for i in indices])


def require_nvdec() -> None:
    """Fail plainly, before any pipeline is built, where the driver's NVDEC library cannot be loaded
    (a container started without the video capability, say), instead of with a DALI stack trace."""
    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError as error:
        raise RuntimeError(
            f"NVDEC needs the NVIDIA driver's libnvcuvid.so.1, which this machine cannot load ({error}). In a "
            "container, start it with NVIDIA_DRIVER_CAPABILITIES=compute,utility,video; without NVDEC, ladder "
            "rungs can only be decoded on the CPU (PyAV), i.e. without a GPU") from error


def codec_list(codec: Codec | Sequence[Codec]) -> list[Codec]:
    """One codec or a list of them, as a list."""
    return [codec] if isinstance(codec, Codec) else list(codec)


class RungDraw:
    """Which rung of `ladder` a sample reads, from its row of the plan's draws: its codec uniformly from `codecs`
    (column `CODEC`; always the first with one codec), then its level from `spec` on that codec's scale
    (columns `CLEAN`, `CHOICE`), snapped to that codec's rungs; a clean sample reads that codec's clean rung.

    `spec` is parsed on the first codec's scale; its text is parsed again on each other codec's scale.
    """

    def __init__(self, ladder: Ladder, codecs: Codec | Sequence[Codec], spec: LevelSpec) -> None:
        self.ladder, self.codecs = ladder, codec_list(codecs)
        for codec in self.codecs:
            if codec.ladder_clean_rung is None:
                raise ValueError(f"codec {codec.name!r} does not read ladders (it runs: {', '.join(codec.runs)})")
        self.specs = [spec] + [codec.parse_spec(spec.text, spec.clean_prob) for codec in self.codecs[1:]]
        self.rungs = [ladder.crfs(codec.name) for codec in self.codecs]
        for codec, codec_spec, rungs in zip(self.codecs, self.specs, self.rungs):
            if not rungs:
                raise ValueError(f"ladder {ladder.root} has no {codec.title} rung for every clip (it holds: "
                                 f"{', '.join(ladder.codecs()) or 'none'}); transcode it with --codecs {codec.name}")
            where = f"ladder {ladder.root}" + (f" for {codec.title}" if len(self.codecs) > 1 else "")
            codec_spec.check_ladder(rungs, codec.ladder_clean_rung, where)

    def picks(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(codec_index, level)`` int32 arrays for rows of the plan's draws (``(n, COLUMNS)``)."""
        count = len(self.codecs)
        chosen = np.minimum((draws[:, CODEC] * count).astype(np.int64), count - 1)
        levels = np.empty(len(draws), np.int32)
        for position, (spec, rungs) in enumerate(zip(self.specs, self.rungs)):
            rows = chosen == position
            levels[rows] = spec.picks(draws[rows, CLEAN], draws[rows, CHOICE], rungs)
        return chosen.astype(np.int32), levels

    def rung(self, clip: str, codec_index: int, level: int) -> Rung:
        """The rung of `clip` a sample drawn (`codec_index`, `level`) reads."""
        codec = self.codecs[codec_index]
        return self.ladder.rung(clip, ladder_rung(level, codec.ladder_clean_rung), codec.name)


@dataclass(frozen=True)
class VideoGeometry:
    """Shorter side after resize, square crop size, normalization constants (0..1 units)."""

    crop_size: int = 112
    resize_size: int = 128
    mean: tuple[float, float, float] = KINETICS_MEAN
    std: tuple[float, float, float] = KINETICS_STD


class LadderFeeder(ShardedFeeder):
    """This rank's clips drawn from a ladder: outputs ``rung_path`` (the rung file, read by DALI for NVDEC) and
    ``frame_indices``, or, without a GPU, ``data`` (frames decoded here with PyAV, FHWC); then ``crop_x``,
    ``crop_y``, ``mirror``, ``level``, ``codec_index``, ``index``, ``valid``. `codec` is one ladder codec or a
    list of them, drawn per clip (`RungDraw`)."""

    def __init__(self, ladder: Ladder, clips: Sequence[str], spec: LevelSpec, codec: Codec | Sequence[Codec],
                 sampling: ClipSampling, *, decode_on_cpu: bool = True, **sharding) -> None:
        super().__init__(len(clips), **sharding)
        for each in codec_list(codec):
            if each.ladder_clean_rung is None:
                raise ValueError(f"codec {each.name!r} does not read ladders ({', '.join(each.runs)}); clips need one")
        unknown = [clip for clip in clips if clip not in ladder.rungs]
        if unknown:
            raise ValueError(f"clip {unknown[0]!r} is not in the ladder {ladder.root} ({len(unknown)} missing); "
                             f"rerun: {ladder.settings.get('command', 'codecloop transcode')}")
        self.draw = RungDraw(ladder, codec, spec)
        self.ladder, self.clips, self.spec, self.sampling = ladder, list(clips), spec, sampling
        self.decode_on_cpu = decode_on_cpu

    def describe(self, index: int) -> str:
        return f"clip {self.clips[index]!r} of {self.ladder.root}"

    def outputs(self) -> tuple[str, ...]:
        head = ("data",) if self.decode_on_cpu else ("rung_path", "frame_indices")
        return head + ("crop_x", "crop_y", "mirror", "level", "codec_index", "index", "valid")

    def load(self, index: int, draws: np.ndarray) -> dict[str, np.ndarray]:
        clip = self.clips[index]
        codec_index, level = (int(value[0]) for value in self.draw.picks(draws[None]))
        rung = self.draw.rung(clip, codec_index, level)
        frames = self.sampling.frame_indices(rung.frames, draws[START] if self.training else None)
        path = self.ladder.root / rung.path
        crop_x, crop_y, mirror = (draws[CROP_X], draws[CROP_Y], draws[FLIP] < 0.5) if self.training else (0.5, 0.5, 0)
        clip_data = ("data", decode_frames(path, frames, rung.fps)) if self.decode_on_cpu else (
            "rung_path", path_bytes(str(path)))
        return {
            clip_data[0]: clip_data[1],
            "frame_indices": frames,
            "crop_x": np.float32(crop_x),
            "crop_y": np.float32(crop_y),
            "mirror": np.int32(mirror),
            "level": np.int32(level),
            "codec_index": np.int32(codec_index),
        }


def decode_clips(encoded, frame_indices):
    """Decode the frames `frame_indices` of each stream (H.264, HEVC, AV1) with NVDEC; FHWC uint8 RGB on the GPU.

    ``pad_mode="none"``: an index past a stream's end is an error, not a silent black frame.
    """
    return fn.decoders.video(encoded, device="mixed", frames=frame_indices, pad_mode="none")


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
        std=[255.0 * value for value in geometry.std])


@pipeline_def
def video_pipeline(feeder: LadderFeeder, geometry: VideoGeometry, on_gpu: bool):
    """Clips from `feeder`; outputs ``(video, index, level, codec_index, valid)``."""
    names = feeder.outputs()
    nodes = dict(zip(names, fn.external_source(source=feeder, num_outputs=len(names), batch=True, batch_info=True,
                                               layout=["FHWC" if not on_gpu else ""] + [""] * (len(names) - 1))))
    frames = decode_clips(fn.io.file.read(nodes["rung_path"]), nodes["frame_indices"]) if on_gpu else nodes["data"]
    video = clip_geometry(frames, nodes["crop_x"], nodes["crop_y"], nodes["mirror"], geometry)
    return (video, on_device(nodes["index"], on_gpu), on_device(nodes["level"], on_gpu),
            on_device(nodes["codec_index"], on_gpu), nodes["valid"])


class VideoBatches(Batches):
    """Epochs of ``{video, index, codec_level, codec_index, **targets}`` batches from one shard of a ladder's clips
    (`codec`: one ladder codec or a list, drawn per clip).

    `targets` maps a name to a tensor indexed by sample index (position in `clips`).
    ``checkpoint=`` (a `checkpoint()` value) resumes at that epoch and batch with the same draws.
    """

    def __init__(
        self,
        ladder: Ladder,
        clips: Sequence[str],
        *,
        runtime: PipelineRuntime,
        training: bool,
        spec: LevelSpec,
        codec: Codec | Sequence[Codec],
        sampling: ClipSampling = ClipSampling(),
        geometry: VideoGeometry = VideoGeometry(),
        targets: Mapping[str, torch.Tensor] | None = None,
        checkpoint: bytes | str | None = None) -> None:
        if runtime.channels_last:
            raise ValueError("video clips are 5-D (B, C, T, H, W): there is no channels-last layout for them")
        self.sampling = sampling
        on_gpu = runtime.device_id is not None
        feeder = LadderFeeder(ladder, clips, spec, codec, sampling, decode_on_cpu=not on_gpu,
                              **runtime.feeder_options(training, checkpoint))
        if on_gpu:
            require_nvdec()
        pipe = video_pipeline(feeder=feeder, geometry=geometry, on_gpu=on_gpu, **runtime.pipeline_options())
        super().__init__(pipe, feeder, ["video", "index", "codec_level", "codec_index", "valid"], targets)

    def reshape(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(B, K*T, C, H, W)`` frames to ``(B, C, T, H, W)`` clips, or ``(B, K, C, T, H, W)``."""
        video = batch["video"]
        count, frames, channels, height, width = video.shape
        clips = self.sampling.clips_per_video
        video = video.reshape(count, clips, frames // clips, channels, height, width).permute(0, 1, 3, 2, 4, 5)
        batch["video"] = (video[:, 0] if clips == 1 else video).contiguous()
        return batch
