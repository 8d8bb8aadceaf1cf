"""COCO JSON reading shared by detection and pose: files per split, images checked, boxes cleaned.

A split's annotation file is ``DATA/annotations/<kind>_<split>*.json`` (``instances_val2017.json``
for split ``val``) and its images live in ``DATA/<name after the kind>/`` (``DATA/val2017/``),
``file_name`` relative to that folder: the layout COCO ships.

Image ids must be unique. Every image file passes the scan (`checked_images`): a bad one leaves the
split with its annotations. The size used for an image is its file's stored size (the header's,
before any EXIF rotation: which size rules is left to the EXIF decision of issue 13); a JSON width /
height that differs is warned about once per split, naming the file's EXIF orientation if it has one.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codecloop.dali_pipes.validate import ScanPolicy, scan_images

EXIF_ORIENTATION = 0x0112


@dataclass
class CocoSplit:
    """One split's images (id -> path, width, height), annotations by image id and categories."""

    json_path: Path
    images: dict[int, tuple[str, int, int]]
    annotations: dict[int, list[dict]]
    categories: list[dict]
    counts: dict[str, int] = field(default_factory=dict)


def annotation_file(root: Path, kind: str, split: str) -> tuple[Path, Path]:
    """``(json, image folder)`` of `split`; errors name what is missing."""
    candidates = sorted((root / "annotations").glob(f"{kind}_{split}*.json"))
    if not candidates:
        raise FileNotFoundError(f"no {root / 'annotations'}/{kind}_{split}*.json (COCO layout: "
                                f"annotations/{kind}_{split}2017.json with images in {split}2017/)")
    json_path = candidates[0]
    image_dir = root / json_path.stem.removeprefix(f"{kind}_")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image folder {image_dir} of {json_path} does not exist")
    return json_path, image_dir


def has_annotation_file(root: Path, kind: str, split: str) -> bool:
    """Whether `split` has a ``<kind>_<split>*.json``."""
    return any((root / "annotations").glob(f"{kind}_{split}*.json"))


def read_coco(root: Path, kind: str, split: str) -> CocoSplit:
    """Parse a split; images the JSON names but the disk lacks are an error listing the first few, an
    image id listed twice an error naming both files."""
    json_path, image_dir = annotation_file(root, kind, split)
    try:
        payload = json.loads(json_path.read_text())
        images: dict[int, tuple[str, int, int]] = {}
        for entry in payload["images"]:
            image_id, path = int(entry["id"]), str(image_dir / entry["file_name"])
            if image_id in images:
                raise ValueError(f"{json_path}: image id {image_id} is listed twice, for {images[image_id][0]} "
                                 f"and {path} (its annotations would go to one of them)")
            images[image_id] = (path, int(entry["width"]), int(entry["height"]))
        categories = sorted(payload["categories"], key=lambda category: category["id"])
        annotations: dict[int, list[dict]] = {image_id: [] for image_id in images}
        for annotation in payload.get("annotations", []):
            if int(annotation["image_id"]) not in images:
                raise ValueError(f"annotation {annotation.get('id')} refers to image id {annotation['image_id']}, "
                                 f"which is not in 'images'")
            annotations[int(annotation["image_id"])].append(annotation)
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{json_path} is not a COCO {kind} file: {error!r}") from error
    missing = [path for path, _, _ in images.values() if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{json_path} references {len(missing)} missing image(s) (first: "
                                f"{', '.join(missing[:3])})")
    return CocoSplit(json_path, images, annotations, categories)


def exif_note(path: str) -> str:
    """``", EXIF orientation N"`` for a file its EXIF says to rotate or mirror (N > 1: a JSON may then
    give the upright size while the header stores the other), else ""."""
    try:
        with Image.open(path) as image:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError):
        return ""
    return f", EXIF orientation {orientation}" if orientation > 1 else ""


def checked_images(coco: CocoSplit,
                   policy: ScanPolicy) -> tuple[dict[int, tuple[str, int, int]], list[tuple[str, str]]]:
    """The split's images that pass the scan, with their file's stored size, and the files skipped.

    A JSON width / height unlike the file's header is replaced by the file's (boxes are clipped to
    it), counted in ``coco.counts["image_sizes_from_file"]`` and warned about once, with the first few.
    """
    scan = scan_images([path for path, _, _ in coco.images.values()], policy)
    good, images, differing = set(scan.good), {}, []
    for image_id, (path, width, height) in coco.images.items():
        if path in good:
            images[image_id] = (path, *scan.sizes[path])
            if scan.sizes[path] != (width, height):
                differing.append(f"{path} (JSON {width}x{height}, file {'x'.join(map(str, scan.sizes[path]))}"
                                 f"{exif_note(path)})")
    if differing:
        coco.counts["image_sizes_from_file"] = len(differing)
        warnings.warn(f"{coco.json_path}: {len(differing)} image(s) whose JSON width / height differ from the "
                      f"file; the file's size is used (first: {', '.join(differing[:3])})", stacklevel=2)
    return images, scan.skipped


def clean_box(bbox: list[float], width: int, height: int) -> tuple[np.ndarray | None, str]:
    """A COCO ``[x, y, w, h]`` as xyxy clipped to the image: ``(box, "kept" | "clipped")``, or
    ``(None, "dropped")`` when nothing of at least one pixel is left (outside, zero area)."""
    x, y, w, h = (float(value) for value in bbox)
    box = np.array([x, y, x + w, y + h], np.float32)
    clipped = np.clip(box, 0, [width, height, width, height]).astype(np.float32)
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        return None, "dropped"
    return clipped, "clipped" if not np.array_equal(box, clipped) else "kept"


def boxes_of(annotations: list[dict], width: int, height: int, counts: dict[str, int],
             crowd: bool = False) -> tuple[list[np.ndarray], list[dict]]:
    """Clean boxes of the non-crowd annotations (with `crowd`: of the crowd regions) and the annotations
    kept; ``counts`` gains ``boxes_clipped``, ``boxes_dropped`` and ``crowd_regions`` (crowd regions are
    never training targets; the official evaluation treats them as ignore regions)."""
    boxes, kept = [], []
    for annotation in annotations:
        if bool(annotation.get("iscrowd", 0)) != crowd:
            if not crowd:
                counts["crowd_regions"] = counts.get("crowd_regions", 0) + 1
            continue
        box, fate = clean_box(annotation["bbox"], width, height)
        if fate != "kept" and not crowd:
            counts[f"boxes_{fate}"] = counts.get(f"boxes_{fate}", 0) + 1
        if box is not None:
            boxes.append(box)
            kept.append(annotation)
    return boxes, kept


def boxes_from_corners(corners: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes ``(N, 4)`` xyxy from transformed corner points ``(2N, 2)``, reordered after a flip and
    clipped to the view, and the mask of those at least one pixel wide and high (crops cut others)."""
    pairs = corners.reshape(-1, 2, 2)
    boxes = torch.cat([pairs.amin(dim=1), pairs.amax(dim=1)], dim=1)
    limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp_min(0), limits)
    return boxes, ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)

