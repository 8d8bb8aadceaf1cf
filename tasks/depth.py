"""Monocular depth: RGB images + depth maps (KITTI 16-bit PNGs or .npy), Eigen metrics.

Layout: ``DATA/images/<split>/X.png|jpg`` with ``DATA/depth/<split>/X.png`` (uint16, depth in
metres x 256, 0 = invalid: the KITTI convention) or ``X.npy`` (float depth in metres, 0 or
NaN = invalid). Models: ``unet_<timm encoder>`` predicting log depth. Loss: the
scale-invariant log loss (Eigen et al. 2014) over valid pixels. Metrics (per image, averaged):
abs rel, sq rel, RMSE, RMSE log, delta < 1.25, 1.25^2, 1.25^3, optionally in the Garg/Eigen crop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dali_pipes.dense import DenseLayout
from dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, ScanPolicy
from tasks.dense_common import DenseTask, paired_files, scan_pairs
from tasks.dense_metrics import depth_errors
from tasks.dense_models import check_model_name, model_names, create_depth_model
from tasks.registry import register_task
from tasks.sample_index import SampleIndex

KITTI_SCALE = 256.0
SCALE_INVARIANCE = 0.85  # 1 = fully scale-invariant, 0 = plain log RMSE


def check_depth_file(path: str) -> tuple[int, int]:
    """(width, height) of a depth file; a wrong dtype is an error naming the file."""
    if path.endswith(".npy"):
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"depth file {path} is not a readable .npy array ({error})") from error
        if array.dtype.kind != "f" or array.ndim != 2:
            raise ValueError(f"depth file {path} is {array.dtype} {array.shape}; expected a 2-D float array of metres")
        return array.shape[1], array.shape[0]
    with Image.open(path) as depth:
        if depth.mode not in ("I;16", "I;16B", "I"):
            bits = "8-bit" if depth.mode in ("L", "P") else "not 16-bit"
            raise ValueError(f"depth file {path} is mode {depth.mode} ({bits}); "
                             f"expected a 16-bit PNG of metres x {KITTI_SCALE:g} (KITTI convention)")
        return depth.size


def read_depth(path: str) -> np.ndarray:
    """Depth in metres as float32 HxW, 0 where invalid."""
    if path.endswith(".npy"):
        return np.nan_to_num(np.load(path).astype(np.float32), nan=0.0)
    with Image.open(path) as depth:
        return np.asarray(depth, dtype=np.float32) / KITTI_SCALE


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


@register_task("depth")
class DepthTask(DenseTask):
    """Monocular depth regression; owns its loss, its metrics and the depth reader."""

    primary_metric = "abs_rel"
    higher_is_better = False
    layout = DenseLayout(rasters=("depth",))
    model_help = model_names("depth")

    def __init__(self, data: str | Path, model: str = "unet_resnet18", pretrained: str | None = None,
                 input_size: str | None = None, crop_size: int = 224, min_scale: float = 0.35,
                 min_depth: float = 1e-3, max_depth: float = 80.0, eigen_crop: bool = False, strict: bool = False,
                 keep_damaged: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        super().__init__(data, input_size, crop_size, min_scale,
                         scan_policy=ScanPolicy(strict, keep_damaged, max_image_pixels))
        if not 0 < min_depth < max_depth:
            raise ValueError(f"config keys 'min_depth' / 'max_depth': need 0 < {min_depth} < {max_depth}")
        check_model_name("depth", model)
        self.model_name, self.pretrained = model, pretrained
        self.min_depth, self.max_depth, self.eigen_crop = min_depth, max_depth, eigen_crop

    def sample_index(self, split: str) -> SampleIndex:
        """Image / depth pairs of `split` that pass the scan (a bad image or depth PNG skips the pair);
        a wrong dtype or a size unlike the image's is an error naming the file."""
        pairs, scan = scan_pairs(paired_files(self.root, split, "depth", (".png", ".npy")), self.scan_policy)
        for image, depth in pairs:
            if check_depth_file(depth) != scan.sizes[image]:
                raise ValueError(f"depth file {depth} is not the size of its image {image}")
        if not pairs:
            raise ValueError(f"dataset split {self.root / 'images' / split} has no readable image / depth pair")
        return SampleIndex(split, [image for image, _ in pairs], {}, scan.skipped,
                           annotations=[{"depth": d} for _, d in pairs])

    def load_targets(self, index: SampleIndex, position: int) -> dict[str, np.ndarray]:
        return {"depth": read_depth(index.annotations[position]["depth"])}

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
