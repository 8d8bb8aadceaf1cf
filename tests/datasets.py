"""Datasets the tests write in real on-disk formats, from photos shipped with scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

CLASS_PHOTOS = {"astronaut": skdata.astronaut, "chelsea": skdata.chelsea, "coffee": skdata.coffee}


def write_image_folder(root: Path, per_class: dict[str, int], size: int = 64, seed: int = 0) -> Path:
    """An ImageFolder dataset of real JPEG files: random crops of one photo per class.

    `per_class` maps split name to images per class, e.g. ``{"train": 6, "val": 3}``.
    """
    rng = np.random.default_rng(seed)
    for class_name, load in CLASS_PHOTOS.items():
        photo = load()
        height, width = photo.shape[:2]
        for split, count in per_class.items():
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                side = int(rng.integers(min(height, width) // 3, min(height, width)))
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                crop = Image.fromarray(photo[top:top + side, left:left + side]).resize(
                    (size + int(rng.integers(0, 16)), size), Image.BILINEAR)
                crop.save(folder / f"{class_name}_{index:03d}.jpg", quality=95)
    return root


def write_sequence_folder(root: Path, frames: dict[str, int], size: tuple[int, int] = (72, 48)) -> Path:
    """An ImageFolder whose class folders are frame sequences (PNG): a pan across one photo per class."""
    width, height = size
    for class_name, load in CLASS_PHOTOS.items():
        photo = load()
        for split, count in frames.items():
            folder = root / split / class_name
            folder.mkdir(parents=True, exist_ok=True)
            top = 20 if split == "train" else 120
            for index in range(count):
                crop = photo[top + index:top + index + height, 10 + 3 * index:10 + 3 * index + width]
                Image.fromarray(crop).save(folder / f"frame{index}.png")
    return root
