"""What detection, segmentation, pose and depth share: input size, their pipeline, paired folders.

Each dense task is a `DenseTask`: it reads its format into a `SampleIndex` whose `annotations`
hold per-sample targets, declares a `DenseLayout` (raster targets, points, extras) and turns
one annotation into arrays in `load_targets`; `batches` builds the shared dense pipeline.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from codecloop.dali_pipes import Codec, LevelSpec, PipelineRuntime
from codecloop.dali_pipes.dense import DenseBatches, DenseGeometry, DenseLayout, DenseSample, RasterFiles
from codecloop.dali_pipes.validate import ScanPolicy, ScanResult, scan_images
from codecloop.tasks.base import Task
from codecloop.tasks.classification import IMAGE_SUFFIXES
from codecloop.tasks.sample_index import SampleIndex


def to_device(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """Small host tensors (targets built from the batch's host values) on `device`: on a GPU one pinned,
    non-blocking copy per dtype, split there by sizes known on the host, so the step never waits."""
    if device.type != "cuda" or not tensors:
        return [tensor.to(device) for tensor in tensors]
    moved: list[torch.Tensor | None] = [None] * len(tensors)
    for dtype in dict.fromkeys(tensor.dtype for tensor in tensors):
        members = [position for position, tensor in enumerate(tensors) if tensor.dtype == dtype]
        flat = torch.cat([tensors[position].reshape(-1) for position in members]).pin_memory()
        parts = flat.to(device, non_blocking=True).split([tensors[position].numel() for position in members])
        for position, part in zip(members, parts):
            moved[position] = part.view(tensors[position].shape)
    return moved


def parse_input_size(text: str | None, fallback: int) -> tuple[int, int]:
    """``"384"`` -> (384, 384); ``"352x1216"`` -> (352, 1216); None -> the fallback square."""
    if text is None:
        return fallback, fallback
    parts = str(text).lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"config key 'input_size': {text!r} is not S or HxW (positive integers)")
    height, width = int(parts[0]), int(parts[-1])
    return height, width


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; errors name a missing or empty folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {folder} holds no image file")
    return files


def paired_files(root: Path, split: str, target_folder: str, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(image, target)`` pairs: ``root/images/<split>/X.*`` with ``root/<target_folder>/<split>/X<suffix>``.

    An image without its target file is an error listing the first few.
    """
    image_root, target_root = root / "images" / split, root / target_folder / split
    pairs, missing = [], []
    for image in list_images(image_root):
        stem = image.relative_to(image_root).with_suffix("")
        target = next((target_root / f"{stem}{suffix}" for suffix in suffixes
                       if (target_root / f"{stem}{suffix}").is_file()), None)
        if target is None:
            missing.append(str(target_root / f"{stem}{suffixes[0]}"))
        else:
            pairs.append((str(image), str(target)))
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) of {image_root} have no {target_folder} file (first: "
                                f"{', '.join(missing[:3])})")
    return pairs


def scan_pairs(pairs: list[tuple[str, str]], policy: ScanPolicy, data_root: str | Path | None = None,
               labels: bool = False) -> tuple[list[tuple[str, str]], ScanResult]:
    """The ``(image, target)`` pairs whose image and target file both pass the scan, and the scan
    (skipped files, stored sizes, facts; cached next to `data_root`, with the values every target
    holds when they are `labels`). A bad target file leaves with its image, and its reason names the
    image; ``.npy`` targets are not images (the task checks them)."""
    image_of = {target: image for image, target in pairs}
    targets = [target for _, target in pairs if not target.endswith(".npy")]
    scan = scan_images([image for image, _ in pairs] + targets, policy, data_root=data_root,
                       labels=targets if labels else ())
    bad = {path for path, _ in scan.skipped}
    scan.skipped = [(path, f"{reason}; its image {image_of[path]} is left out with it" if path in image_of else reason)
                    for path, reason in scan.skipped]
    return [(image, target) for image, target in pairs if image not in bad and target not in bad], scan


class DenseTask(Task):
    """Base of the dense tasks: geometry from the config, the shared pipeline, channels-last models.

    A subclass reads its format in `sample_index` and defines ``load_targets(index, position)``:
    the target arrays of one sample, as its `layout` names them. Its image and target files pass the
    scan (`scan_policy`, from the config keys ``strict``, ``keep_damaged``, ``max_image_pixels``)
    when the index is built: a bad file is skipped and counted with its sample, or stops a strict run.
    """

    media = "images"  # what the codec compresses: single images, or clips from a ladder
    memory_format = torch.channels_last
    layout = DenseLayout()

    def __init__(self, data: str | Path, input_size: str | None, crop_size: int, min_scale: float,
                 normalized: bool = True, scan_policy: ScanPolicy = ScanPolicy()) -> None:
        self.root = Path(data)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset path {self.root} does not exist")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"config key 'min_scale': {min_scale} is outside (0, 1]")
        self.scan_policy = scan_policy
        height, width = parse_input_size(input_size, crop_size)
        self.geometry = DenseGeometry(height, width, min_scale)
        if not normalized:  # torchvision detectors normalize inside the model: hand them 0..1 pixels
            self.geometry = dataclasses.replace(self.geometry, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    def has_split(self, split: str) -> bool:
        """Whether ``images/<split>`` exists (the folder layouts; COCO tasks look for their JSON)."""
        return (self.root / "images" / split).is_dir()

    def batches(self, index: SampleIndex, *, training: bool, spec: LevelSpec, codec: Codec, runtime: PipelineRuntime,
                checkpoint: bytes | str | None = None) -> DenseBatches:
        """Epochs of `index` through the codec stage and the shared crop / flip / resize, on the device."""
        samples = [DenseSample(path, annotation.get("region"), index.sizes.get(path))
                   for path, annotation in zip(index.files, index.annotations or [{}] * len(index))]
        return DenseBatches(samples, layout=self.layout, load_targets=functools.partial(self.load_targets, index),
                            training=training, spec=spec, codec=codec, geometry=self.geometry, targets=index.targets,
                            checkpoint=checkpoint, raster_files=self.raster_files(index), runtime=runtime)

    def raster_files(self, index: SampleIndex) -> dict[str, RasterFiles]:
        """The raster targets of `index` that DALI reads and decodes itself (the rest come from
        `load_targets`); none unless a task says how."""
        return {}
