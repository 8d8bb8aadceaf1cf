"""Synthetic depth datasets in the native layouts of KITTI (2017 depth prediction benchmark) and NYU Depth v2.

Each frame is `codecloop.synthetic.datasets._depth_scene` (a ground plane, boxes and sky, textured so JPEG hurts it),
drawn from its own random stream (seed, split, drive, frame, camera): deterministic in the seed.

kitti (``make-synthetic --task depth --format kitti``), as the archives unpack, plus the raw data inside:

- ``{train,val}/<drive>_sync/proj_depth/groundtruth/image_0{2,3}/<frame>.png``: 16-bit, metres x 256, 0 = no
  measurement; sparse like projected LiDAR (every third row, 70% of its points, nothing in the sky or at
  the scene's 80 m far limit). As in KITTI, the first and last 5 frames of each drive have no depth map.
- ``raw/<date>/<drive>_sync/image_0{2,3}/data/<frame>.png``: every frame of each drive (``--raw`` defaults to
  ``DATA/raw``, so no ``--raw`` is needed for this folder).
- ``splits/eigen_zhou/{train,val}_files.txt`` (``<date>/<drive>_sync 12 l``, shuffled, one unannotated
  frame per train drive) and ``splits/eigen/test_files.txt`` (frames zero-padded to 10 digits, left camera,
  frame 0 of each val drive unannotated), as monodepth2's split files.
- ``depth_selection/val_selection_cropped/{image,groundtruth_depth}/``: the val frames cropped (bottom rows,
  centre columns) and named ``<drive>_sync_image_<frame>_image_02.png`` /
  ``<drive>_sync_groundtruth_depth_<frame>_image_02.png``.

Frame names are 10-digit zero-padded (``0000000005.png``). ``train`` / ``val`` counts are depth maps.

nyu (``--format nyu``), mmsegmentation's layout: ``images/{train,test}/<scene>_<00001>.jpg`` (JPEG, quality
95) and ``annotations/{train,test}/<scene>_<00001>.png`` (16-bit millimetres, indoor depths of 0.5-5.5 m, 2%
holes = 0); the "val" count goes to ``test``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from codecloop.synthetic.datasets import DEPTH_SCALE, MAX_DEPTH_M, _SPLIT_STREAM, _depth_scene, _save_png

KITTI_DRIVES = {"train": ("2011_09_26_drive_0001_sync", "2011_09_29_drive_0004_sync"),
                "val": ("2011_09_26_drive_0002_sync",)}
KITTI_CAMERAS = (("image_02", "l"), ("image_03", "r"))
UNANNOTATED_FRAMES = 5
LIDAR_ROW_STEP, LIDAR_KEEP = 3, 0.7
NYU_SCENES = ("bathroom", "bedroom", "kitchen", "living_room", "office")
NYU_FOLDERS = {"train": "train", "val": "test"}
NYU_MM_PER_M = 1000.0
NYU_HOLES = 0.02
JPEG_QUALITY = 95

Frame = tuple[str, int, int]  # (drive, frame number, camera index)


def _stream(seed: int, split: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_STREAM[split], *keys])


def kitti_frames(count: int, drives: tuple[str, ...]) -> list[Frame]:
    """`count` annotated (drive, frame, camera) samples spread over `drives`: both cameras of a frame in turn,
    frames from 5 on (KITTI leaves the first 5 of a drive unannotated)."""
    per_drive = -(-count // len(drives))
    per_drive += per_drive % 2
    return [(drives[i // per_drive], UNANNOTATED_FRAMES + (i % per_drive) // 2, (i % per_drive) % 2)
            for i in range(count)]


def _sparse(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Depth (uint16) kept only on every third row at 70% of its points, and not where the scene clamps the
    far ground to its 80 m limit (no LiDAR return): most pixels 0, as projected LiDAR."""
    rows = (np.arange(depth.shape[0]) % LIDAR_ROW_STEP == 0)[:, None]
    measured = rows & (rng.random(depth.shape) < LIDAR_KEEP) & (depth < MAX_DEPTH_M * DEPTH_SCALE)
    return np.where(measured, depth, 0).astype(np.uint16)


def _crop(array: np.ndarray) -> np.ndarray:
    """The bottom rows and centre columns, as KITTI crops its selection (375x1242 -> 352x1216)."""
    height, width = array.shape[:2]
    cut_rows, cut_cols = max(1, height // 16), max(2, width // 48)
    return array[cut_rows:, cut_cols // 2: width - (cut_cols - cut_cols // 2)]


def _split_line(drive: str, frame: int, camera: int, padded: bool) -> str:
    number = f"{frame:010d}" if padded else str(frame)
    return f"{drive[:10]}/{drive} {number} {KITTI_CAMERAS[camera][1]}"


def _write_kitti_split(root: Path, split: str, frames: list[Frame], height: int, width: int, seed: int) -> None:
    """The annotated depth maps of `frames` and every raw frame of their drives, both cameras."""
    annotated = set(frames)
    drives = KITTI_DRIVES[split]
    for drive_number, drive in enumerate(drives):
        last = max((frame for name, frame, _ in frames if name == drive), default=-1)
        for frame in range(last + 1 + UNANNOTATED_FRAMES if last >= 0 else 0):
            for camera, (camera_folder, _) in enumerate(KITTI_CAMERAS):
                rng = _stream(seed, split, drive_number, frame, camera)
                image, depth = _depth_scene(rng, height, width)
                raw = root / "raw" / drive[:10] / drive / camera_folder / "data"
                raw.mkdir(parents=True, exist_ok=True)
                _save_png(image, raw / f"{frame:010d}.png")
                if (drive, frame, camera) in annotated:
                    folder = root / split / drive / "proj_depth" / "groundtruth" / camera_folder
                    folder.mkdir(parents=True, exist_ok=True)
                    _save_png(_sparse(depth, rng), folder / f"{frame:010d}.png")


def _write_kitti_selection(root: Path, frames: list[Frame]) -> None:
    """``depth_selection/val_selection_cropped``: the val frames and depth maps, cropped and renamed."""
    folder = root / "depth_selection" / "val_selection_cropped"
    for sub in ("image", "groundtruth_depth"):
        (folder / sub).mkdir(parents=True)
    for drive, frame, camera in frames:
        camera_folder = KITTI_CAMERAS[camera][0]
        image = np.asarray(Image.open(root / "raw" / drive[:10] / drive / camera_folder / "data" / f"{frame:010d}.png"))
        depth = np.asarray(Image.open(root / "val" / drive / "proj_depth" / "groundtruth" / camera_folder /
                                      f"{frame:010d}.png"))
        _save_png(_crop(image), folder / "image" / f"{drive}_image_{frame:010d}_{camera_folder}.png")
        _save_png(_crop(depth), folder / "groundtruth_depth" /
                  f"{drive}_groundtruth_depth_{frame:010d}_{camera_folder}.png")


def _write_kitti_split_files(root: Path, frames: dict[str, list[Frame]], seed: int) -> None:
    """monodepth2-style Eigen split files over the written frames (see the module docstring)."""
    zhou, eigen = root / "splits" / "eigen_zhou", root / "splits" / "eigen"
    zhou.mkdir(parents=True)
    eigen.mkdir(parents=True)
    used = {drive for _, items in frames.items() for drive, _, _ in items}
    train = frames["train"] + [(drive, 1, 0) for drive in KITTI_DRIVES["train"] if drive in used]
    order = np.random.default_rng([seed, 7]).permutation(len(train))
    (zhou / "train_files.txt").write_text("".join(f"{_split_line(*train[i], False)}\n" for i in order))
    (zhou / "val_files.txt").write_text("".join(f"{_split_line(*item, False)}\n" for item in frames["val"]))
    test = [(drive, 0, 0) for drive in KITTI_DRIVES["val"] if drive in used]
    test += [item for item in frames["val"] if item[2] == 0]
    (eigen / "test_files.txt").write_text("".join(f"{_split_line(*item, True)}\n" for item in test))


def write_kitti(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """KITTI's annotated depth, the raw images it refers to, Eigen split files and the val selection."""
    frames = {split: kitti_frames(count, KITTI_DRIVES[split]) for split, count in splits.items()}
    for split, items in frames.items():
        (root / split).mkdir()
        _write_kitti_split(root, split, items, height, width, seed)
    _write_kitti_selection(root, frames["val"])
    _write_kitti_split_files(root, frames, seed)


def _indoor(depth_png: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An outdoor scene's depth (KITTI PNG values) as a room's, in millimetres: distances shrunk to a third,
    the sky a back wall at 3-5.5 m, 2% holes (0) as a Kinect leaves."""
    metres = depth_png.astype(np.float64) / DEPTH_SCALE
    wall = rng.uniform(3.0, 5.5)
    room = np.where(metres > 0, np.clip(metres / 3.0, 0.5, wall), wall)
    room[rng.random(room.shape) < NYU_HOLES] = 0.0
    return np.round(room * NYU_MM_PER_M).astype(np.uint16)


def write_nyu(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """mmsegmentation's NYU Depth v2 layout: JPEG images and millimetre PNGs named ``<scene>_<00001>``."""
    for split, count in splits.items():
        images, annotations = root / "images" / NYU_FOLDERS[split], root / "annotations" / NYU_FOLDERS[split]
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for index in range(count):
            rng = _stream(seed, split, index)
            image, depth = _depth_scene(rng, height, width)
            name = f"{NYU_SCENES[index % len(NYU_SCENES)]}_{index + 1:05d}"
            Image.fromarray(image).save(images / f"{name}.jpg", quality=JPEG_QUALITY)
            _save_png(_indoor(depth, rng), annotations / f"{name}.png")


WRITERS = {"kitti": write_kitti, "nyu": write_nyu}
