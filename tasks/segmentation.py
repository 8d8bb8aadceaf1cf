"""Semantic segmentation: image folder + class-id mask PNGs (VOC / Cityscapes style), mIoU.

Layout: ``DATA/images/<split>/X.jpg|png`` with ``DATA/masks/<split>/X.png``, one mask per image,
same size, pixel values = class ids, 255 = ignore (mode "L", or a palette PNG whose indices are
the ids, as VOC ships them). Classes: ``DATA/classes.txt`` (one name per line, in id order), or
``--num_classes``. Models: torchvision ``deeplabv3_resnet50``, ``fcn_resnet50``,
``lraspp_mobilenet_v3_large`` or ``unet_<timm encoder>``. Metrics: mIoU and pixel accuracy from
an exact confusion matrix summed over every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dali_pipes.dense import DenseLayout
from dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, ScanPolicy
from tasks.dense_common import DenseTask, paired_files, scan_pairs
from tasks.dense_metrics import ConfusionMatrix
from tasks.dense_models import check_model_name, model_names, create_segmentation_model
from tasks.registry import register_task
from tasks.sample_index import SampleIndex

IGNORE_INDEX = 255


def read_mask(path: str, num_classes: int) -> np.ndarray:
    """Class ids of a mask PNG as uint8 HxW; an RGB mask or an id beyond the classes is an error naming it."""
    with Image.open(path) as mask:
        if mask.mode not in ("L", "P"):
            raise ValueError(f"mask {path} is mode {mask.mode}; expected class ids (mode L or a palette PNG)")
        ids = np.asarray(mask, dtype=np.uint8)
    present = np.unique(ids)
    beyond = present[(present >= num_classes) & (present != IGNORE_INDEX)]
    if beyond.size:
        raise ValueError(f"mask {path} holds class id {int(beyond[0])}, beyond the {num_classes} classes "
                         f"(ids 0..{num_classes - 1}, {IGNORE_INDEX} = ignore)")
    return ids


class ConfusionAccumulator:
    """Confusion matrix of one evaluation; `state` is what each rank hands to `compute`."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = ConfusionMatrix(num_classes, IGNORE_INDEX)

    def update(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        self.matrix.update(logits.argmax(dim=1), batch["mask"].long())

    def state(self) -> torch.Tensor:
        return self.matrix.matrix.cpu()

    def compute(self, states: Sequence[torch.Tensor]) -> dict[str, float]:
        total = ConfusionMatrix(self.matrix.num_classes, IGNORE_INDEX)
        total.matrix = sum(states)
        return total.compute()


@register_task("segmentation")
class SegmentationTask(DenseTask):
    """Per-pixel classification; owns its loss, its confusion matrix and the mask reader."""

    primary_metric = "miou"
    higher_is_better = True
    layout = DenseLayout(rasters=("mask",))
    model_help = model_names("segmentation")

    def __init__(self, data: str | Path, model: str = "unet_resnet18", pretrained: str | None = None,
                 num_classes: int | None = None, input_size: str | None = None, crop_size: int = 224,
                 min_scale: float = 0.35, label_smoothing: float = 0.0, strict: bool = False,
                 keep_damaged: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        super().__init__(data, input_size, crop_size, min_scale,
                         scan_policy=ScanPolicy(strict, keep_damaged, max_image_pixels))
        names_file = self.root / "classes.txt"
        self.classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()] \
            if names_file.is_file() else []
        if not self.classes and num_classes is None:
            raise ValueError(f"config key 'num_classes': {names_file} does not exist, so give the number of classes")
        self.num_classes = num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ValueError(f"num_classes {self.num_classes} is below the {len(self.classes)} names of {names_file}")
        self.model_name, self.pretrained, self.label_smoothing = model, pretrained, label_smoothing
        check_model_name("segmentation", model)

    def sample_index(self, split: str) -> SampleIndex:
        """Image / mask pairs of `split` that pass the scan (a bad image or mask file skips the pair);
        a mask whose size differs from its image is an error naming it."""
        pairs, scan = scan_pairs(paired_files(self.root, split, "masks", (".png",)), self.scan_policy)
        for image, mask in pairs:
            if scan.sizes[image] != scan.sizes[mask]:
                raise ValueError(f"mask {mask} is {'x'.join(map(str, scan.sizes[mask]))}, its image {image} "
                                 f"{'x'.join(map(str, scan.sizes[image]))}")
        if not pairs:
            raise ValueError(f"dataset split {self.root / 'images' / split} has no readable image / mask pair")
        return SampleIndex(split, [image for image, _ in pairs], {}, scan.skipped,
                           annotations=[{"mask": m} for _, m in pairs])

    def load_targets(self, index: SampleIndex, position: int) -> dict[str, np.ndarray]:
        return {"mask": read_mask(index.annotations[position]["mask"], self.num_classes)}

    def create_model(self) -> torch.nn.Module:
        """The named model; `pretrained` is a weights file of its encoder / backbone (a classifier's will do)."""
        return create_segmentation_model(self.model_name, self.num_classes, pretrained_encoder=self.pretrained)

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(B, C, H, W)``."""
        return model(batch["image"])

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy over labelled pixels."""
        logits = self.predict(model, batch)
        loss = F.cross_entropy(logits.float(), batch["mask"].long(), ignore_index=IGNORE_INDEX,
                               label_smoothing=self.label_smoothing)
        return {"loss": loss, "outputs": logits}

    def sample_metrics(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image cross-entropy (mIoU and pixel accuracy come from the confusion matrix)."""
        target = batch["mask"].long()
        losses = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
        labelled = (target != IGNORE_INDEX).flatten(1).sum(dim=1)
        return {"loss": losses.flatten(1).sum(dim=1) / labelled.clamp_min(1)}

    def metric_accumulator(self) -> ConfusionAccumulator:
        return ConfusionAccumulator(self.num_classes)
