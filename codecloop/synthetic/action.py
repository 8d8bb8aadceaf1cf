"""Synthetic action datasets in UCF101's and HMDB51's native layouts: real MPEG-4 AVI files and split files.

Why: the action task must be checked on the folder layouts and split files users have, without a
download. Each class is a square of its own hue moving its own way (right, down, orbiting) over a grey-ish
background, both in fine stripes: a model learns the classes in a few dozen steps (the hint that
make-synthetic prints reaches top-1 1.0), and H.264 has fine texture to lose. Hue and motion survive
even CRF 51, so the data checks layouts and the pipeline, not how much compression costs. Videos are
MPEG-4 part 2 in AVI, as UCF101 ships, encoded by PyAV's wheel; output is deterministic in
(seed, class, split, index). The ``train`` / ``val`` counts are totals, dealt to the classes in turn.

Layouts under the output folder (split 1 is train / val as asked; splits 2 and 3 rotate which videos
are tested, as the official three splits do):

- ucf101: ``UCF-101/<Class>/v_<Class>_gGG_c01.avi`` and ``ucfTrainTestlist/`` with ``classInd.txt``
  (``1 Class``), ``trainlist0N.txt`` (``Class/v_..avi 1``) and ``testlist0N.txt`` (``Class/v_..avi``),
  CRLF line ends as in the official zip. HandstandPushups keeps UCF101's file-name spelling
  ``v_HandStandPushups_...``.
- hmdb51: ``videos/<class>/<name>_<class>_f_nm_np1_fr_med_<k>.avi`` and ``testTrainMulti_7030_splits/``
  with ``<class>_test_split{1,2,3}.txt`` (``<video>.avi <id>``: 1 train, 2 test, 0 unused; each class
  has one unused video).
"""

from __future__ import annotations

import colorsys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 25
FRAMES = 32
SPLITS = (1, 2, 3)
UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "HandstandPushups")
UCF_FILE_NAMES = {"HandstandPushups": "HandStandPushups"}  # UCF101's own spelling in its file names
HMDB_CLASSES = ("brush_hair", "cartwheel", "climb_stairs")
LAYOUTS = {"ucf101": ("UCF-101", "ucfTrainTestlist"), "hmdb51": ("videos", "testTrainMulti_7030_splits")}
CLASS_HUES = (0.0, 0.33, 0.62)
_SPLIT_STREAM = {"train": 0, "val": 1, "unused": 2}


def _texture(rng: np.random.Generator, height: int, width: int, colour: np.ndarray) -> np.ndarray:
    """An HxWx3 float image: `colour` in fine random stripes (period 2-4 px) with a smooth shading."""
    y, x = np.indices((height, width))
    period = int(rng.integers(2, 5))
    stripes = ((x * rng.integers(0, 2) + y + int(rng.integers(0, period))) % period) * 2 < period
    shade = 0.75 + 0.25 * np.sin(x / width * np.pi * rng.uniform(1, 3) + rng.uniform(0, np.pi))
    return np.where(stripes[..., None], colour, colour * 0.35) * shade[..., None]


def _frames(label: int, rng: np.random.Generator, height: int, width: int) -> list[np.ndarray]:
    """`FRAMES` RGB uint8 frames of a finely striped square over a striped grey-ish background; class
    `label` sets the square's hue and how it moves (0 right, 1 down, 2 orbit)."""
    background = _texture(rng, height, width, rng.uniform(90, 170) * rng.uniform(0.85, 1.0, 3))
    side = max(6, min(height, width) // 3)
    hue = CLASS_HUES[label % len(CLASS_HUES)] + rng.uniform(-0.05, 0.05)
    square = _texture(rng, side, side, np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.8, 1.0)) * rng.uniform(200, 255))
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    speed, phase = rng.uniform(0.6, 1.2), rng.uniform(0, 2 * np.pi)
    frames = []
    for t in range(FRAMES):
        if label == 0:
            x, y = (x0 + speed * t * width / FRAMES) % (width - side), y0
        elif label == 1:
            x, y = x0, (y0 + speed * t * height / FRAMES) % (height - side)
        else:
            angle = phase + 2 * np.pi * speed * t / FRAMES
            x = (width - side) / 2 * (1 + 0.8 * np.cos(angle))
            y = (height - side) / 2 * (1 + 0.8 * np.sin(angle))
        image = background.copy()
        image[int(y):int(y) + side, int(x):int(x) + side] = square
        noisy = image + rng.normal(0.0, 3.0, image.shape)
        frames.append(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    return frames


def write_avi(path: Path, frames: list[np.ndarray]) -> None:
    """Encode RGB `frames` as MPEG-4 part 2 (yuv420p, one thread: byte-identical on every run) into an AVI."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 2 * width * height * FPS
        stream.codec_context.thread_count = 1
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _per_class(count: int, classes: int) -> list[int]:
    """`count` videos dealt to `classes` classes in turn."""
    return [len(range(label, count, classes)) for label in range(classes)]


def _tested(position: int, train: int, val: int, split: int) -> bool:
    """Whether the video at `position` of its class (val videos first, then train) is tested in `split`."""
    total = train + val
    return total > 0 and (position - (split - 1) * val) % total < val


def _class_videos(root: Path, classes: tuple[str, ...], splits: dict[str, int], height: int, width: int, seed: int,
                  name: Callable[[str, int], str], unused: bool) -> list[list[str]]:
    """Write every class's videos (its val ones first, then train, then one unused if `unused`) as
    ``root/<class>/name(class, position)`` and return their file names per class."""
    per_split = {split: _per_class(splits.get(split, 0), len(classes)) for split in ("val", "train")}
    names = []
    for label, class_name in enumerate(classes):
        roles = [("val", i) for i in range(per_split["val"][label])]
        roles += [("train", i) for i in range(per_split["train"][label])]
        roles += [("unused", 0)] if unused else []
        files = []
        for position, (role, index) in enumerate(roles):
            file_name = name(class_name, position)
            rng = np.random.default_rng([seed, label, _SPLIT_STREAM[role], index])
            write_avi(root / class_name / file_name, _frames(label, rng, height, width))
            files.append(file_name)
        names.append(files)
    return names


def _write_ucf101(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """UCF101: ``UCF-101/<Class>/*.avi`` and ``ucfTrainTestlist/{classInd,trainlist0N,testlist0N}.txt``."""
    videos, lists = (root / folder for folder in LAYOUTS["ucf101"])

    def name(label: str, position: int) -> str:
        return f"v_{UCF_FILE_NAMES.get(label, label)}_g{position + 1:02d}_c01.avi"

    names = _class_videos(videos, UCF_CLASSES, splits, height, width, seed, name, unused=False)
    lists.mkdir()
    (lists / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, 1)).encode())
    val_counts = _per_class(splits.get("val", 0), len(UCF_CLASSES))
    for split in SPLITS:
        train_lines, test_lines = [], []
        for label, (class_name, files) in enumerate(zip(UCF_CLASSES, names)):
            val = val_counts[label]
            for position, file_name in enumerate(files):
                if _tested(position, len(files) - val, val, split):
                    test_lines.append(f"{class_name}/{file_name}\r\n")
                else:
                    train_lines.append(f"{class_name}/{file_name} {label + 1}\r\n")
        (lists / f"trainlist{split:02d}.txt").write_bytes("".join(train_lines).encode())
        (lists / f"testlist{split:02d}.txt").write_bytes("".join(test_lines).encode())


def _write_hmdb51(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """HMDB51: ``videos/<class>/*.avi`` and ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``."""
    videos, lists = (root / folder for folder in LAYOUTS["hmdb51"])

    def name(label: str, position: int) -> str:
        return f"synthetic{position:02d}_{label}_f_nm_np1_fr_med_0.avi"

    names = _class_videos(videos, HMDB_CLASSES, splits, height, width, seed, name, unused=True)
    lists.mkdir()
    val_counts = _per_class(splits.get("val", 0), len(HMDB_CLASSES))
    for split in SPLITS:
        for label, (class_name, files) in enumerate(zip(HMDB_CLASSES, names)):
            val, used = val_counts[label], len(files) - 1
            ids = [2 if _tested(position, used - val, val, split) else 1 for position in range(used)] + [0]
            lines = "".join(f"{file_name} {tag}\n" for file_name, tag in zip(files, ids))
            (lists / f"{class_name}_test_split{split}.txt").write_text(lines)


def run_hint(out: Path, layout: str | None) -> str:
    """The commands that build the ladder of a dataset written here and run the experiment on it; clips
    smaller than the task's defaults, so that it finishes in minutes on a laptop CPU too."""
    layout = layout or next(iter(WRITERS))
    videos, lists = (Path(out) / folder for folder in LAYOUTS[layout])
    ladder = Path(out) / "ladder"
    return (f"codecloop transcode --src {videos} --dst {ladder} && codecloop experiment --task action --codec h264 "
            f"--format {layout} --data {videos} --splits {lists} --ladder {ladder} --frames 8 --crop_size 64 "
            f"--resize_size 80 --batch_size 8 --epochs 10 --max_steps 30")


WRITERS = {"ucf101": _write_ucf101, "hmdb51": _write_hmdb51}
