"""Monocular depth: RGB images + depth maps in the folder, KITTI or NYU Depth v2 layout, Eigen metrics.

Layouts (`tasks.depth_layouts`; detected from the folder, or named with ``--format``):

- folder: ``DATA/images/<split>/X.png|jpg`` with ``DATA/depth/<split>/X.png`` (16-bit) or ``X.npy`` (float
  metres, 0 or NaN = invalid).
- kitti: the annotated depth ``DATA/{train,val}/<drive>_sync/proj_depth/groundtruth/image_0{2,3}/<frame>.png``
  beside the raw images ``RAW/<date>/<drive>_sync/image_0{2,3}/data/<frame>.png`` (``--raw``, default
  ``DATA/raw``); or the Eigen split files of ``--splits DIR``; or ``val_selection_cropped`` as the val split.
- nyu: ``DATA/images/{train,test}/X.jpg`` with ``DATA/annotations/{train,test}/X.png`` (mmsegmentation's
  layout; "val" reads ``test``).

Scale rule: a 16-bit depth PNG holds metres x ``depth_scale``, 0 = no measurement. ``--depth_scale`` sets
it; by default it follows the layout: folder and kitti 256 (KITTI's convention), nyu 1000 (millimetres).
``--max_depth`` defaults to the layout's usual cap: 80 m (folder, kitti), 10 m (nyu).
When a split's index is built, up to 32 evenly spaced depth maps are read and one line says the scale and
where it came from, the median valid depth and the share of valid pixels at or beyond ``--max_depth``
(left out of the loss and the metrics); a warning suggests another scale when these are implausible.

Models: ``unet_<timm encoder>`` predicting log depth. Loss: the scale-invariant log loss (Eigen et al.
2014) over valid pixels. Metrics (per image, averaged): abs rel, sq rel, RMSE, RMSE log, delta < 1.25,
1.25^2, 1.25^3, optionally in the Garg/Eigen crop (``--eigen_crop``).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codecloop.dali_pipes.dense import DenseLayout, RasterFiles
from codecloop.dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, FileFacts, ScanPolicy
from codecloop.tasks.dense_common import DenseTask, scan_pairs
from codecloop.tasks.dense_metrics import depth_errors
from codecloop.tasks.dense_models import check_model_name, model_names, create_depth_model
from codecloop.tasks.depth_layouts import DEFAULT_MAX_DEPTHS, DEFAULT_SCALES, DETECTORS, open_layout
from codecloop.tasks.layout_errors import choose_format
from codecloop.tasks.registry import register_task
from codecloop.tasks.sample_index import SampleIndex

SCALE_INVARIANCE = 0.85  # 1 = fully scale-invariant, 0 = plain log RMSE
SAMPLED_MAPS = 32
DROPPED_SHARE_WARNING = 0.10
KNOWN_SCALES = {1000.0: "millimetres, NYU Depth v2", 256.0: "metres x 256, KITTI", 5000.0: "metres x 5000, TUM RGB-D"}
TYPICAL_MEDIAN_M = {"kitti": (2.0, 50.0), "nyu": (0.5, 6.0)}
ANY_MEDIAN_M = (0.1, math.inf)
DEPTH_PNG_MODES = ("I;16", "I;16B", "I")  # Pillow's modes of a 16-bit grey PNG


def scale_invariant_log_loss(prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sqrt(mean(d^2) - 0.85 mean(d)^2) with d = log prediction - log target over valid pixels; 0 (with a
    gradient of 0) when no pixel is valid. Masked sums, not a boolean index: no wait for the GPU."""
    difference = prediction.float().clamp_min(1e-6).log() - target.clamp_min(1e-6).log()
    difference = torch.where(valid, difference, torch.zeros_like(difference))
    count = valid.sum()
    mean = difference.sum() / count.clamp_min(1)
    mean_square = difference.square().sum() / count.clamp_min(1)
    loss = (mean_square - SCALE_INVARIANCE * mean.square()).clamp_min(1e-12).sqrt()
    return torch.where(count > 0, loss, prediction.sum() * 0.0)


def check_depth_file(path: str, scale: float, facts: FileFacts | None = None) -> tuple[int, int]:
    """(width, height) of a depth file; a wrong dtype is an error naming the file. A PNG's mode and size
    come from its scan `facts` where given (cached: nothing is opened)."""
    if path.endswith(".npy"):
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"depth file {path} is not a readable .npy array ({error})") from error
        if array.dtype.kind != "f" or array.ndim != 2:
            raise ValueError(f"depth file {path} is {array.dtype} {array.shape}; expected a 2-D float array of metres")
        return array.shape[1], array.shape[0]
    if facts is None:
        with Image.open(path) as depth:
            facts = FileFacts(depth.format, *depth.size, mode=depth.mode)
    if facts.mode not in DEPTH_PNG_MODES:
        bits = "8-bit" if facts.mode in ("L", "P") else "not 16-bit"
        raise ValueError(f"depth file {path} is mode {facts.mode} ({bits}); expected a 16-bit PNG of metres x "
                         f"{scale:g} (depth_scale)")
    return facts.width, facts.height


def stored_depth(path: str) -> tuple[np.ndarray, bool]:
    """A depth file's values as float32 HxW and whether they are PNG values (scaled) rather than metres (.npy)."""
    if path.endswith(".npy"):
        return np.nan_to_num(np.load(path).astype(np.float32), nan=0.0), False
    with Image.open(path) as depth:
        return np.asarray(depth, dtype=np.float32), True


def read_depth(path: str, scale: float) -> np.ndarray:
    """Depth in metres as float32 HxW, 0 where invalid: PNG values / `scale`, .npy as stored."""
    values, scaled = stored_depth(path)
    return values / np.float32(scale) if scaled else values


def sample_positions(count: int, most: int = SAMPLED_MAPS) -> list[int]:
    """Up to `most` evenly spaced positions in ``range(count)``, first and last included: deterministic."""
    return sorted({round(position) for position in np.linspace(0, count - 1, min(count, most))}) if count else []


@dataclass(frozen=True)
class DepthStats:
    """Valid depths (metres, > min_depth) of the sampled maps, and how many of them reach max_depth."""

    median_m: float
    valid: int
    beyond: int

    @property
    def dropped_share(self) -> float:
        return self.beyond / self.valid if self.valid else 0.0


def depth_stats(metres: np.ndarray, min_depth: float, max_depth: float) -> DepthStats:
    """The median of `metres` above `min_depth`, their count, and how many are >= `max_depth` (dropped)."""
    valid = metres[np.isfinite(metres) & (metres > min_depth)]
    return DepthStats(float(np.median(valid)) if valid.size else math.nan, int(valid.size),
                      int((valid >= max_depth).sum()))


def implausibility(stats: DepthStats, format: str, max_depth: float) -> str | None:
    """Why `stats` look wrong for a dataset of layout `format` (None when they do not)."""
    low, high = TYPICAL_MEDIAN_M.get(format, ANY_MEDIAN_M)
    if not stats.valid:
        return None
    if stats.median_m >= max_depth:
        return f"the median valid depth {stats.median_m:.2f} m is beyond max_depth {max_depth:g} m"
    if stats.dropped_share > DROPPED_SHARE_WARNING:
        return f"{stats.dropped_share:.1%} of valid pixels are at or beyond max_depth {max_depth:g} m and dropped"
    if not low <= stats.median_m <= high:
        where = f"a {format} dataset" if format in TYPICAL_MEDIAN_M else "any camera"
        return f"a median valid depth of {stats.median_m:.2f} m is implausible for {where} ({low:g}-{high:g} m)"
    return None


def scale_advice(values: np.ndarray, scale: float, format: str, min_depth: float, max_depth: float) -> str:
    """The first known scale under which the stored PNG `values` look plausible, as advice text."""
    for candidate, meaning in KNOWN_SCALES.items():
        stats = depth_stats(values / candidate, min_depth, max_depth)
        if candidate != scale and implausibility(stats, format, max_depth) is None:
            return (f"at --depth_scale {candidate:g} ({meaning}) the median would be {stats.median_m:.2f} m with "
                    f"{stats.dropped_share:.1%} beyond max_depth: likely --depth_scale {candidate:g} (or, if the scale "
                    f"is right, a larger --max_depth)")
    return "no common scale (256, 1000, 5000) fits either: check --depth_scale and --max_depth"


def _main_process() -> bool:
    """Whether this process prints dataset facts (rank 0 of a distributed launch, or the only process)."""
    return os.environ.get("RANK", "0") == "0"


@register_task("depth")
class DepthTask(DenseTask):
    """Monocular depth regression; owns its loss, its metrics and the depth reader."""

    primary_metric = "abs_rel"
    higher_is_better = False
    lower_is_better = ("abs_rel", "sq_rel", "rmse", "rmse_log")
    layout = DenseLayout(rasters=("depth",))
    model_help = model_names("depth")
    default_model = "unet_resnet18"
    config_keys = ("data", "model", "pretrained", "input_size", "crop_size", "min_scale", "min_depth", "max_depth",
                   "eigen_crop", "strict", "keep_damaged", "max_image_pixels", "format", "depth_scale", "raw", "splits")

    def __init__(self, data: str | Path, model: str = default_model, pretrained: str | None = None,
                 input_size: str | None = None, crop_size: int = 224, min_scale: float = 0.35,
                 min_depth: float = 1e-3, max_depth: float | None = None, eigen_crop: bool = False,
                 strict: bool = False, keep_damaged: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 format: str | None = None, depth_scale: float | None = None, raw: str | None = None,
                 splits: str | None = None) -> None:
        super().__init__(data, input_size, crop_size, min_scale,
                         scan_policy=ScanPolicy(strict, keep_damaged, max_image_pixels))
        if depth_scale is not None and not depth_scale > 0:
            raise ValueError(f"config key 'depth_scale': {depth_scale} is not a positive value per metre")
        check_model_name("depth", model)
        self.format = choose_format("depth", self.root, format, DETECTORS)
        max_depth = DEFAULT_MAX_DEPTHS[self.format] if max_depth is None else max_depth
        if not 0 < min_depth < max_depth:
            raise ValueError(f"config keys 'min_depth' / 'max_depth': need 0 < {min_depth} < {max_depth}")
        self.model_name, self.pretrained = model, pretrained
        self.min_depth, self.max_depth, self.eigen_crop = min_depth, max_depth, eigen_crop
        self.reader = open_layout(self.format, self.root, raw, splits)
        self.depth_scale = float(depth_scale) if depth_scale is not None else DEFAULT_SCALES[self.format]
        self.scale_source = "--depth_scale" if depth_scale is not None else f"the {self.format} layout's default"
        self._stats: dict[str, DepthStats] = {}

    def has_split(self, split: str) -> bool:
        """Whether the layout has `split` (its folder, or its split file)."""
        return self.reader.has_split(split)

    def sample_index(self, split: str) -> SampleIndex:
        """Image / depth pairs of `split` that pass the scan (a bad image or depth PNG skips the pair);
        a wrong dtype or a size unlike the image's is an error naming the file. ``counts`` holds what the
        layout left out and the sampled valid depth pixels, with those at or beyond max_depth."""
        listed = self.reader.pairs(split)
        pairs, scan = scan_pairs(listed.pairs, self.scan_policy, self.root)
        for image, depth in pairs:
            size = check_depth_file(depth, self.depth_scale, scan.facts.get(depth))
            if size != scan.sizes[image]:
                raise ValueError(f"depth file {depth} is {size[0]}x{size[1]}, not the size of its image {image} "
                                 f"({scan.sizes[image][0]}x{scan.sizes[image][1]})")
        if not pairs:
            raise ValueError(f"depth split {split!r} ({listed.source}) has no readable image / depth pair")
        stats = self.check_scale(split, [depth for _, depth in pairs])
        counts = {**listed.counts, "sampled_valid_depth_pixels": stats.valid,
                  "sampled_depth_pixels_beyond_max_depth": stats.beyond}
        return SampleIndex(split, [image for image, _ in pairs], {}, scan.skipped,
                           annotations=[{"depth": d} for _, d in pairs], counts=counts, sizes=scan.sizes)

    def check_scale(self, split: str, depth_files: list[str]) -> DepthStats:
        """Statistics of up to 32 evenly spaced depth maps of `split` under the declared scale: printed once per
        split, with a warning (and a likely scale) when they are implausible."""
        if split in self._stats:
            return self._stats[split]
        chosen = sample_positions(len(depth_files))
        read = [stored_depth(depth_files[position]) for position in chosen]
        metres = np.concatenate([(values / self.depth_scale if scaled else values).ravel() for values, scaled in read])
        stats = self._stats[split] = depth_stats(metres, self.min_depth, self.max_depth)
        pngs = [values.ravel() for values, scaled in read if scaled]
        scale_text = f"scale {self.depth_scale:g} per metre ({self.scale_source})" if pngs else "metres (.npy)"
        if _main_process():
            print(f"depth {split}: {scale_text}; {len(chosen)} of {len(depth_files)} depth maps sampled: median "
                  f"valid depth {stats.median_m:.2f} m, {stats.dropped_share:.1%} of valid pixels at or beyond "
                  f"max_depth {self.max_depth:g} m (left out of loss and metrics)", flush=True)
        reason = implausibility(stats, self.format, self.max_depth)
        if reason is not None and _main_process():
            advice = scale_advice(np.concatenate(pngs), self.depth_scale, self.format, self.min_depth,
                                  self.max_depth) if pngs else "check --max_depth"
            warnings.warn(f"depth scale {self.depth_scale:g} per metre ({self.scale_source}) looks wrong for the "
                          f"{split} split of {self.root}: {reason}; {advice}", stacklevel=2)
        return stats

    def raster_files(self, index: SampleIndex) -> dict[str, RasterFiles]:
        """16-bit depth PNGs are read, decoded and scaled to metres by the pipeline; a split holding ``.npy``
        depth (which no DALI decoder reads per sample) is read by `load_targets`."""
        paths = [annotation["depth"] for annotation in index.annotations]
        if any(path.endswith(".npy") for path in paths):
            return {}
        return {"depth": RasterFiles(paths, scale=self.depth_scale)}

    def load_targets(self, index: SampleIndex, position: int) -> dict[str, np.ndarray]:
        return {"depth": read_depth(index.annotations[position]["depth"], self.depth_scale)}

    def create_model(self) -> torch.nn.Module:
        """The U-Net; `pretrained` is a weights file of its encoder (a classifier's will do)."""
        return create_depth_model(self.model_name, pretrained_encoder=self.pretrained)

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Depth in metres ``(B, H, W)``."""
        return model(batch["image"]).float()

    def _valid(self, target: torch.Tensor) -> torch.Tensor:
        return (target > self.min_depth) & (target < self.max_depth)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scale-invariant log loss over the batch's valid pixels."""
        prediction = self.predict(model, batch)
        target = batch["depth"].float()
        return {"loss": scale_invariant_log_loss(prediction, target, self._valid(target)), "outputs": prediction}

    def sample_metrics(self, prediction: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image Eigen metrics (NaN for an image without a valid pixel: left out of the means)."""
        return depth_errors(prediction, batch["depth"].float(), min_depth=self.min_depth, max_depth=self.max_depth,
                            eigen_crop=self.eigen_crop)

