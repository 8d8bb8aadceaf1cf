"""Object detection: COCO JSON (``annotations/instances_<split>*.json``), torchvision detectors, COCO mAP.

Boxes outside the image are clipped to it, boxes of zero area (after clipping) dropped, each
counted in the split's ``counts``. Crowd regions (``iscrowd: 1``) are never training targets; in
evaluation they go to pycocotools as crowd ground truth, the ignore regions of the official
evaluation (a detection on a crowd region is neither a hit nor a false positive). Images without
annotations stay, as negatives, in training and in evaluation; grayscale images are decoded to RGB. Category ids map to labels 1..K in id order (0 is the background). The codec runs on
the whole image; box corners follow the crop, flip and resize through `fn.coord_transform` and
are reordered, clipped and cut into per-image targets on the host, then moved to the device in
one copy (torchvision's detectors take a list of variable-length targets). mAP, AP50 and AP75
come from pycocotools, evaluated in the evaluation view (the whole image resized: IoU does not
change under axis scaling).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from codecloop.dali_pipes.dense import DenseLayout
from codecloop.dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, ScanPolicy
from codecloop.tasks.coco import boxes_from_corners, boxes_of, checked_images, has_annotation_file, read_coco
from codecloop.tasks.dense_common import DenseTask, to_device
from codecloop.tasks.dense_metrics import coco_box_results
from codecloop.tasks.dense_models import check_model_name, model_names, create_detection_model
from codecloop.tasks.layout_errors import choose_format
from codecloop.tasks.weights import load_pretrained
from codecloop.tasks.registry import register_task
from codecloop.tasks.sample_index import SampleIndex


def _numpy(value: torch.Tensor) -> np.ndarray:
    return value.detach().float().cpu().numpy() if value.is_floating_point() else value.detach().cpu().numpy()


class BoxAccumulator:
    """Ground truth and detections of one evaluation, per image, for COCO mAP."""

    def __init__(self, task: "DetectionTask") -> None:
        self.task, self.ground_truth, self.predictions = task, [], []

    def update(self, detections: list[dict[str, torch.Tensor]], batch: dict[str, torch.Tensor]) -> None:
        for image_id, truth, found in zip(batch["index"].tolist(), self.task.host_targets(batch, crowd=True),
                                          detections):
            self.ground_truth.append({"image_id": image_id, **{key: _numpy(value) for key, value in truth.items()}})
            self.predictions.append({"image_id": image_id, **{key: _numpy(found[key])
                                                              for key in ("boxes", "scores", "labels")}})

    def state(self) -> tuple[list, list]:
        return self.ground_truth, self.predictions

    def compute(self, states: Sequence[tuple[list, list]]) -> dict[str, float]:
        return coco_box_results(*_merged(states))[0]

    def replicates(self, states: Sequence[tuple[list, list]], resamples: int) -> dict[str, np.ndarray]:
        return coco_box_results(*_merged(states), resamples=resamples)[1]


def _merged(states: Sequence[tuple[list, list]]) -> tuple[list, list]:
    """Every rank's ground truth and predictions, one list each."""
    return [g for truth, _ in states for g in truth], [p for _, found in states for p in found]


@register_task("detection")
class DetectionTask(DenseTask):
    """Box detection with a torchvision detector; owns its targets, loss and COCO metrics."""

    primary_metric = "map"
    higher_is_better = True
    memory_format = None
    layout = DenseLayout(points=True, extras=("labels", "crowd"))
    model_help = model_names("detection")
    default_model = "fasterrcnn_mobilenet_v3_large_fpn"
    config_keys = ("data", "model", "pretrained", "input_size", "crop_size", "min_scale", "strict", "keep_damaged",
                   "max_image_pixels", "format")

    def __init__(self, data: str | Path, model: str = default_model,
                 pretrained: str | None = None,
                 input_size: str | None = None, crop_size: int = 224, min_scale: float = 0.35, strict: bool = False,
                 keep_damaged: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 format: str | None = None) -> None:
        choose_format("detection", Path(data), format, {"coco": lambda root: True})  # the only layout: COCO's
        super().__init__(data, input_size, crop_size, min_scale, normalized=False,
                         scan_policy=ScanPolicy(strict, keep_damaged, max_image_pixels))
        self.timm_family = check_model_name("detection", model)
        self.model_name, self.pretrained = model, pretrained
        self.categories = read_coco(self.root, "instances", "train").categories
        self.label_of = {int(category["id"]): label for label, category in enumerate(self.categories, start=1)}
        self.num_classes = len(self.categories) + 1

    def has_split(self, split: str) -> bool:
        """Whether ``annotations/instances_<split>*.json`` exists."""
        return has_annotation_file(self.root, "instances", split)

    def sample_index(self, split: str) -> SampleIndex:
        """Every image of the split that passes the scan, with its cleaned boxes and crowd regions (flagged
        in ``crowd``, after the boxes); negatives kept, fixes counted, bad files skipped with their boxes."""
        coco = read_coco(self.root, "instances", split)
        images, skipped = checked_images(coco, self.scan_policy)
        files, annotations, counts = [], [], {"images_without_boxes": 0, **coco.counts}
        for image_id, (path, width, height) in images.items():
            boxes, kept = boxes_of(coco.annotations[image_id], width, height, counts)
            crowd_boxes, crowds = boxes_of(coco.annotations[image_id], width, height, counts, crowd=True)
            unknown = {int(a["category_id"]) for a in kept + crowds} - set(self.label_of)
            if unknown:
                raise ValueError(f"{coco.json_path}: category id {min(unknown)} is not a category of the train split")
            counts["images_without_boxes"] += not boxes
            files.append(path)
            annotations.append({
                "boxes": np.stack(boxes + crowd_boxes) if boxes or crowd_boxes else np.zeros((0, 4), np.float32),
                "labels": np.array([self.label_of[int(a["category_id"])] for a in kept + crowds], np.int64),
                "crowd": np.array([0] * len(kept) + [1] * len(crowds), np.int64),
            })
        if not files:
            raise ValueError(f"{coco.json_path} has no readable image")
        return SampleIndex(split, files, {}, skipped, annotations=annotations, counts=counts)

    def load_targets(self, index: SampleIndex, position: int) -> dict[str, np.ndarray]:
        annotation = index.annotations[position]
        return {"points": annotation["boxes"].reshape(-1, 2), "labels": annotation["labels"],
                "crowd": annotation["crowd"]}

    def host_targets(self, batch: dict[str, torch.Tensor], crowd: bool = False) -> list[dict[str, torch.Tensor]]:
        """Per image ``{boxes, labels}`` in the view, from the batch's host values: corners reordered,
        clipped, slivers dropped. Crowd regions are left out, or with `crowd` (evaluation ground truth)
        kept and flagged in ``iscrowd``."""
        out = []
        for corners, count, labels, flags in zip(batch["points"], batch["num_points"].tolist(), batch["labels"],
                                                 batch["crowd"]):
            boxes, keep = boxes_from_corners(corners[:count], self.geometry.height, self.geometry.width)
            is_crowd = flags[:count // 2].bool()
            if not crowd:
                keep &= ~is_crowd
            target = {"boxes": boxes[keep], "labels": labels[:count // 2][keep]}
            out.append({**target, "iscrowd": is_crowd[keep]} if crowd else target)
        return out

    def targets(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """`host_targets` on the images' device (one copy per dtype)."""
        host = self.host_targets(batch)
        moved = to_device([value for target in host for value in (target["boxes"], target["labels"])],
                          batch["image"].device)
        return [{"boxes": boxes, "labels": labels} for boxes, labels in zip(moved[0::2], moved[1::2])]

    def create_model(self) -> torch.nn.Module:
        """The detector; `pretrained` is a whole torchvision detector's weights file, or for
        ``fasterrcnn_[c4_]<timm encoder>`` its encoder's (a classifier's will do)."""
        size = max(self.geometry.height, self.geometry.width)
        if self.timm_family is not None:
            return create_detection_model(self.model_name, self.num_classes, size, pretrained_encoder=self.pretrained)
        model = create_detection_model(self.model_name, self.num_classes, size)
        if self.pretrained:
            load_pretrained(model, self.pretrained)
        return model

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image: ``{boxes, scores, labels}`` in the view's pixels."""
        return model(list(batch["image"]))

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The detector's summed training losses (the model must be in train mode)."""
        losses = model(list(batch["image"]), self.targets(batch))
        return {"loss": sum(losses.values()), "outputs": None, **losses}

    def sample_metrics(self, detections: list, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detections found per image (the AP metrics are dataset-level)."""
        return {"detections": torch.tensor([float(len(found["boxes"])) for found in detections])}

    def metric_accumulator(self) -> BoxAccumulator:
        return BoxAccumulator(self)
