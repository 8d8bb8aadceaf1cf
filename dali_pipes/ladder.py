"""The H.264 CRF ladder: every clip encoded once per CRF with libx264 (PyAV), cached with a manifest.

H100-class GPUs have no NVENC and DALI has no encoder, so H.264 is encoded ahead of training;
training draws a rung per clip and decodes it on the GPU (NVDEC). Rungs are written the way
NVDEC wants them: ``yuv420p`` 8-bit, closed GOPs, a keyframe at least every `keyint` frames,
a constant frame rate. Layout under the ladder folder::

    ladder.json                 settings and the command that rebuilds the ladder
    manifest.csv                one row per clip x CRF (see `MANIFEST_COLUMNS`)
    failed.csv                  clips whose source could not be read, and why
    <clip>/crf23.mp4            one file per rung, <clip> = source path without suffix
    <clip>/crf23.json           that rung's manifest row, written after the file is whole
    <clip>/frames.txt           image sequences only: the source frame files, in order

Every file is written under a hidden temporary name and renamed when whole, and a rung counts
as done only when its ``.json`` exists, so a killed transcode is simply run again: finished
rungs are skipped, unfinished ones redone, and no partial rung is ever listed.

Rung 0 is not x264's lossless mode: lossless H.264 needs the High 4:4:4 Predictive profile,
which NVDEC cannot decode. It is encoded at constant QP 1 instead (High profile), well above
50 dB against the source; the manifest's PSNR column shows how close each rung is.
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

from codecloop.dali_pipes.crf import DEFAULT_LADDER, LOSSLESS_CRF, MAX_CRF, MIN_CRF

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".flv",
                            ".wmv", ".ts", ".3gp", ".ogv"})
FRAME_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"})
SETTINGS, MANIFEST, FAILED, FRAME_LIST = "ladder.json", "manifest.csv", "failed.csv", "frames.txt"
MANIFEST_COLUMNS = ("clip", "crf", "path", "frames", "fps", "width", "height", "source", "source_width",
                    "source_height", "source_pix_fmt", "retimed", "bytes", "bits_per_pixel", "psnr")
DEFAULT_FPS = 25
# Every PyAV frame conversion (swscale) runs on its caller's thread alone (``threads=1``): callers
# already work on many samples at once, and PyAV >= 19 keeps one converter per thread whose own
# slice threads do not survive a fork, so a forked process (a DataLoader or pool worker) that frees
# or reuses an inherited multi-threaded converter hangs for good.
SWSCALE_THREADS = 1


@dataclass(frozen=True)
class ClipSource:
    """One clip to transcode: a video file, or a folder of ordered frames (`frames` set)."""

    clip: str
    path: Path
    frames: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Rung:
    """One manifest row: a clip encoded at one CRF."""

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

    @classmethod
    def from_row(cls, row: dict) -> Rung:
        """A rung from a CSV / JSON row (strings converted)."""
        types = {"crf": int, "frames": int, "fps": float, "width": int, "height": int, "source_width": int,
                 "source_height": int, "bytes": int, "bits_per_pixel": float, "psnr": float}
        values = {key: types.get(key, str)(row[key]) for key in MANIFEST_COLUMNS}
        values["retimed"] = str(row["retimed"]).lower() in ("true", "1")
        return cls(**values)


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


def _encoder(path: Path, crf: int, width: int, height: int, fps: Fraction, preset: str, keyint: int,
             threads: int) -> tuple[av.container.OutputContainer, av.VideoStream]:
    import av
    container = av.open(str(path), mode="w", format="mp4")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = 1 / fps
    rate = "qp=1" if crf == LOSSLESS_CRF else f"crf={crf}"
    stream.options = {"preset": preset, "x264-params": f"{rate}:keyint={keyint}:min-keyint=1:scenecut=0:"
                      f"open-gop=0:threads={threads}"}
    return container, stream


def _rgb_frames(path: Path) -> Iterator[np.ndarray]:
    import av
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24", threads=SWSCALE_THREADS)


def _psnr_per_rung(clip: ClipSource, temporaries: dict[int, Path], width: int, height: int,
                   fps: Fraction) -> dict[int, float]:
    """PSNR of each encoded rung against the source, both as RGB, over the whole clip."""
    squared = dict.fromkeys(temporaries, 0.0)
    count = 0
    decoders = {crf: _rgb_frames(path) for crf, path in temporaries.items()}
    try:
        for frame in open_source(clip, fps).iterator:
            reference = _even(frame, width, height, "rgb24").to_ndarray().astype(np.int32)
            for crf, decoder in decoders.items():
                decoded = next(decoder, None)
                if decoded is None:
                    raise ValueError(f"CRF {crf} rung decodes to fewer frames than the source")
                squared[crf] += float(np.mean((decoded.astype(np.int32) - reference) ** 2))
            count += 1
    finally:
        for decoder in decoders.values():
            decoder.close()
    return {crf: float("inf") if total == 0 else float(10 * np.log10(255.0**2 * count / total))
            for crf, total in squared.items()}


def _rung_paths(dst: Path, clip: str, crf: int) -> tuple[Path, Path]:
    folder = dst / clip
    return folder / f"crf{crf:02d}.mp4", folder / f"crf{crf:02d}.json"


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def transcode_clip(clip: ClipSource, dst: Path, crfs: Sequence[int], preset: str, keyint: int,
                   fps: Fraction, threads: int = 1) -> tuple[int, int]:
    """Encode the rungs of `clip` not yet done; returns ``(rungs written, frames encoded)``.

    Raises ValueError (no frames, unreadable) or av errors for a source that cannot be read.
    """
    todo = [crf for crf in crfs if not _rung_paths(dst, clip.clip, crf)[1].is_file()]
    if not todo:
        return 0, 0
    folder = dst / clip.clip
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.tmp-*"):
        stale.unlink()
    source = open_source(clip, fps)
    width, height = source.width & ~1, source.height & ~1
    if width < 2 or height < 2:
        raise ValueError(f"frames are {source.width}x{source.height}, too small to encode")
    temporaries = {crf: folder / f".crf{crf:02d}.mp4.tmp-{os.getpid()}" for crf in todo}
    encoders = {crf: _encoder(path, crf, width, height, source.fps, preset, keyint, threads)
                for crf, path in temporaries.items()}
    frames = 0
    try:
        for frames, frame in enumerate(source.iterator, start=1):
            frame = _even(frame, width, height, "yuv420p")
            frame.pts, frame.time_base = frames - 1, 1 / source.fps
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
        for crf, temporary in temporaries.items():
            video, row = _rung_paths(dst, clip.clip, crf)
            size = temporary.stat().st_size
            os.replace(temporary, video)
            rung = Rung(clip.clip, crf, video.relative_to(dst).as_posix(), frames, float(source.fps), width, height,
                        str(clip.path), source.width, source.height, source.pix_fmt, source.retimed, size,
                        8.0 * size / (frames * width * height), psnr[crf])
            _write_atomic(row, json.dumps(asdict(rung)))
        if clip.frames:
            _write_atomic(folder / FRAME_LIST, "".join(f"{path.name}\n" for path in clip.frames))
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
    return len(todo), frames * len(todo)


def _transcode_job(clip: ClipSource, dst: Path, crfs: Sequence[int], preset: str, keyint: int, fps: Fraction,
                   threads: int) -> tuple[int, int, str | None]:
    try:
        written, frames = transcode_clip(clip, dst, crfs, preset, keyint, fps, threads)
    except Exception as error:  # a broken file can make the demuxer or decoder raise anything
        return 0, 0, f"{type(error).__name__}: {error}"
    return written, frames, None


def check_crfs(crfs: Sequence[int]) -> list[int]:
    """Sorted unique CRFs, each in 0..51 (ValueError naming the first bad one)."""
    for crf in crfs:
        if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not MIN_CRF <= crf <= MAX_CRF:
            raise ValueError(f"CRF {crf!r} is outside {MIN_CRF}..{MAX_CRF}")
    if not crfs:
        raise ValueError("no CRF given")
    return sorted({int(crf) for crf in crfs})


def _settings(src: Path, dst: Path, crfs: list[int], preset: str, keyint: int, fps: Fraction) -> dict:
    command = ["codecloop", "transcode", "--src", str(src), "--dst", str(dst), "--crfs", ",".join(map(str, crfs)),
               "--preset", preset, "--keyint", str(keyint), "--fps", str(fps)]
    return {"src": str(src), "crfs": crfs, "preset": preset, "keyint": keyint, "fps": str(fps),
            "command": shlex.join(command)}


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


def transcode(src: Path, dst: Path, crfs: Sequence[int] = DEFAULT_LADDER, preset: str = "veryfast",
              keyint: int = 15, fps: float | str = DEFAULT_FPS, workers: int | None = None,
              progress: bool = True) -> TranscodeReport:
    """Build (or complete) the CRF ladder of every clip under `src` in `dst`; writes the manifest.

    Clips that cannot be read are skipped and listed in the report; rungs already done are kept.
    A ladder built with another preset, keyint or fps is refused (its rungs would not be comparable).
    Workers start from a fork server, so a script calling this needs the usual
    ``if __name__ == "__main__":`` guard around its main code.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    crfs = check_crfs(crfs)
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
    settings = _settings(src, dst, crfs, preset, keyint, fps)
    if (dst / SETTINGS).is_file():
        found = json.loads((dst / SETTINGS).read_text())
        for key in ("preset", "keyint", "fps"):
            if str(found[key]) != str(settings[key]):
                raise ValueError(f"ladder {dst} was built with {key}={found[key]}, not {settings[key]}; "
                                 "use another --dst")
        settings = _settings(src, dst, sorted(set(found["crfs"]) | set(crfs)), preset, keyint, fps)
    dst.mkdir(parents=True, exist_ok=True)
    _write_atomic(dst / SETTINGS, json.dumps(settings, indent=1))
    workers = max(1, workers or min(len(clips), os.cpu_count() or 1))
    threads = 1 if workers > 1 else 0
    report = TranscodeReport(dst, clips=len(clips))
    report.skipped_existing = sum(_rung_paths(dst, c.clip, crf)[1].is_file() for c in clips for crf in crfs)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context(), initializer=_exit_with,
                               initargs=(os.getpid(),))
    with pool, tqdm(total=len(clips), unit="clip", desc="transcode", disable=not progress) as bar:
        jobs = {pool.submit(_transcode_job, clip, dst, crfs, preset, keyint, fps, threads): clip for clip in clips}
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
    rungs = sorted((Rung.from_row(json.loads(path.read_text())) for path in Path(dst).rglob("crf*.json")),
                   key=lambda rung: (rung.clip, rung.crf))
    _write_csv(Path(dst) / MANIFEST, MANIFEST_COLUMNS, (asdict(rung) for rung in rungs))
    done = {rung.clip for rung in rungs}
    _write_csv(Path(dst) / FAILED, ("clip", "source", "reason"),
               ({"clip": clip, "source": source, "reason": reason}
                for clip, (source, reason) in sorted(failed.items()) if clip not in done))
    return rungs


@dataclass(frozen=True)
class Ladder:
    """A transcoded ladder: its settings and its rungs by clip and CRF."""

    root: Path
    settings: dict
    rungs: dict[str, dict[int, Rung]]
    failed: dict[str, str] = field(default_factory=dict)

    def crfs(self) -> list[int]:
        """The CRFs every clip has a rung for."""
        per_clip = [set(by_crf) for by_crf in self.rungs.values()]
        return sorted(set.intersection(*per_clip)) if per_clip else []

    def path(self, clip: str, crf: int) -> Path:
        """The rung file of `clip` at `crf`."""
        return self.root / self.rungs[clip][crf].path

    def rung(self, clip: str, crf: int, codec: str = "h264") -> Rung:
        """The manifest row of `clip` encoded by `codec` at `crf`; a KeyError names what the ladder lacks."""
        if codec != "h264" or crf not in self.rungs.get(clip, {}):
            raise KeyError(f"ladder {self.root} has no {codec} rung at CRF {crf} for clip {clip!r}")
        return self.rungs[clip][crf]

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
    rungs: dict[str, dict[int, Rung]] = {}
    with (root / MANIFEST).open(newline="") as handle:
        for row in csv.DictReader(handle):
            rung = Rung.from_row(row)
            rungs.setdefault(rung.clip, {})[rung.crf] = rung
    broken = [rung.path for by_crf in rungs.values() for rung in by_crf.values()
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
