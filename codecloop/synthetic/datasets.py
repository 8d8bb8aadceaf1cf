"""Small synthetic datasets in the real on-disk formats of the detection, segmentation, pose and depth tasks.

Why: tests and offline demos need data for these tasks without downloads. Every image is drawn from
shapes of known geometry, so targets are exact, and every surface carries a fine (1-3 px) texture plus
mild noise, so JPEG at low quality visibly destroys it: the codec stage has something to break.
Images are lossless PNG; the only compression is what the training pipeline applies later. Output is
deterministic in (seed, split, index): the val images do not depend on how many train images exist.

Layouts (NAME is "000000.png", "000001.png", ... per split):

- detection: ``train/NAME``, ``val/NAME``, ``annotations/instances_{split}.json`` (COCO; image ids and
  annotation ids start at 1; bbox is the tight box of the drawn pixels, pixel i spans [i, i+1); area
  is the shape's pixel count; shapes never overlap; every 6th image, index % 6 == 5, has no object).
- segmentation: ``images/{split}/NAME`` (RGB), ``masks/{split}/NAME`` (mode "L": 0 background,
  1 rectangle, 2 ellipse, 3 triangle, 255 ignore on the 1-px inner boundary band of each shape),
  ``classes.txt``.
- pose: ``train/NAME``, ``val/NAME``, ``annotations/person_keypoints_{split}.json`` (COCO keypoints;
  a keypoint sits at a pixel centre, x = column + 0.5; one outside the image is [0, 0, 0]).
- depth: ``images/{split}/NAME`` (RGB), ``depth/{split}/NAME`` (16-bit PNG, KITTI: metres * 256,
  0 = invalid sky). Pillow 13 reads it back as mode "I;16", ``np.asarray`` gives uint16.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_TASKS = ("detection", "segmentation", "pose", "depth")
SHAPE_CLASSES = ("rectangle", "ellipse", "triangle")
SEGMENTATION_CLASSES = ("background", *SHAPE_CLASSES)
IGNORE_INDEX = 255
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8),
                 (7, 9), (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))
DEPTH_SCALE = 256.0
MIN_DEPTH_M, MAX_DEPTH_M = 1.0, 80.0

_SPLIT_STREAM = {"train": 0, "val": 1}
_MIN_SIZE = 32
_MIN_SIDE = 14
_NEGATIVE_EVERY = 6
_NOISE_STD = 4.0
_CLASS_PATTERN = {1: "horizontal", 2: "checker", 3: "diagonal"}
_CLASS_HUE = {1: 0.0, 2: 0.33, 3: 0.62}
_KEYPOINT_COLOURS = tuple(colorsys.hsv_to_rgb((7 * k % 17) / 17, 1.0, 1.0) for k in range(17))
_POSE_BOX_PAD = 4.0
_CAMERA_HEIGHT_M = 1.65

SplitWriter = Callable[[Path, dict[str, int], int, int, int], None]


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """One independent stream per (seed, split, image)."""
    return np.random.default_rng([seed, _SPLIT_STREAM[split], index])


def _file_name(index: int) -> str:
    return f"{index:06d}.png"


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32) * 255


def _pattern(kind: str, height: int, width: int, period: int, phase: int) -> np.ndarray:
    """A boolean fine texture: stripes or checkers of `period` pixels."""
    y, x = np.indices((height, width))
    if kind == "checker":
        cell = max(1, period // 2)
        return ((y + phase) // cell + x // cell) % 2 == 0
    coordinate = {"horizontal": y, "vertical": x, "diagonal": x + y}[kind]
    return ((coordinate + phase) % period) * 2 < period


def _texture(kind: str, height: int, width: int, rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """An HxWx3 float image of `colour` alternating with a dark version of it in pattern `kind`."""
    period = int(rng.integers(2, 4))
    pattern = _pattern(kind, height, width, period, int(rng.integers(0, period)))
    return np.where(pattern[..., None], colour, colour * rng.uniform(0.2, 0.4))


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Add mild sensor noise and quantize to uint8."""
    noisy = image + rng.normal(0.0, _NOISE_STD, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    colour = _hsv(rng.uniform(), rng.uniform(0.1, 0.3), rng.uniform(0.5, 0.8))
    return _texture("vertical", height, width, rng, colour)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, compress_level=1)


@dataclass(frozen=True)
class _Shape:
    """One drawn object: its class id (1..3) and the boolean mask of its pixels."""

    category_id: int
    mask: np.ndarray


def _place_box(rng: np.random.Generator, height: int, width: int,
               taken: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    """An inclusive box (x0, y0, x1, y1) inside the image, at least 3 px clear of `taken`."""
    max_side = max(_MIN_SIDE, int(0.45 * min(height, width)))
    for _ in range(30):
        box_w, box_h = (int(side) for side in rng.integers(_MIN_SIDE, max_side + 1, size=2))
        x0, y0 = int(rng.integers(1, width - box_w)), int(rng.integers(1, height - box_h))
        x1, y1 = x0 + box_w - 1, y0 + box_h - 1
        if all(x0 > bx1 + 3 or bx0 > x1 + 3 or y0 > by1 + 3 or by0 > y1 + 3 for bx0, by0, bx1, by1 in taken):
            return x0, y0, x1, y1
    return None


def _shape_mask(category_id: int, box: tuple[int, int, int, int], rng: np.random.Generator,
                height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    if category_id == 1:
        draw.rectangle(box, fill=1)
    elif category_id == 2:
        draw.ellipse(box, fill=1)
    else:
        apex_x, apex_y = int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))
        corners = {0: [(apex_x, y0), (x0, y1), (x1, y1)], 1: [(apex_x, y1), (x0, y0), (x1, y0)],
                   2: [(x0, apex_y), (x1, y0), (x1, y1)], 3: [(x1, apex_y), (x0, y0), (x0, y1)]}
        draw.polygon(corners[int(rng.integers(0, 4))], fill=1)
    return np.asarray(canvas).astype(bool)


def _shape_scene(rng: np.random.Generator, height: int, width: int, count: int) -> tuple[np.ndarray, list[_Shape]]:
    """A textured background with up to `count` non-overlapping textured shapes."""
    image = _background(rng, height, width)
    shapes: list[_Shape] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        box = _place_box(rng, height, width, taken)
        if box is None:
            continue
        taken.append(box)
        category_id = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        mask = _shape_mask(category_id, box, rng, height, width)
        colour = _hsv(_CLASS_HUE[category_id] + rng.uniform(-0.06, 0.06), rng.uniform(0.6, 1.0),
                      rng.uniform(0.75, 1.0))
        image[mask] = _texture(_CLASS_PATTERN[category_id], height, width, rng, colour)[mask]
        shapes.append(_Shape(category_id, mask))
    return _finish(image, rng), shapes


def _tight_box(mask: np.ndarray) -> list[float]:
    """COCO [x, y, w, h] of the mask's pixels, pixel i spanning [i, i + 1)."""
    rows, columns = np.nonzero(mask)
    x0, y0 = int(columns.min()), int(rows.min())
    return [float(x0), float(y0), float(columns.max() + 1 - x0), float(rows.max() + 1 - y0)]


def _detection_scene(rng: np.random.Generator, height: int, width: int, index: int) -> tuple[np.ndarray, list[dict]]:
    """1-3 shapes, none in every 6th image; COCO annotations without ids."""
    objects = 0 if index % _NEGATIVE_EVERY == _NEGATIVE_EVERY - 1 else int(rng.integers(1, 4))
    image, shapes = _shape_scene(rng, height, width, objects)
    return image, [{"category_id": shape.category_id, "bbox": _tight_box(shape.mask), "area": float(shape.mask.sum()),
                    "iscrowd": 0, "segmentation": []} for shape in shapes]


def _write_coco(root: Path, splits: dict[str, int], height: int, width: int, seed: int, *, json_prefix: str,
                categories: list[dict], scene: Callable[..., tuple[np.ndarray, list[dict]]]) -> None:
    """COCO layout: split/NAME images plus annotations/{json_prefix}_{split}.json; ids start at 1."""
    (root / "annotations").mkdir()
    for split, count in splits.items():
        (root / split).mkdir()
        images, annotations = [], []
        for index in range(count):
            image, objects = scene(_rng(seed, split, index), height, width, index)
            _save_png(image, root / split / _file_name(index))
            images.append({"id": index + 1, "file_name": _file_name(index), "width": width, "height": height})
            for annotation in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": index + 1, **annotation})
        payload = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"{json_prefix}_{split}.json").write_text(json.dumps(payload))


def _write_paired(root: Path, splits: dict[str, int], height: int, width: int, seed: int, *, target_folder: str,
                  scene: Callable[..., tuple[np.ndarray, np.ndarray]]) -> None:
    """Dense layout: images/{split}/NAME (RGB) and {target_folder}/{split}/NAME (one target PNG each)."""
    for split, count in splits.items():
        (root / "images" / split).mkdir(parents=True)
        (root / target_folder / split).mkdir(parents=True)
        for index in range(count):
            image, target = scene(_rng(seed, split, index), height, width)
            _save_png(image, root / "images" / split / _file_name(index))
            _save_png(target, root / target_folder / split / _file_name(index))


def _inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask; the image border does not count as outside."""
    padded = np.pad(mask, 1, mode="edge")
    eroded = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~eroded


def _segmentation_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """1-3 shapes and their class-id mask, 255 on each shape's 1-px inner boundary band."""
    image, shapes = _shape_scene(rng, height, width, int(rng.integers(1, 4)))
    labels = np.zeros((height, width), np.uint8)
    for shape in shapes:
        labels[shape.mask] = shape.category_id
    for shape in shapes:
        labels[_inner_boundary(shape.mask)] = IGNORE_INDEX
    return image, labels


def _write_segmentation(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in SEGMENTATION_CLASSES))
    _write_paired(root, splits, height, width, seed, target_folder="masks", scene=_segmentation_scene)


def _stick_figure(rng: np.random.Generator) -> np.ndarray:
    """17x2 keypoints of a random pose in figure-height units, hip centre at the origin, y down.

    Local +x is the person's left; a figure seen from behind (1 in 4) or turned (narrower) scales x.
    """
    def limb(start: np.ndarray, length: float, angle_deg: float, side: float) -> np.ndarray:
        angle = np.radians(angle_deg)
        return start + length * np.array([side * np.sin(angle), np.cos(angle)])

    lean = rng.uniform(-12, 12)
    neck = limb(np.zeros(2), 0.30, 180 + lean, -1.0)
    nose = limb(neck, 0.10, 180 + lean + rng.uniform(-15, 15), -1.0)
    points = {"nose": nose}
    for side, name in ((1.0, "left"), (-1.0, "right")):
        points[f"{name}_eye"] = nose + [side * 0.025, -0.02]
        points[f"{name}_ear"] = nose + [side * 0.05, 0.0]
        shoulder = points[f"{name}_shoulder"] = neck + [side * 0.10, 0.0]
        arm_angle = rng.uniform(-30, 160)
        elbow = points[f"{name}_elbow"] = limb(shoulder, 0.15, arm_angle, side)
        points[f"{name}_wrist"] = limb(elbow, 0.14, arm_angle + rng.choice([-1, 1]) * rng.uniform(0, 130), side)
        hip = points[f"{name}_hip"] = np.array([side * 0.06, 0.0])
        leg_angle = rng.uniform(-15, 40)
        knee = points[f"{name}_knee"] = limb(hip, 0.23, leg_angle, side)
        points[f"{name}_ankle"] = limb(knee, 0.23, leg_angle - rng.uniform(0, 60), side)
    keypoints = np.array([points[name] for name in COCO_KEYPOINTS])
    facing = -1.0 if rng.uniform() < 0.25 else 1.0
    keypoints[:, 0] *= facing * rng.uniform(0.6, 1.0)
    return keypoints


def _pose_scene(rng: np.random.Generator, height: int, width: int, index: int) -> tuple[np.ndarray, list[dict]]:
    """1-2 textured stick figures; annotations in COCO keypoint form (without ids)."""
    image = _background(rng, height, width)
    figures = int(rng.integers(1, 3))
    annotations = []
    for slot in range(figures):
        figure_px = rng.uniform(0.55, 0.85) * height
        centre_x = (slot + 0.5 + rng.uniform(-0.15, 0.15)) * width / figures
        feet_y = rng.uniform(0.85, 1.05) * height
        pixels = np.floor(_stick_figure(rng) * figure_px / 0.92 + [centre_x, feet_y - 0.5 * figure_px]).astype(int)
        points = pixels.tolist()
        limbs = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(limbs)
        for a, b in COCO_SKELETON:
            draw.line([tuple(points[a - 1]), tuple(points[b - 1])], fill=1, width=max(2, round(0.045 * figure_px)))
        mask = np.asarray(limbs).astype(bool)
        colour = _hsv(rng.uniform(), rng.uniform(0.3, 0.7), rng.uniform(0.7, 1.0))
        image[mask] = _texture("diagonal", height, width, rng, colour)[mask]
        joints = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(joints)
        for k, (x, y) in enumerate(points):
            radius = max(2, round(0.03 * figure_px)) - (1 if k < 5 else 0)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=k + 1)
        joint_ids = np.asarray(joints)
        for k, rgb in enumerate(_KEYPOINT_COLOURS):
            image[joint_ids == k + 1] = np.array(rgb) * 255
        visible = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        centres = pixels + 0.5
        flat = []
        for (x, y), seen in zip(centres, visible):
            flat += [float(x), float(y), 2] if seen else [0, 0, 0]
        x0, y0 = np.maximum(centres[visible].min(axis=0) - _POSE_BOX_PAD, 0.0)
        x1, y1 = np.minimum(centres[visible].max(axis=0) + _POSE_BOX_PAD, [width, height])
        annotations.append({"category_id": 1, "keypoints": flat, "num_keypoints": int(visible.sum()),
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                            "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
    return _finish(image, rng), annotations


def _world_checker(world_x: np.ndarray, world_y: np.ndarray, cell_m: float) -> np.ndarray:
    """Fraction of each pixel's 3x3 sub-samples (last two axes) that fall on light checker cells."""
    light = (np.floor(world_x / cell_m) + np.floor(world_y / cell_m)) % 2 == 0
    return light.reshape(*light.shape[:2], -1).mean(axis=-1)


def _depth_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky, a ground plane seen from 1.65 m and 1-3 upright boxes: RGB uint8 and KITTI uint16 depth.

    Textures are world-space checkers averaged over 3x3 sub-pixels: near surfaces show coarse cells,
    far ones fine cells that fade into their mean colour, as a camera would see them.
    """
    focal, centre_x = float(width), width / 2.0
    horizon = int(round(height * rng.uniform(0.3, 0.45)))
    offsets = (np.arange(3) + 0.5) / 3
    sub_y, sub_x = np.broadcast_arrays(np.arange(height)[:, None, None, None] + offsets[:, None],
                                       np.arange(width)[None, :, None, None] + offsets[None, :])
    depth = np.zeros((height, width), np.float32)
    rows = np.arange(height)
    ground_depth = _CAMERA_HEIGHT_M * focal / np.maximum(rows + 0.5 - horizon, 1e-6)
    depth[horizon:] = np.clip(ground_depth[horizon:], MIN_DEPTH_M, MAX_DEPTH_M)[:, None]

    sky_top, sky_bottom = np.array([110, 160, 240], np.float32), np.array([205, 225, 255], np.float32)
    blend = (rows / max(horizon, 1))[:, None, None].clip(0, 1)
    image = (sky_top + blend * (sky_bottom - sky_top)) * np.ones((1, width, 1), np.float32)
    image += np.where(rows % 2 == 0, 12.0, -12.0)[:, None, None]
    ground_colour = _hsv(rng.uniform(0.08, 0.3), rng.uniform(0.3, 0.6), rng.uniform(0.6, 0.9))
    sub_depth = _CAMERA_HEIGHT_M * focal / np.maximum(sub_y[horizon:] - horizon, 1e-3)
    light = _world_checker((sub_x[horizon:] - centre_x) * sub_depth / focal, sub_depth, 0.08)
    image[horizon:] = ground_colour * (0.3 + 0.7 * light[..., None])

    boxes = []
    lowest = min(height - 1, int(np.ceil(horizon + _CAMERA_HEIGHT_M * focal / 40.0 - 0.5)))
    for _ in range(int(rng.integers(1, 4))):
        bottom = int(rng.integers(max(lowest, horizon), height))
        box_depth = float(np.clip(ground_depth[bottom], MIN_DEPTH_M, MAX_DEPTH_M))
        box_h, box_w = (max(6, round(size * focal / box_depth)) for size in rng.uniform(1.0, 3.0, size=2))
        left = int(rng.uniform(0.1, 0.9) * width - box_w / 2)
        boxes.append((box_depth, max(0, bottom - box_h + 1), bottom + 1, max(0, left), min(width, left + box_w)))
    for box_depth, top, bottom, left, right in sorted(boxes, reverse=True):
        colour = _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.6, 1.0))
        scale = box_depth / focal
        light = _world_checker((sub_x[top:bottom, left:right] - centre_x) * scale,
                               (sub_y[top:bottom, left:right] - horizon) * scale, rng.uniform(0.04, 0.08))
        image[top:bottom, left:right] = colour * (0.25 + 0.75 * light[..., None])
        depth[top:bottom, left:right] = box_depth
    return _finish(image, rng), np.round(depth * DEPTH_SCALE).astype(np.uint16)


_WRITERS: dict[str, SplitWriter] = {
    "detection": partial(_write_coco, json_prefix="instances", scene=_detection_scene,
                         categories=[{"id": i + 1, "name": name} for i, name in enumerate(SHAPE_CLASSES)]),
    "segmentation": _write_segmentation,
    "pose": partial(_write_coco, json_prefix="person_keypoints", scene=_pose_scene,
                    categories=[{"id": 1, "name": "person", "supercategory": "person",
                                 "keypoints": list(COCO_KEYPOINTS),
                                 "skeleton": [list(pair) for pair in COCO_SKELETON]}]),
    "depth": partial(_write_paired, target_folder="depth", scene=_depth_scene),
}


def layout_writers() -> dict[tuple[str, str], SplitWriter]:
    """Every ``(task, format)`` make-synthetic writes: the folder / COCO layouts here, the native layouts
    of other datasets from their own modules."""
    from codecloop.synthetic import action as synthetic_action, depth as synthetic_depth
    from codecloop.synthetic import segmentation as synthetic_segmentation

    writers = {(task, "coco" if task in ("detection", "pose") else "folder"): writer
               for task, writer in _WRITERS.items()}
    for task, module in (("segmentation", synthetic_segmentation), ("depth", synthetic_depth),
                         ("action", synthetic_action)):
        writers.update({(task, name): writer for name, writer in module.WRITERS.items()})
    return writers


def make_synthetic(task: str, out: str | Path, *, format: str | None = None, train: int = 24, val: int = 8,
                   height: int = 96, width: int = 128, seed: int = 0) -> Path:
    """Write a synthetic `task` dataset in layout `format` (default: the task's folder or COCO layout)
    into `out` (which must be absent or empty) and return its path.

    Everything is built in a hidden sibling folder and renamed into place at the end, so `out` either
    holds a complete dataset or does not exist; the sibling is removed if anything fails.
    """
    writers = layout_writers()
    formats = [name for kind, name in writers if kind == task]
    if not formats:
        raise ValueError(f"unknown synthetic task {task!r}; choose one of: "
                         f"{', '.join(dict.fromkeys(kind for kind, _ in writers))}")
    format = format or formats[0]
    if (task, format) not in writers:
        raise ValueError(f"make_synthetic: the {task} task has no layout {format!r}; choose one of: "
                         f"{', '.join(formats)}")
    for field, value, least in (("train", train, 0), ("val", val, 0), ("height", height, _MIN_SIZE),
                                ("width", width, _MIN_SIZE), ("seed", seed, 0)):
        if value < least:
            raise ValueError(f"make_synthetic: {field} must be at least {least}, got {value}")
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty folder; refusing to write into it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        writers[task, format](staging, {"train": train, "val": val}, height, width, seed)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
