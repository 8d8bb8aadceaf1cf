"""The CRF ladder: every clip encoded once per codec and CRF (libx264, libx265, SVT-AV1 through PyAV), cached
with a manifest.

H100-class GPUs have no NVENC and DALI has no encoder, so clips are encoded ahead of training;
training draws a (codec, CRF) rung per clip and decodes it on the GPU (NVDEC: H.264, HEVC and AV1 on
Hopper). Rungs are written the way NVDEC wants them: ``yuv420p`` 8-bit, closed GOPs, a keyframe at least
every `keyint` frames, a constant frame rate (each codec's options: `codecloop.dali_pipes.video_codecs`).
Layout under the ladder folder::

    ladder.json                 settings (CRFs per codec) and the command that rebuilds the ladder
    manifest.csv                one row per clip x codec x CRF (see `MANIFEST_COLUMNS`)
    failed.csv                  clips whose source could not be read, and why
    <clip>/crf23.mp4            one file per rung, <clip> = source path without suffix; H.264 rungs keep
    <clip>/hevc-crf23.mp4       the plain name (ladders from before other codecs load as they are),
    <clip>/av1-crf23.mp4        the others carry their codec's name
    <clip>/crf23.json           that rung's manifest row, written after the file is whole
    <clip>/frames.txt           image sequences only: the source frame files, in order

Every file is written under a hidden temporary name and renamed when whole, and a rung counts
as done only when its ``.json`` exists, so a killed transcode is simply run again: finished
rungs are skipped, unfinished ones redone, and no partial rung is ever listed.

Rung 0 is not x264's lossless mode: lossless H.264 needs the High 4:4:4 Predictive profile,
which NVDEC cannot decode. It is encoded at constant QP 1 instead (High profile), above
50 dB against the source, and so are HEVC's and AV1's CRF-0 rungs (Main profile); the manifest's
PSNR column shows how close each rung is. A manifest written before the ``codec`` column existed
is read as H.264.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
import shlex
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from codecloop.dali_pipes.video_codecs import ENCODERS, SWSCALE_THREADS, VideoEncoder, parse_codecs, video_encoder

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                            ".wmv", ".ts", ".3gp", ".ogv"})
FRAME_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
SETTINGS, MANIFEST, FAILED, FRAME_LIST = "ladder.json", "manifest.csv", "failed.csv", "frames.txt"
MANIFEST_COLUMNS = ("clip", "crf", "path", "frames", "fps", "width", "height", "source", "source_width",
                    "source_height", "source_pix_fmt", "retimed", "bytes", "bits_per_pixel", "psnr", "codec")
DEFAULT_FPS = 25
LEGACY_CODEC = "h264"  # the codec of a manifest row without a ``codec`` column
# Every PyAV frame conversion (swscale) runs on its caller's thread alone (``SWSCALE_THREADS`` = 1): callers
# already work on many samples at once, and PyAV >= 19 keeps one converter per thread whose own
# slice threads do not survive a fork, so a forked process (a DataLoader or pool worker) that frees
# or reuses an inherited multi-threaded converter hangs for good.
RungKey = tuple[str, int]  # (codec, CRF)


@dataclass(frozen=True)
class ClipSource:
    """One clip to transcode: a video file, or a folder of ordered frames (`frames` set)."""

    clip: str
    path: Path
    frames: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Rung:
    """One manifest row: a clip encoded by one codec at one CRF."""

    clip: str
    crf: int
    path: str
    frames: int
    fps: float
    width: int
    height: int
    source: str
    source_width: int
    source_height: int
    source_pix_fmt: str
    retimed: bool
    bytes: int
    bits_per_pixel: float
    psnr: float
    codec: str = LEGACY_CODEC

    @classmethod
    def from_row(cls, row: dict) -> Rung:
        """A rung from a CSV / JSON row (strings converted; no ``codec``: H.264, as ladders before it)."""
        types = {"crf": int, "frames": int, "fps": float, "width": int, "height": int, "source_width": int,
                 "source_height": int, "bytes": int, "bits_per_pixel": float, "psnr": float}
        values = {key: types.get(key, str)(row[key]) for key in MANIFEST_COLUMNS if key != "codec"}
        values["retimed"] = str(row["retimed"]).lower() in ("true", "1")
        return cls(**values, codec=row.get("codec") or LEGACY_CODEC)


@dataclass
class TranscodeReport:
    """What a `transcode` run did; `failed` maps each clip it skipped to ``(source, reason)``."""

    dst: Path
    clips: int = 0
    written: int = 0
    skipped_existing: int = 0
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    encoded_frames: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        return (f"{self.clips} clips: {self.written} rungs written, {self.skipped_existing} already present, "
                f"{len(self.failed)} clips failed; manifest {self.dst / MANIFEST}")


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def find_clips(src: Path) -> list[ClipSource]:
    """Video files under `src` and folders of frames (images directly inside), sorted by clip id."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist or is not a folder")
    clips = []
    for folder, subfolders, files in os.walk(src):
        subfolders.sort()
        folder = Path(folder)
        frames = sorted((folder / name for name in files if Path(name).suffix.lower() in FRAME_SUFFIXES),
                        key=_natural_key)
        if frames and folder != src:
            clips.append(ClipSource(folder.relative_to(src).as_posix(), folder, tuple(frames)))
        for name in sorted(files):
            if Path(name).suffix.lower() in VIDEO_SUFFIXES:
                path = folder / name
                clips.append(ClipSource(path.relative_to(src).with_suffix("").as_posix(), path))
    by_id: dict[str, list[str]] = {}
    for clip in clips:
        by_id.setdefault(clip.clip, []).append(str(clip.path))
    clashes = sorted((clip, paths) for clip, paths in by_id.items() if len(paths) > 1)
    if clashes:
        clip, paths = clashes[0]
        raise ValueError(f"clip {clip!r} has several sources: {', '.join(sorted(paths))}; rename all but one")
    return sorted(clips, key=lambda clip: clip.clip)


@dataclass
class _Frames:
    """Decoded source frames with their geometry and timing."""

    iterator: Iterator[av.VideoFrame]
    width: int
    height: int
    fps: Fraction
    pix_fmt: str
    retimed: bool = False


def _is_variable_rate(path: Path) -> bool:
    """True when the video's presentation timestamps are not evenly spaced (it gets re-timed)."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(packet.pts for packet in container.demux(stream) if packet.size and packet.pts is not None)
    steps = np.diff(pts)
    return bool(steps.size and steps.max() - steps.min() > max(1, 0.01 * np.median(steps)))


def _video_frames(path: Path) -> _Frames:
    import av
    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    fps = stream.average_rate or stream.guessed_rate or Fraction(DEFAULT_FPS)

    def frames() -> Iterator[av.VideoFrame]:
        try:
            yield from container.decode(stream)
        finally:
            container.close()

    context = stream.codec_context
    return _Frames(frames(), context.width, context.height, Fraction(fps), context.pix_fmt or "unknown",
                   _is_variable_rate(path))


def _sequence_frames(clip: ClipSource, fps: Fraction) -> _Frames:
    import av
    with Image.open(clip.frames[0]) as first:
        width, height, mode = first.width, first.height, first.mode

    def frames() -> Iterator[av.VideoFrame]:
        for path in clip.frames:
            with Image.open(path) as image:
                if image.size != (width, height):
                    raise ValueError(f"frame {path.name} is {image.width}x{image.height}, the first frame "
                                     f"{width}x{height}")
                yield av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")

    return _Frames(frames(), width, height, fps, f"image/{mode}")


def open_source(clip: ClipSource, fps: Fraction = Fraction(DEFAULT_FPS)) -> _Frames:
    """Decoded frames of `clip` (a video, or an image sequence played at `fps`)."""
    return _sequence_frames(clip, fps) if clip.frames else _video_frames(clip.path)


def _even(frame: av.VideoFrame, width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    """`frame` as `pix_fmt` cropped to `width` x `height` (at most one pixel off each side's end)."""
    import av
    if frame.width == width and frame.height == height:
        return frame.reformat(format=pix_fmt, threads=SWSCALE_THREADS)
    array = frame.to_ndarray(format="rgb24", threads=SWSCALE_THREADS)[:height, :width]
    converted = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
    return converted if pix_fmt == "rgb24" else converted.reformat(format=pix_fmt, threads=SWSCALE_THREADS)


def _encoder(path: Path, encoder: VideoEncoder, crf: int, width: int, height: int, fps: Fraction, preset: str,
             keyint: int, threads: int) -> tuple[av.container.OutputContainer, av.VideoStream]:
    import av
    container = av.open(str(path), mode="w", format="mp4")
    stream = container.add_stream(encoder.encoder, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / fps
    stream.options = encoder.codec_options(crf, keyint, threads, preset)
    return container, stream


def _rgb_frames(path: Path) -> Iterator[np.ndarray]:
    import av
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24", threads=SWSCALE_THREADS)


def _psnr_per_rung(clip: ClipSource, temporaries: dict[RungKey, Path], width: int, height: int,
                   fps: Fraction) -> dict[RungKey, float]:
    """PSNR of each encoded rung against the source, both as RGB, over the whole clip."""
    squared = dict.fromkeys(temporaries, 0.0)
    count = 0
    decoders = {key: _rgb_frames(path) for key, path in temporaries.items()}
    try:
        for frame in open_source(clip, fps).iterator:
            reference = _even(frame, width, height, "rgb24").to_ndarray().astype(np.int32)
            for (codec, crf), decoder in decoders.items():
                decoded = next(decoder, None)
                if decoded is None:
                    raise ValueError(f"{ENCODERS[codec].title} CRF {crf} rung decodes to fewer frames than the source")
                squared[codec, crf] += float(np.mean((decoded.astype(np.int32) - reference) ** 2))
            count += 1
    finally:
        for decoder in decoders.values():
            decoder.close()
    return {key: float("inf") if total == 0 else float(10 * np.log10(255.0**2 * count / total))
            for key, total in squared.items()}


def _rung_paths(dst: Path, clip: str, crf: int, codec: str = LEGACY_CODEC) -> tuple[Path, Path]:
    stem = dst / clip / ENCODERS[codec].stem(crf)
    return stem.with_suffix(".mp4"), stem.with_suffix(".json")


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def transcode_clip(clip: ClipSource, dst: Path, rungs: Sequence[RungKey], preset: str, keyint: int,
                   fps: Fraction, threads: int = 1) -> tuple[int, int]:
    """Encode the (codec, CRF) `rungs` of `clip` not yet done, all from one pass over the source; returns
    ``(rungs written, frames encoded)``.

    Raises ValueError (no frames, unreadable) or av errors for a source that cannot be read.
    """
    todo = [key for key in rungs if not _rung_paths(dst, clip.clip, key[1], key[0])[1].is_file()]
    if not todo:
        return 0, 0
    from av.video.frame import PictureType
    folder = dst / clip.clip
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink()
    source = open_source(clip, fps)
    width, height = source.width & ~1, source.height & ~1
    if width < 2 or height < 2:
        raise ValueError(f"frames are {source.width}x{source.height}, too small to encode")
    temporaries = {(codec, crf): folder / f".{ENCODERS[codec].stem(crf)}.mp4.tmp-{os.getpid()}"
                   for codec, crf in todo}
    encoders = {(codec, crf): _encoder(path, ENCODERS[codec], crf, width, height, source.fps, preset, keyint, threads)
                for (codec, crf), path in temporaries.items()}
    frames = 0
    try:
        for frames, frame in enumerate(source.iterator, start=1):
            frame = _even(frame, width, height, "yuv420p")
            frame.pts, frame.time_base = frames - 1, 1 / source.fps
            # The rungs' GOPs are their own: a decoded frame's picture type would force it on the encoder (and a
            # source B type crashes libx265).
            frame.pict_type = PictureType.NONE
            for container, stream in encoders.values():
                container.mux(stream.encode(frame))
        for container, stream in encoders.values():
            container.mux(stream.encode(None))
    finally:
        for container, _ in encoders.values():
            container.close()
    try:
        if frames == 0:
            raise ValueError("the source holds no video frames")
        psnr = _psnr_per_rung(clip, temporaries, width, height, source.fps)
        for (codec, crf), temporary in temporaries.items():
            video, row = _rung_paths(dst, clip.clip, crf, codec)
            size = temporary.stat().st_size
            os.replace(temporary, video)
            rung = Rung(clip.clip, crf, video.relative_to(dst).as_posix(), frames, float(source.fps), width, height,
                        str(clip.path), source.width, source.height, source.pix_fmt, source.retimed, size,
                        8.0 * size / (frames * width * height), psnr[codec, crf], codec)
            _write_atomic(row, json.dumps(asdict(rung)))
        if clip.frames:
            _write_atomic(folder / FRAME_LIST, "".join(f"{path.name}\n" for path in clip.frames))
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
    return len(todo), frames * len(todo)


def _transcode_job(clip: ClipSource, dst: Path, rungs: Sequence[RungKey], preset: str, keyint: int, fps: Fraction,
                   threads: int) -> tuple[int, int, str | None]:
    try:
        written, frames = transcode_clip(clip, dst, rungs, preset, keyint, fps, threads)
    except Exception as error:  # a broken file can make the demuxer or decoder raise anything
        return 0, 0, f"{type(error).__name__}: {error}"
    return written, frames, None


def check_crfs(crfs: Sequence[int], codec: str = LEGACY_CODEC) -> list[int]:
    """Sorted unique CRFs on `codec`'s scale (H.264 / HEVC 0..51, AV1 0..63); a ValueError names the codec,
    the first bad CRF and the range."""
    return video_encoder(codec).check_crfs(crfs)


def ladder_plan(codecs: str | Sequence[str] = (LEGACY_CODEC,),
                crfs: Sequence[int] | None = None) -> dict[str, list[int]]:
    """CRFs per codec: `crfs` for each of `codecs` (None: each codec's default ladder), checked on each scale.

    Every codec's encoder and decoder must be in this PyAV: a missing one stops here, before any work, with the
    install hint.
    """
    plan = {name: check_crfs(list(ENCODERS[name].default_ladder) if crfs is None else crfs, name)
            for name in parse_codecs(codecs)}
    for name in plan:
        problem = ENCODERS[name].missing()
        if problem:
            raise ValueError(f"cannot transcode {ENCODERS[name].title}: {problem}")
    return plan


def _settings(src: Path, dst: Path, plan: dict[str, list[int]], preset: str, keyint: int, fps: Fraction) -> dict:
    """ladder.json: the settings and the command(s) rebuilding the ladder (one per distinct CRF list)."""
    by_crfs: dict[tuple[int, ...], list[str]] = {}
    for codec, crfs in plan.items():
        by_crfs.setdefault(tuple(crfs), []).append(codec)
    commands = [shlex.join(["codecloop", "transcode", "--src", str(src), "--dst", str(dst), "--codecs",
                            ",".join(codecs), "--crfs", ",".join(map(str, crfs)), "--preset", preset, "--keyint",
                            str(keyint), "--fps", str(fps)]) for crfs, codecs in by_crfs.items()]
    return {"src": str(src), "codecs": plan, "preset": preset, "keyint": keyint, "fps": str(fps),
            "command": " && ".join(commands)}


def _settings_plan(settings: dict) -> dict[str, list[int]]:
    """CRFs per codec of a ladder.json (one written before other codecs: ``crfs``, all H.264)."""
    plan = settings.get("codecs", {LEGACY_CODEC: settings.get("crfs", [])})
    return {codec: list(crfs) for codec, crfs in plan.items()}


def _alive(pid: int) -> bool:
    """Whether process `pid` runs (exists and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _exit_with(transcode_pid: int) -> None:
    """Pool worker initializer: when `transcode`'s process is killed, its workers exit too. Nothing else
    would end them: a worker waits for jobs forever, its parent is the fork server, not `transcode`'s
    process, and it holds the fork server's liveness pipe, so the fork server waits for it in turn.
    A rung in flight is lost whole: files are renamed into place only when complete."""
    def watch() -> None:
        while _alive(transcode_pid):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-transcode", daemon=True).start()


def _worker_context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fork server that has imported this module and done nothing else. A plain
    fork would copy the caller's PyAV state: with PyAV 19, a process that has converted one frame
    (``reformat``) forks workers whose first conversion hangs for good."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def transcode(src: Path, dst: Path, crfs: Sequence[int] | None = None, preset: str = "veryfast",
              keyint: int = 15, fps: float | str = DEFAULT_FPS, workers: int | None = None,
              progress: bool = True, codecs: str | Sequence[str] = (LEGACY_CODEC,)) -> TranscodeReport:
    """Build (or complete) the CRF ladder of every clip under `src` in `dst` for each of `codecs` (``h264``,
    ``hevc``, ``av1``) at `crfs` (None: each codec's default ladder); writes the manifest.

    CRFs are checked on each codec's scale and each codec's encoder in PyAV before any work. Clips that cannot be
    read are skipped and listed in the report; rungs already done are kept. A ladder built with another preset,
    keyint or fps is refused (its rungs would not be comparable). Workers start from a fork server, so a script
    calling this needs the usual ``if __name__ == "__main__":`` guard around its main code.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    plan = ladder_plan(codecs, crfs)
    if not 1 <= keyint <= 15:
        raise ValueError(f"keyint {keyint} must be in 1..15 (NVDEC seeks to a keyframe at most 15 frames back)")
    fps = Fraction(str(fps)).limit_denominator(1001)
    if fps <= 0:
        raise ValueError(f"fps {fps} must be positive")
    if dst.is_relative_to(src):
        raise ValueError(f"ladder folder {dst} lies inside source {src}; choose a folder outside it")
    clips = find_clips(src)
    if not clips:
        raise ValueError(f"{src} holds no video file ({', '.join(sorted(VIDEO_SUFFIXES))}) and no folder of frames")
    settings = _settings(src, dst, plan, preset, keyint, fps)
    if (dst / SETTINGS).is_file():
        found = json.loads((dst / SETTINGS).read_text())
        for key in ("preset", "keyint", "fps"):
            if str(found[key]) != str(settings[key]):
                raise ValueError(f"ladder {dst} was built with {key}={found[key]}, not {settings[key]}; "
                                 "use another --dst")
        merged = _settings_plan(found)
        for codec, codec_crfs in plan.items():
            merged[codec] = sorted(set(merged.get(codec, [])) | set(codec_crfs))
        settings = _settings(src, dst, {codec: merged[codec] for codec in ENCODERS if codec in merged}, preset,
                             keyint, fps)
    dst.mkdir(parents=True, exist_ok=True)
    _write_atomic(dst / SETTINGS, json.dumps(settings, indent=1))
    workers = max(1, workers or min(len(clips), os.cpu_count() or 1))
    threads = 1 if workers > 1 else 0
    report = TranscodeReport(dst, clips=len(clips))
    rungs = [(codec, crf) for codec, codec_crfs in plan.items() for crf in codec_crfs]
    report.skipped_existing = sum(_rung_paths(dst, c.clip, crf, codec)[1].is_file()
                                  for c in clips for codec, crf in rungs)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(), initializer=_exit_with,
                               initargs=(os.getpid(),))
    with pool, tqdm(total=len(clips), unit="clip", desc="transcode", disable=not progress) as bar:
        jobs = {pool.submit(_transcode_job, clip, dst, rungs, preset, keyint, fps, threads): clip for clip in clips}
        for job in as_completed(jobs):
            written, frames, error = job.result()
            report.written += written
            report.encoded_frames += frames
            if error:
                report.failed[jobs[job].clip] = (str(jobs[job].path), error)
            bar.update()
    write_manifest(dst, report.failed)
    return report


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def write_manifest(dst: Path, failed: dict[str, tuple[str, str]]) -> list[Rung]:
    """Collect every finished rung's ``.json`` under `dst` into ``manifest.csv``, and `failed` clips
    (clip -> source, reason) that have no rung into ``failed.csv``."""
    rungs = sorted((Rung.from_row(json.loads(path.read_text())) for path in Path(dst).rglob("*crf[0-9]*.json")),
                   key=lambda rung: (rung.clip, _codec_order(rung.codec), rung.crf))
    _write_csv(Path(dst) / MANIFEST, MANIFEST_COLUMNS, (asdict(rung) for rung in rungs))
    done = {rung.clip for rung in rungs}
    _write_csv(Path(dst) / FAILED, ("clip", "source", "reason"),
               ({"clip": clip, "source": source, "reason": reason}
                for clip, (source, reason) in sorted(failed.items()) if clip not in done))
    return rungs


def _codec_order(codec: str) -> tuple[int, str]:
    """Ladder codecs in `ENCODERS` order (h264, hevc, av1), any other name after them."""
    names = list(ENCODERS)
    return (names.index(codec), "") if codec in names else (len(names), codec)


@dataclass(frozen=True)
class Ladder:
    """A transcoded ladder: its settings and its rungs by clip, codec and CRF (``rungs[clip][codec][crf]``)."""

    root: Path
    settings: dict
    rungs: dict[str, dict[str, dict[int, Rung]]]
    failed: dict[str, str] = field(default_factory=dict)

    def codecs(self) -> list[str]:
        """The codecs every clip has at least one rung of, in `ENCODERS` order."""
        per_clip = [set(by_codec) for by_codec in self.rungs.values()]
        return sorted(set.intersection(*per_clip), key=_codec_order) if per_clip else []

    def crfs(self, codec: str = LEGACY_CODEC) -> list[int]:
        """The CRFs every clip has a `codec` rung for."""
        per_clip = [set(by_codec.get(codec, {})) for by_codec in self.rungs.values()]
        return sorted(set.intersection(*per_clip)) if per_clip else []

    def rung(self, clip: str, crf: int, codec: str = LEGACY_CODEC) -> Rung:
        """The manifest row of `clip` encoded by `codec` at `crf`; a KeyError names what the ladder lacks."""
        found = self.rungs.get(clip, {}).get(codec, {}).get(crf)
        if found is None:
            raise KeyError(f"ladder {self.root} has no {codec} rung at CRF {crf} for clip {clip!r}")
        return found

    def path(self, clip: str, crf: int, codec: str = LEGACY_CODEC) -> Path:
        """The rung file of `clip` encoded by `codec` at `crf`."""
        return self.root / self.rung(clip, crf, codec).path

    def all_rungs(self) -> Iterator[Rung]:
        """Every rung, by clip, codec and CRF."""
        for by_codec in self.rungs.values():
            for by_crf in by_codec.values():
                yield from by_crf.values()

    def check_source(self, root: Path | str) -> None:
        """Raise ValueError unless this ladder was transcoded from the folder `root`."""
        source = self.settings.get("src")
        if source and Path(source).resolve() != Path(root).resolve():
            raise ValueError(f"ladder {self.root} was transcoded from {source}, not from the dataset {root}; "
                             f"build one from it with: codecloop transcode --src {root} --dst NEW_LADDER")

    def frame_index(self) -> dict[str, tuple[str, int]]:
        """``<clip>/<frame file>`` -> ``(clip, frame)`` for every frame of the image-sequence clips."""
        return {f"{clip}/{name}": (clip, number) for clip in self.rungs
                for number, name in enumerate(self.frame_files(clip))}

    def frame_files(self, clip: str) -> list[str]:
        """Source frame file names of an image-sequence clip, in encoding order ([] for a video)."""
        listing = self.root / clip / FRAME_LIST
        return listing.read_text().splitlines() if listing.is_file() else []


def load_ladder(root: Path | str) -> Ladder:
    """Read ``manifest.csv`` under `root` and check that every rung file is there and whole.

    Missing or resized rung files stop with an error naming them and the command that rebuilds them.
    """
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise FileNotFoundError(f"{root} holds no {MANIFEST}: build the ladder with `codecloop transcode "
                                f"--src VIDEOS --dst {root}`")
    settings = json.loads((root / SETTINGS).read_text()) if (root / SETTINGS).is_file() else {}
    rungs: dict[str, dict[str, dict[int, Rung]]] = {}
    with (root / MANIFEST).open(newline="") as handle:
        for row in csv.DictReader(handle):
            rung = Rung.from_row(row)
            rungs.setdefault(rung.clip, {}).setdefault(rung.codec, {})[rung.crf] = rung
    broken = [rung.path for by_codec in rungs.values() for by_crf in by_codec.values() for rung in by_crf.values()
              if not (root / rung.path).is_file() or (root / rung.path).stat().st_size != rung.bytes]
    if broken:
        rebuild = settings.get("command", f"codecloop transcode --src VIDEOS --dst {root}")
        raise FileNotFoundError(
            f"ladder {root}: {len(broken)} rung file(s) listed in {MANIFEST} are missing or changed: "
            f"{', '.join(broken[:5])}{' ...' if len(broken) > 5 else ''}; delete their .json files and rebuild "
            f"them with: {rebuild}")
    if not rungs:
        raise ValueError(f"ladder {root}: {MANIFEST} lists no rung")
    failed = {}
    if (root / FAILED).is_file():
        with (root / FAILED).open(newline="") as handle:
            failed = {row["clip"]: f"{row['source']}: {row['reason']}" for row in csv.DictReader(handle)}
    return Ladder(root, settings, rungs, failed)
