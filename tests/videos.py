"""Videos the tests write as real files with PyAV: textured moving frames, any codec and pixel format."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from skimage import data as skdata

from codecloop.dali_pipes.ladder import SWSCALE_THREADS


def moving_frames(count: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    """`count` RGB frames panning across a real photo (so compression has texture to lose)."""
    photo = skdata.astronaut()
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, 512 - height - count)), int(rng.integers(0, 512 - width - count))
    return [np.ascontiguousarray(photo[top + i:top + i + height, left + i:left + i + width]) for i in range(count)]


def write_video(path: Path, frames: list[np.ndarray], codec: str = "libx264", pix_fmt: str = "yuv420p",
                fps: int = 25, pts: list[int] | None = None) -> Path:
    """Encode RGB `frames` into `path` (container from the suffix); `pts` in 1/fps units, default 0..n-1."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        stream.codec_context.time_base = Fraction(1, fps)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format=pix_fmt, threads=SWSCALE_THREADS)
            frame.pts, frame.time_base = (pts[index] if pts else index), Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_empty_video(path: Path) -> Path:
    """A container with a video stream and no frame."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    return path


CLASS_PHOTOS = {"astronaut": skdata.astronaut, "chelsea": skdata.chelsea, "coffee": skdata.coffee}


def write_video_dataset(root: Path, per_split: dict[str, int], frames: int = 12, ucf_splits: bool = False) -> Path:
    """Three classes of short real-photo pans as H.264 MP4 files.

    Layout ``root/<split>/<class>/<name>.mp4``, or with `ucf_splits` UCF101's ``root/<class>/<name>.avi``
    (MPEG-4 part 2, as UCF101 ships) plus ``root/splits/{trainlist01,testlist01,classInd}.txt``.
    """
    rng = np.random.default_rng(0)
    lists: dict[str, list[str]] = {split: [] for split in per_split}
    for class_number, (name, load) in enumerate(CLASS_PHOTOS.items(), start=1):
        photo = load()
        for split, count in per_split.items():
            for index in range(count):
                top, left = int(rng.integers(0, photo.shape[0] - 48 - frames)), int(rng.integers(0, 40))
                clip = [np.ascontiguousarray(photo[top + i:top + i + 48, left + 2 * i:left + 2 * i + 64])
                        for i in range(frames)]
                stem = f"v_{name}_g{index:02d}_c{len(lists[split]):02d}"
                if ucf_splits:
                    write_video(root / name / f"{stem}.avi", clip, codec="mpeg4")
                    lists[split].append(f"{name}/{stem}.avi" + (f" {class_number}" if split == "train" else ""))
                else:
                    write_video(root / split / name / f"{stem}.mp4", clip)
    if ucf_splits:
        (root / "splits").mkdir()
        (root / "splits" / "trainlist01.txt").write_text("\n".join(lists["train"]) + "\n")
        (root / "splits" / "testlist01.txt").write_text("\n".join(lists["val"]) + "\n")
        (root / "splits" / "classInd.txt").write_text("".join(f"{i} {n}\n" for i, n in enumerate(CLASS_PHOTOS, 1)))
    return root
