"""Metrics of the dense tasks: COCO box AP, COCO keypoint (OKS) AP, segmentation mIoU, KITTI depth errors.

COCO AP comes from pycocotools (built in memory, its printing silenced) so numbers match published
ones; its intervals resample pycocotools' per-image results and accumulate each resample with pycocotools.
Segmentation counts each image's per-class true positives, labelled and predicted pixels exactly
(`image_class_counts`): their sum is the confusion matrix's diagonal and margins, which is all mIoU and
pixel accuracy need (`ConfusionMatrix` keeps a whole matrix). Depth errors are per image (the dataset value
is the mean over images, the Eigen/KITTI protocol).
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Sequence

import numpy as np
import torch

from codecloop.tasks.bootstrap import COCO_RESAMPLES, resample_counts

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


def _cocoeval(dataset: dict, results: list[dict], iou_type: str, sigmas: Sequence[float] | None = None):
    """A COCOeval of ``results`` against an in-memory ground truth, evaluated per image (not yet accumulated),
    pycocotools' printing suppressed."""
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
    return evaluator


def _summary(evaluator) -> np.ndarray:
    """COCOeval's stats of its current per-image results."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


def _resampled_stats(evaluator, resamples: int) -> np.ndarray:
    """COCO stats on paired bootstrap resamples of the evaluated images (`codecloop.tasks.bootstrap`), at most
    `COCO_RESAMPLES`: the per-image results of each resample (an image drawn twice counts twice) through
    pycocotools' own accumulate and summarize. ``(resamples, stats)``."""
    image_ids = list(evaluator.params.imgIds)
    per_image, stats = evaluator.evalImgs, []
    blocks = len(per_image) // max(1, len(image_ids))  # evalImgs runs category x area range x image
    for counts in resample_counts(len(image_ids), min(resamples, COCO_RESAMPLES)):
        for row in counts:
            picks = np.repeat(np.arange(len(image_ids)), row)
            evaluator.evalImgs = [per_image[block * len(image_ids) + i] for block in range(blocks) for i in picks]
            evaluator.params.imgIds = evaluator._paramsEval.imgIds = [image_ids[i] for i in picks]
            stats.append(np.array(_summary(evaluator)))
    evaluator.evalImgs, evaluator.params.imgIds, evaluator._paramsEval.imgIds = per_image, image_ids, image_ids
    return np.stack(stats) if stats else np.empty((0, 12))


def _coco_metrics(evaluator, names: tuple[str, str, str], has_ground_truth: bool,
                  resamples: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The first three COCO stats by name (COCO's -1, nothing to match, becomes nan; no prediction at all, no
    evaluator, gives 0.0) and, with `resamples`, their replicates."""
    if evaluator is None:
        value = 0.0 if has_ground_truth else math.nan
        resampled = min(resamples, COCO_RESAMPLES)
        return dict.fromkeys(names, value), {name: np.full(resampled, value) for name in names} if resampled else {}
    metrics = {name: math.nan if value < 0 else float(value) for name, value in zip(names, _summary(evaluator)[:3])}
    if not resamples:
        return metrics, {}
    stats = _resampled_stats(evaluator, resamples)[:, :3]
    return metrics, {name: np.where(stats[:, column] < 0, np.nan, stats[:, column]) for column, name in enumerate(names)}


def coco_box_metrics(ground_truth: list[dict], predictions: list[dict]) -> dict[str, float]:
    """COCO box mAP@[.5:.95], AP50 and AP75 of per-image xyxy predictions against per-image ground truth
    (`coco_box_results`)."""
    return coco_box_results(ground_truth, predictions)[0]


def coco_box_results(ground_truth: list[dict], predictions: list[dict],
                     resamples: int = 0) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """COCO box mAP@[.5:.95], AP50 and AP75 of per-image xyxy predictions against per-image ground truth, and
    with `resamples` their paired-bootstrap replicates over the images (`_resampled_stats`).

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
    evaluator = _cocoeval(dataset, results, "bbox") if results else None
    return _coco_metrics(evaluator, ("map", "ap50", "ap75"), bool(annotations), resamples)


def coco_keypoint_metrics(ground_truth: list[dict], predictions: list[dict],
                          sigmas: Sequence[float] = COCO_KEYPOINT_SIGMAS) -> dict[str, float]:
    """COCO keypoint AP (OKS@[.5:.95]), AP50 and AP75 of predicted people against ground-truth people
    (`coco_keypoint_results`)."""
    return coco_keypoint_results(ground_truth, predictions, sigmas)[0]


def coco_keypoint_results(ground_truth: list[dict], predictions: list[dict],
                          sigmas: Sequence[float] = COCO_KEYPOINT_SIGMAS, resamples: int = 0,
                          images: Sequence[int] = ()) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """COCO keypoint AP (OKS@[.5:.95]), AP50 and AP75 of predicted people against ground-truth people, and with
    `resamples` their paired-bootstrap replicates over the images: those of either input and `images` (every
    image evaluated, so that the resampled set is the same whatever was predicted).

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

    image_ids = sorted({a["image_id"] for a in annotations} | {r["image_id"] for r in results} | set(map(int, images)))
    dataset = {
        "images": [{"id": i} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    evaluator = _cocoeval(dataset, results, "keypoints", sigmas) if results else None
    return _coco_metrics(evaluator, ("oks_ap", "oks_ap50", "oks_ap75"), bool(annotations), resamples)


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
        matrix = self.matrix.double().cpu().numpy()
        metrics = class_count_metrics(np.stack([matrix.diagonal(), matrix.sum(1), matrix.sum(0)]))
        return {name: float(value) for name, value in metrics.items()}


def image_class_counts(prediction: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int = 255) -> torch.Tensor:
    """Each image's per-class true positives, labelled and predicted pixels of class-id maps (B, H, W):
    ``(B, 3, num_classes)`` int64, pixels whose target is ``ignore_index`` skipped. The rows of a confusion
    matrix's diagonal, row sums and column sums, per image: what mIoU and pixel accuracy need."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
    images = target.shape[0]
    labelled = target != ignore_index
    image = torch.arange(images, device=target.device).view(-1, *[1] * (target.dim() - 1)).expand_as(target)
    target, prediction, image = target[labelled].long(), prediction[labelled].long(), image[labelled]
    if bool(((target < 0) | (target >= num_classes) | (prediction < 0) | (prediction >= num_classes)).any()):
        raise ValueError(f"class ids must lie in [0, {num_classes}) or equal ignore_index {ignore_index}")
    size = images * num_classes
    truth, predicted = image * num_classes + target, image * num_classes + prediction
    counts = [torch.bincount(truth[target == prediction], minlength=size), torch.bincount(truth, minlength=size),
              torch.bincount(predicted, minlength=size)]
    return torch.stack([count.view(images, num_classes) for count in counts], dim=1)


def class_count_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """mIoU over the classes present in target or prediction, and pixel accuracy, from summed class counts
    ``(..., 3, classes)`` (`image_class_counts`); one value per leading index, nan where nothing is labelled."""
    counts = np.asarray(counts, np.float64)
    true_positive, labelled, predicted = counts[..., 0, :], counts[..., 1, :], counts[..., 2, :]
    union = labelled + predicted - true_positive
    present = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, true_positive / np.where(present, union, 1.0), 0.0)
        miou = iou.sum(-1) / present.sum(-1)
        pixel_acc = true_positive.sum(-1) / labelled.sum(-1)
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
