"""Datasets the tests write in real on-disk formats, from photos shipped with scikit-image."""

from __future__ import annotations

import zlib
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


def write_photo_jpeg(path: Path, size: tuple[int, int] = (500, 375), quality: int = 90) -> Path:
    """A real photo (scikit-image's cat) as a baseline JPEG of `size` (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skdata.chelsea()).resize(size, Image.BILINEAR).save(path, "JPEG", quality=quality)
    return path


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """``(marker, start, length)`` of a JPEG's header segments, up to and including the start of scan."""
    segments, position = [], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker, length = data[position + 1], int.from_bytes(data[position + 2:position + 4], "big")
        segments.append((marker, position, length))
        if marker == 0xDA:
            break
        position += 2 + length
    return segments


def damage_jpeg_data(path: Path, flips: int = 24) -> Path:
    """Flip bits of `flips` bytes in the middle of the entropy-coded data (after SOS, before EOI) of a
    JPEG, never making or touching a 0xFF byte: every marker stays intact, the header still parses,
    the file still ends with EOI; libjpeg decodes it with a "Corrupt JPEG data" warning."""
    data = bytearray(path.read_bytes())
    marker, start, length = _jpeg_segments(bytes(data))[-1]
    assert marker == 0xDA, f"{path} has no start-of-scan segment"
    begin, end = start + 2 + length, data.rindex(b"\xff\xd9")
    position, flipped = begin + (end - begin) // 3, 0
    while flipped < flips and position < end:
        if data[position] != 0xFF and data[position - 1] != 0xFF and data[position] ^ 0x5A != 0xFF:
            data[position] ^= 0x5A
            flipped += 1
        position += 3
    path.write_bytes(bytes(data))
    return path


def claim_size(path: Path, width: int, height: int) -> Path:
    """Rewrite the header of a real JPEG (its SOF segment) or PNG (IHDR, CRC recomputed) to claim
    `width` x `height` pixels; the compressed data is left as it is (a decompression bomb's header)."""
    data = bytearray(path.read_bytes())
    if data.startswith(b"\x89PNG"):
        data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
        data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    else:
        sof = [start for marker, start, _ in _jpeg_segments(bytes(data))
               if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)]
        assert sof, f"{path} has no SOF segment"
        data[sof[0] + 5:sof[0] + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path
