"""Metrics of the dense tasks: COCO box AP, COCO keypoint (OKS) AP, segmentation mIoU, KITTI depth errors.

COCO AP comes from pycocotools (built in memory, its printing silenced) so numbers match published
ones. Segmentation keeps an exact int64 confusion matrix on the tensors' device; a distributed trainer
sums ``ConfusionMatrix.matrix`` across processes before ``compute``. Depth errors are per image (the
dataset value is the mean over images, the Eigen/KITTI protocol).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Sequence

import numpy as np
import torch

COCO_KEYPOINT_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)
DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
EIGEN_CROP = (0.40810811, 0.99189189, 0.03594771, 0.96405229)


def _numpy(values: Any, columns: int | None = None) -> np.ndarray:
    """A float64 numpy copy of an array, tensor (any device) or list; ``columns`` reshapes to (N, columns)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    return array.reshape(-1, columns) if columns else array.reshape(-1)


def _xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _run_cocoeval(dataset: dict, results: list[dict], iou_type: str,
                  sigmas: Sequence[float] | None = None) -> np.ndarray:
    """COCOeval stats of ``results`` against an in-memory ground truth, pycocotools' printing suppressed."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = dataset
        ground_truth.createIndex()
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), iouType=iou_type)
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _stats_to_dict(stats: np.ndarray | None, names: tuple[str, str, str], has_ground_truth: bool) -> dict[str, float]:
    """The first three COCO stats by name; COCO's -1 (nothing to match) becomes nan, no prediction 0.0."""
    if stats is None:
        return {name: 0.0 if has_ground_truth else math.nan for name in names}
    return {name: math.nan if value < 0 else float(value) for name, value in zip(names, stats[:3])}


def coco_box_metrics(ground_truth: list[dict], predictions: list[dict]) -> dict[str, float]:
    """COCO box mAP@[.5:.95], AP50 and AP75 of per-image xyxy predictions against per-image ground truth.

    Every image listed in either input is evaluated, so a prediction on an image without boxes is a
    false positive. A ground-truth item may flag boxes in ``iscrowd``: crowd regions, which pycocotools
    treats as ignore regions (a detection matching one counts neither way). Categories are the label ids seen in either input. No prediction at all gives 0.0
    (pycocotools cannot load an empty result list); no ground truth box at all gives nan.
    """
    images: dict[int, list[float]] = {}
    annotations: list[dict] = []
    results: list[dict] = []
    categories: set[int] = set()

    def add_image(image_id: int, boxes: np.ndarray) -> None:
        extent = images.setdefault(image_id, [1.0, 1.0])
        if len(boxes):
            extent[0] = max(extent[0], float(boxes[:, 2].max()))
            extent[1] = max(extent[1], float(boxes[:, 3].max()))

    for item in ground_truth:
        image_id, boxes = int(item["image_id"]), _numpy(item["boxes"], 4)
        labels = _numpy(item["labels"]).astype(int)
        crowd = _numpy(item["iscrowd"]).astype(int) if "iscrowd" in item else np.zeros(len(labels), int)
        add_image(image_id, boxes)
        for box, label, is_crowd in zip(_xyxy_to_xywh(boxes), labels, crowd):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": box.tolist(), "area": float(box[2] * box[3]), "iscrowd": int(is_crowd)})
            categories.add(int(label))
    for item in predictions:
        image_id, boxes = int(item["image_id"]), _numpy(item["boxes"], 4)
        scores, labels = _numpy(item["scores"]), _numpy(item["labels"]).astype(int)
        add_image(image_id, boxes)
        for box, score, label in zip(_xyxy_to_xywh(boxes), scores, labels):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": box.tolist(),
                            "score": float(score)})
            categories.add(int(label))

    dataset = {
        "images": [{"id": i, "width": math.ceil(w), "height": math.ceil(h)} for i, (w, h) in images.items()],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in sorted(categories)],
    }
    stats = _run_cocoeval(dataset, results, "bbox") if results else None
    return _stats_to_dict(stats, ("map", "ap50", "ap75"), bool(annotations))


def coco_keypoint_metrics(ground_truth: list[dict], predictions: list[dict],
                          sigmas: Sequence[float] = COCO_KEYPOINT_SIGMAS) -> dict[str, float]:
    """COCO keypoint AP (OKS@[.5:.95]), AP50 and AP75 of predicted people against ground-truth people.

    One category (person) with K = len(sigmas) keypoints. A ground-truth person with no labelled
    keypoint (all v == 0) is ignored, as COCO does, and so is a crowd region (``iscrowd`` 1). No prediction
    gives 0.0, no ground truth nan.
    """
    num_keypoints = len(sigmas)
    annotations: list[dict] = []
    for item in ground_truth:
        keypoints = _numpy(item["keypoints"], 3)
        if len(keypoints) != num_keypoints:
            raise ValueError(f"ground-truth person has {len(keypoints)} keypoints, sigmas give {num_keypoints}")
        annotations.append({"id": len(annotations) + 1, "image_id": int(item["image_id"]), "category_id": 1,
                            "keypoints": keypoints.reshape(-1).tolist(),
                            "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                            "bbox": _numpy(item["bbox"]).tolist(), "area": float(item["area"]),
                            "iscrowd": int(item.get("iscrowd", 0))})
    results: list[dict] = []
    for item in predictions:
        keypoints = _numpy(item["keypoints"], 3)
        if len(keypoints) != num_keypoints:
            raise ValueError(f"predicted person has {len(keypoints)} keypoints, sigmas give {num_keypoints}")
        results.append({"image_id": int(item["image_id"]), "category_id": 1,
                        "keypoints": keypoints.reshape(-1).tolist(), "score": float(item["score"])})

    image_ids = sorted({a["image_id"] for a in annotations} | {r["image_id"] for r in results})
    dataset = {
        "images": [{"id": i} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    stats = _run_cocoeval(dataset, results, "keypoints", sigmas) if results else None
    return _stats_to_dict(stats, ("oks_ap", "oks_ap50", "oks_ap75"), bool(annotations))


class ConfusionMatrix:
    """Exact segmentation confusion counts: ``matrix[target, prediction]`` (int64, shape (C, C)).

    Counts accumulate on the device of the updates (on ``device`` when given, else where the first
    update lives). To merge processes or shards, sum their ``matrix`` tensors (e.g. ``all_reduce``)
    before ``compute``: no dedicated merge method is needed.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._follow_updates = device is None
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the counts (between evaluation passes)."""
        self.matrix.zero_()

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch of class-id maps (B, H, W); pixels whose target is ``ignore_index`` are skipped."""
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        if self._follow_updates:
            self.matrix = self.matrix.to(target.device)
            self._follow_updates = False
        labelled = target != self.ignore_index
        target, prediction = target[labelled].long(), prediction[labelled].long()
        if target.numel() == 0:
            return
        classes = self.num_classes
        if bool(((target < 0) | (target >= classes) | (prediction < 0) | (prediction >= classes)).any()):
            raise ValueError(f"class ids must lie in [0, {classes}) or equal ignore_index {self.ignore_index}")
        counts = torch.bincount(target * classes + prediction, minlength=classes * classes)
        self.matrix += counts.reshape(classes, classes).to(self.matrix.device)

    def compute(self) -> dict[str, float]:
        """Mean IoU over classes present in target or prediction, and pixel accuracy (nan when empty)."""
        matrix = self.matrix.double()
        true_positive = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - true_positive
        present = union > 0
        total = matrix.sum()
        miou = (true_positive[present] / union[present]).mean().item() if present.any() else math.nan
        pixel_acc = (true_positive.sum() / total).item() if total > 0 else math.nan
        return {"miou": miou, "pixel_acc": pixel_acc}


def depth_errors(prediction: torch.Tensor, target: torch.Tensor, *, min_depth: float = 1e-3,
                 max_depth: float = 80.0, eigen_crop: bool = False) -> dict[str, torch.Tensor]:
    """Per-image Eigen depth errors (each a (B,) tensor) of depth maps (B, H, W) in metres.

    Valid pixels: ``min_depth < target < max_depth`` (0 marks missing ground truth), inside the
    Garg/Eigen crop when ``eigen_crop``. Predictions are clamped to [min_depth, max_depth]. An image
    with no valid pixel gives nan for every metric: callers should drop it before averaging.
    """
    if prediction.shape != target.shape or target.dim() != 3:
        raise ValueError(f"expected prediction and target of one shape (B, H, W), got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    dtype = torch.promote_types(torch.promote_types(prediction.dtype, target.dtype), torch.float32)
    prediction = prediction.to(dtype).clamp(min_depth, max_depth)
    target = target.to(dtype)
    valid = (target > min_depth) & (target < max_depth)
    if eigen_crop:
        height, width = target.shape[-2:]
        top, bottom = int(EIGEN_CROP[0] * height), int(EIGEN_CROP[1] * height)
        left, right = int(EIGEN_CROP[2] * width), int(EIGEN_CROP[3] * width)
        inside = torch.zeros_like(valid)
        inside[:, top:bottom, left:right] = True
        valid &= inside
    weight = valid.to(dtype)
    count = weight.sum(dim=(1, 2))
    target = torch.where(valid, target, torch.ones_like(target))
    prediction = torch.where(valid, prediction, torch.ones_like(prediction))

    def mean(values: torch.Tensor) -> torch.Tensor:
        return (values * weight).sum(dim=(1, 2)) / count

    difference = prediction - target
    ratio = torch.maximum(prediction / target, target / prediction)
    errors = {
        "abs_rel": mean(difference.abs() / target),
        "sq_rel": mean(difference.square() / target),
        "rmse": mean(difference.square()).sqrt(),
        "rmse_log": mean((prediction.log() - target.log()).square()).sqrt(),
    }
    for k in (1, 2, 3):
        errors[f"delta{k}"] = mean((ratio < 1.25**k).to(dtype))
    return errors
