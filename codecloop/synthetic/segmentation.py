"""Synthetic segmentation datasets in the native layouts of Cityscapes, Pascal VOC 2012 and ADE20K.

Why: the segmentation readers must be checked on the exact files those datasets ship (names, folder
depth, PNG modes, label values), without a download. Each image is the textured shape scene of
`codecloop.synthetic.datasets` (1-3 shapes, a 1-px ignore band inside each outline); its labels are rewritten in
the dataset's own ids and the background split into dataset classes by height (tinted to match), so
the label files hold what the real ones hold. Output is deterministic in (seed, split, index).

Layouts under the output folder:

- cityscapes: ``leftImg8bit/{train,val}/<city>/<city>_<seq>_000019_leftImg8bit.png`` (RGB PNG) and
  ``gtFine/{train,val}/<city>/<city>_<seq>_000019_gtFine_labelIds.png`` (mode L, Cityscapes label ids:
  sky 23, building 11, road 7 with a parking patch 9, ego vehicle 1 at the bottom, shapes car 26 /
  person 24 / traffic sign 20, outlines unlabeled 0; ids 0, 1, 9 have train id 255) beside
  ``..._gtFine_color.png`` (RGBA, the table's colours). No ``labelTrainIds``: the download has none.
- voc: ``VOCdevkit/VOC2012/JPEGImages/<year>_<number>.jpg``, ``SegmentationClass/<name>.png`` (mode P
  with VOC's colour map; background 0, car 7, person 15, boat 4, 255 on the outline band) and
  ``ImageSets/Segmentation/{train,val,trainval}.txt``.
- ade20k: ``ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg``,
  ``annotations/.../*.png`` (mode L: wall 1, floor 4, table 16, person 13, chair 20, 0 = other on the
  outline band), ``objectInfo150.txt`` (its columns computed from these images) and
  ``sceneCategories.txt``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from codecloop.tasks.segmentation_layouts import ADE20K_CLASSES, CITYSCAPES_LABELS, IGNORE_INDEX
from codecloop.synthetic.datasets import _rng, _save_png, _segmentation_scene

CITYSCAPES_CITIES = {"train": ("aachen", "bremen"), "val": ("frankfurt", "lindau")}
CITYSCAPES_FRAME = 19  # the annotated frame of each Cityscapes snippet
CITYSCAPES_SHAPES = {1: 26, 2: 24, 3: 20}  # rectangle car, ellipse person, triangle traffic sign
CITYSCAPES_BANDS = ((0.3, 23), (0.55, 11), (0.9, 7), (1.0, 1))  # (lower edge as a height fraction, label id)
CITYSCAPES_PARKING = 9
VOC_SHAPES = {1: 7, 2: 15, 3: 4}  # car, person, boat
VOC_YEAR = 2007
ADE20K_SHAPES = {1: 16, 2: 13, 3: 20}  # table, person, chair
ADE20K_BANDS = ((0.5, 1), (1.0, 4))  # wall, floor
ADE20K_OTHER = 0
JPEG_QUALITY = 90
SCENES = ("street", "indoor")


def voc_palette() -> list[int]:
    """The 256-colour map of VOC's label PNGs (the devkit's bit-interleaved one: 1 is (128, 0, 0), 255 is
    (224, 224, 192)), flat RGB."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


def _banded(labels: np.ndarray, bands: tuple[tuple[float, int], ...], shapes: dict[int, int],
            outline: int) -> np.ndarray:
    """Dataset ids: background by height band, each shape class by `shapes`, the ignore band as `outline`."""
    height = labels.shape[0]
    rows = (np.arange(height) + 0.5) / height
    background = np.select([rows < edge for edge, _ in bands], [label for _, label in bands])[:, None]
    ids = np.where(labels == 0, background, outline).astype(np.uint8)
    for shape, label in shapes.items():
        ids[labels == shape] = label
    return ids


def _tinted(image: np.ndarray, labels: np.ndarray, ids: np.ndarray,
            colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """The scene with its background pixels blended halfway towards their class colour."""
    out = image.astype(np.float32)
    for label, colour in colours.items():
        region = (labels == 0) & (ids == label)
        out[region] = 0.5 * out[region] + 0.5 * np.asarray(colour, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, "JPEG", quality=JPEG_QUALITY)


def cityscapes_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB street-like scene and its Cityscapes label ids."""
    image, labels = _segmentation_scene(rng, height, width)
    ids = _banded(labels, CITYSCAPES_BANDS, CITYSCAPES_SHAPES, outline=0)
    top, left = int(0.6 * height), int(rng.integers(0, width // 2))
    patch = ids[top:int(0.8 * height), left:left + width // 4]
    patch[patch == 7] = CITYSCAPES_PARKING
    colours = {label_id: colour for _, label_id, _, colour in CITYSCAPES_LABELS}
    background = (*(label for _, label in CITYSCAPES_BANDS), CITYSCAPES_PARKING)
    return _tinted(image, labels, ids, {label: colours[label] for label in background}), ids


def write_cityscapes(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """Cityscapes' leftImg8bit / gtFine layout, the samples of each split dealt to its cities in turn."""
    colours = np.zeros((256, 4), np.uint8)
    for _, label_id, _, colour in CITYSCAPES_LABELS:
        colours[label_id] = (*colour, 255)
    for split, count in splits.items():
        for index in range(count):
            cities = CITYSCAPES_CITIES[split]
            city, sequence = cities[index % len(cities)], index // len(cities)
            stem = f"{city}_{sequence:06d}_{CITYSCAPES_FRAME:06d}"
            images, labels = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            image, ids = cityscapes_scene(_rng(seed, split, index), height, width)
            _save_png(image, images / f"{stem}_leftImg8bit.png")
            _save_png(ids, labels / f"{stem}_gtFine_labelIds.png")
            Image.fromarray(colours[ids]).save(labels / f"{stem}_gtFine_color.png", compress_level=1)


def voc_name(split: str, index: int) -> str:
    """``2007_000000``-style names, train and val interleaved (even and odd numbers), as VOC's mix."""
    return f"{VOC_YEAR}_{2 * index + (split == 'val'):06d}"


def write_voc(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """``VOCdevkit/VOC2012`` with JPEG images, palette label PNGs and the segmentation split lists."""
    year = root / "VOCdevkit" / "VOC2012"
    lists = year / "ImageSets" / "Segmentation"
    for folder in (year / "JPEGImages", year / "SegmentationClass", lists):
        folder.mkdir(parents=True)
    palette = voc_palette()
    names: dict[str, list[str]] = {}
    for split, count in splits.items():
        names[split] = [voc_name(split, index) for index in range(count)]
        for index, name in enumerate(names[split]):
            image, labels = _segmentation_scene(_rng(seed, split, index), height, width)
            _save_jpeg(image, year / "JPEGImages" / f"{name}.jpg")
            ids = _banded(labels, ((1.0, 0),), VOC_SHAPES, outline=IGNORE_INDEX)
            label = Image.fromarray(ids)
            label.putpalette(palette)
            label.save(year / "SegmentationClass" / f"{name}.png")
    for split, listed in {**names, "trainval": sorted(names.get("train", []) + names.get("val", []))}.items():
        (lists / f"{split}.txt").write_text("".join(f"{name}\n" for name in listed))


def ade20k_name(split: str, index: int) -> str:
    return f"ADE_{split}_{index + 1:08d}"


def write_ade20k(root: Path, splits: dict[str, int], height: int, width: int, seed: int) -> None:
    """``ADEChallengeData2016`` with JPEG images, L label PNGs, objectInfo150.txt and sceneCategories.txt."""
    data = root / "ADEChallengeData2016"
    pixels = np.zeros(len(ADE20K_CLASSES) + 1)
    images_with = {split: np.zeros(len(ADE20K_CLASSES) + 1, int) for split in ("train", "val")}
    scenes = []
    for split, count in splits.items():
        folder = {"train": "training", "val": "validation"}[split]
        (data / "images" / folder).mkdir(parents=True)
        (data / "annotations" / folder).mkdir(parents=True)
        for index in range(count):
            name = ade20k_name(split, index)
            image, labels = _segmentation_scene(_rng(seed, split, index), height, width)
            ids = _banded(labels, ADE20K_BANDS, ADE20K_SHAPES, outline=ADE20K_OTHER)
            _save_jpeg(image, data / "images" / folder / f"{name}.jpg")
            _save_png(ids, data / "annotations" / folder / f"{name}.png")
            counts = np.bincount(ids.ravel(), minlength=len(pixels))
            pixels += counts
            images_with[split] += counts > 0
            scenes.append(f"{name} {SCENES[index % len(SCENES)]}\n")
    ratio = pixels / max(pixels.sum(), 1)
    rows = [f"{k}\t{ratio[k]:.4f}\t{images_with['train'][k]}\t{images_with['val'][k]}\t{name}\n"
            for k, name in enumerate(ADE20K_CLASSES, start=1)]
    (data / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" + "".join(rows))
    (data / "sceneCategories.txt").write_text("".join(scenes))


WRITERS: dict[str, Callable[[Path, dict[str, int], int, int, int], None]] = {
    "cityscapes": write_cityscapes,
    "voc": write_voc,
    "ade20k": write_ade20k,
}
