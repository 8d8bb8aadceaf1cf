"""Semantic segmentation in four layouts (`tasks.segmentation_layouts`), mIoU.

Layouts (``--format``; detected from the folder when not given, ``folder`` first):

- ``folder``: ``DATA/images/<split>/X.jpg|png`` with ``DATA/masks/<split>/X.png``, one mask per image,
  same size, pixel values = class ids, 255 = ignore (mode "L" or a palette PNG whose indices are the
  ids); class names in ``DATA/classes.txt`` (one a line, in id order), or ``--num_classes``.
- ``cityscapes``: ``DATA/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png`` with
  ``DATA/gtFine/{train,val}/<city>/<stem>_gtFine_labelTrainIds.png`` where present, else
  ``<stem>_gtFine_labelIds.png`` mapped to the 19 train ids by cityscapesScripts' table (255 = ignore);
  ``--mask_folder gtCoarse`` reads ``gtCoarse/.../<stem>_gtCoarse_labelIds.png``.
- ``voc``: ``DATA[/VOCdevkit][/VOC2012]/JPEGImages/<name>.jpg`` with ``SegmentationClass/<name>.png``
  (palette PNGs, 21 classes, 255 boundary = ignore), split by ``ImageSets/Segmentation/{train,val}.txt``;
  ``--mask_folder SegmentationClassAug`` trains on SBD's labels (``trainaug.txt`` / ``train_aug.txt``, or
  ``train.txt`` + ``aug.txt``).
- ``ade20k``: ``DATA[/ADEChallengeData2016]/images/{training,validation}/*.jpg`` with
  ``annotations/{training,validation}/*.png`` (mode L, 0 = other); ``--reduce_zero_label`` (default on
  here) makes 0 ignore and k class k-1: 150 classes, named by ``objectInfo150.txt`` when present.

Labels are checked when the index is built (their values cached with the scan): a value the layout does
not define, or an RGB label PNG, stops the run naming the file. Grey label PNGs are then read, decoded and
mapped through the layout's 256-entry lookup table in the DALI graph; palette PNGs (VOC) in `load_targets`. Models: torchvision
``deeplabv3_resnet50``, ``fcn_resnet50``, ``lraspp_mobilenet_v3_large`` or ``unet_<timm encoder>``.
Metrics: mIoU and pixel accuracy from an exact confusion matrix summed over every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codecloop.dali_pipes.dense import DenseLayout, RasterFiles
from codecloop.dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, ScanPolicy
from codecloop.tasks.dense_common import DenseTask, scan_pairs
from codecloop.tasks.bootstrap import resample_counts
from codecloop.tasks.dense_metrics import class_count_metrics, image_class_counts
from codecloop.tasks.dense_models import check_model_name, model_names, create_segmentation_model
from codecloop.tasks.layout_errors import choose_format
from codecloop.tasks.registry import register_task
from codecloop.tasks.sample_index import SampleIndex
from codecloop.tasks.segmentation_layouts import DETECTORS, IGNORE_INDEX, LabelTable, check_label_mode, \
    check_label_values, decode_labels, id_table, open_layout, read_label_png


def read_mask(path: str, num_classes: int, table: LabelTable | None = None) -> np.ndarray:
    """Class ids of a label PNG as uint8 HxW, its values decoded by `table` (default: they are the ids
    0..num_classes-1, 255 = ignore); an RGB PNG or a value the table does not define names the file."""
    return decode_labels(read_label_png(path), table or id_table(num_classes), path)


class ConfusionAccumulator:
    """Per-image class counts of one evaluation (`image_class_counts`), by sample index: their sum gives mIoU and
    pixel accuracy, their resamples the intervals."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.indices: list[torch.Tensor] = []
        self.counts: list[torch.Tensor] = []

    def update(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> None:
        self.indices.append(batch["index"].reshape(-1))
        self.counts.append(image_class_counts(logits.argmax(dim=1), batch["mask"].long(), self.num_classes,
                                              IGNORE_INDEX))

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.indices:
            return np.empty(0, np.int64), np.empty((0, 3, self.num_classes), np.int64)
        return torch.cat(self.indices).cpu().numpy(), torch.cat(self.counts).cpu().numpy()

    def _ordered(self, states: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Every rank's per-image counts in sample-index order."""
        indices = np.concatenate([index for index, _ in states])
        return np.concatenate([counts for _, counts in states])[np.argsort(indices, kind="stable")]

    def compute(self, states: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        return {name: float(value) for name, value in class_count_metrics(self._ordered(states).sum(0)).items()}

    def replicates(self, states: Sequence[tuple[np.ndarray, np.ndarray]], resamples: int) -> dict[str, np.ndarray]:
        counts = self._ordered(states)
        flat = counts.reshape(len(counts), -1).astype(np.float64)
        parts = [class_count_metrics((weights @ flat).reshape(len(weights), 3, self.num_classes))
                 for weights in resample_counts(len(counts), resamples)]
        return {name: np.concatenate([part[name] for part in parts]) for name in ("miou", "pixel_acc")} if parts \
            else {}


@register_task("segmentation")
class SegmentationTask(DenseTask):
    """Per-pixel classification; owns its loss, its confusion matrix and the mask reader."""

    primary_metric = "miou"
    higher_is_better = True
    layout = DenseLayout(rasters=("mask",))
    model_help = model_names("segmentation")
    default_model = "unet_resnet18"
    config_keys = ("data", "model", "pretrained", "num_classes", "input_size", "crop_size", "min_scale",
                   "label_smoothing", "strict", "keep_damaged", "max_image_pixels", "format", "mask_folder",
                   "reduce_zero_label")

    def __init__(self, data: str | Path, model: str = default_model, pretrained: str | None = None,
                 num_classes: int | None = None, input_size: str | None = None, crop_size: int = 224,
                 min_scale: float = 0.35, label_smoothing: float = 0.0, strict: bool = False,
                 keep_damaged: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 format: str | None = None, mask_folder: str | None = None,
                 reduce_zero_label: bool | None = None) -> None:
        super().__init__(data, input_size, crop_size, min_scale,
                         scan_policy=ScanPolicy(strict, keep_damaged, max_image_pixels))
        self.format = choose_format("segmentation", self.root, format, DETECTORS)
        self.dataset_layout = open_layout(self.format, self.root, mask_folder)
        self.reduce_zero_label = reduce_zero_label if reduce_zero_label is not None \
            else self.dataset_layout.reduce_zero_label
        self.classes, self.num_classes = self._classes(num_classes)
        self.tables = self.dataset_layout.tables(self.num_classes, self.reduce_zero_label)
        self.model_name, self.pretrained, self.label_smoothing = model, pretrained, label_smoothing
        check_model_name("segmentation", model)

    def _classes(self, num_classes: int | None) -> tuple[list[str], int]:
        """Class names (the layout's, less id 0's with `reduce_zero_label`) and the class count."""
        names, source = self.dataset_layout.stored_names()
        if not names and num_classes is None:
            raise ValueError(f"config key 'num_classes': {source} does not exist, so give the number of classes")
        if self.reduce_zero_label:
            names = names[1:]
        count = num_classes or len(names)
        if count < len(names):
            raise ValueError(f"config key 'num_classes': {count} is below the {len(names)} names of {source}")
        if count > IGNORE_INDEX - int(self.reduce_zero_label):
            raise ValueError(f"config key 'num_classes': {count} classes do not fit 8-bit label PNGs, where "
                             f"{IGNORE_INDEX} is ignore")
        return names, count

    def has_split(self, split: str) -> bool:
        return self.dataset_layout.has_split(split)

    def sample_index(self, split: str) -> SampleIndex:
        """Image / mask pairs of `split` that pass the scan (a bad image or mask file skips the pair);
        a mask whose size differs from its image, that is not 8-bit, or that holds a value its layout's
        table does not define is an error naming it. The values come from the scan's cache: a second
        stage or sweep decodes no mask."""
        samples = self.dataset_layout.samples(split)
        table_of = {sample.mask: sample.table for sample in samples}
        pairs, scan = scan_pairs([(sample.image, sample.mask) for sample in samples], self.scan_policy, self.root,
                                 labels=True)
        for image, mask in pairs:
            if scan.sizes[image] != scan.sizes[mask]:
                raise ValueError(f"mask {mask} is {'x'.join(map(str, scan.sizes[mask]))}, its image {image} "
                                 f"{'x'.join(map(str, scan.sizes[image]))}")
            check_label_mode(mask, scan.facts[mask].mode)
            check_label_values(scan.facts[mask].value_set(), self.tables[table_of[mask]], mask)
        if not pairs:
            raise ValueError(f"dataset split {self.dataset_layout.split_folder(split)} has no readable image / mask "
                             f"pair")
        return SampleIndex(split, [image for image, _ in pairs], {}, scan.skipped,
                           annotations=[{"mask": mask, "table": table_of[mask], "mode": scan.facts[mask].mode}
                                        for _, mask in pairs], sizes=scan.sizes)

    def raster_files(self, index: SampleIndex) -> dict[str, RasterFiles]:
        """Grey label PNGs are read, decoded and mapped to class ids by the pipeline (one lookup table row
        per layout table); a split holding palette PNGs (VOC) is decoded by `load_targets`, because DALI
        expands a palette to RGB and loses the indices."""
        if any(annotation["mode"] != "L" for annotation in index.annotations):
            return {}
        names = list(self.tables)
        return {"mask": RasterFiles([annotation["mask"] for annotation in index.annotations],
                                    lookup=np.stack([self.tables[name].lookup for name in names]),
                                    rows=[names.index(annotation["table"]) for annotation in index.annotations])}

    def load_targets(self, index: SampleIndex, position: int) -> dict[str, np.ndarray]:
        """The class ids of one sample's label file, decoded by its layout's lookup table."""
        annotation = index.annotations[position]
        return {"mask": read_mask(annotation["mask"], self.num_classes, self.tables[annotation["table"]])}

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
