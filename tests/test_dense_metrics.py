"""Dense-task metrics: COCO box / keypoint AP via pycocotools, confusion-matrix mIoU, Eigen depth errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codecloop.tasks.dense_metrics import (
    COCO_KEYPOINT_SIGMAS,
    DEPTH_METRICS,
    ConfusionMatrix,
    coco_box_metrics,
    coco_keypoint_metrics,
    depth_errors,
)


def _approx(**expected: float):
    """COCO precision is tp / (tp + fp + eps), so a perfect AP reads 1 - 2e-16, not 1.0 exactly."""
    return pytest.approx(expected, abs=1e-9)


# ---------------------------------------------------------------- detection


def _one_box_case(predicted_box: list[float], score: float = 0.9) -> tuple[list[dict], list[dict]]:
    ground_truth = [{"image_id": 1, "boxes": [[0.0, 0.0, 10.0, 10.0]], "labels": [1]}]
    predictions = [{"image_id": 1, "boxes": [predicted_box], "scores": [score], "labels": [1]}]
    return ground_truth, predictions


def test_box_perfect_prediction_scores_one_with_tensors_and_a_negative_image():
    boxes_a = torch.tensor([[10.0, 20.0, 110.0, 220.0], [50.0, 50.0, 80.0, 90.0]])
    boxes_b = torch.tensor([[0.0, 0.0, 300.0, 200.0]])
    ground_truth = [
        {"image_id": 7, "boxes": boxes_a, "labels": torch.tensor([1, 3])},
        {"image_id": 8, "boxes": boxes_b, "labels": torch.tensor([2])},
        {"image_id": 9, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    predictions = [
        {"image_id": 7, "boxes": boxes_a, "scores": torch.ones(2), "labels": torch.tensor([1, 3])},
        {"image_id": 8, "boxes": boxes_b.numpy(), "scores": np.ones(1), "labels": np.array([2])},
        {"image_id": 9, "boxes": [], "scores": [], "labels": []},
    ]
    assert coco_box_metrics(ground_truth, predictions) == _approx(map=1.0, ap50=1.0, ap75=1.0)


def test_box_iou_of_exactly_0_6_passes_three_of_ten_thresholds():
    # gt (0,0)-(10,10), prediction shifted 2.5 px: intersection 7.5*10 = 75, union 200 - 75 = 125,
    # IoU = 75/125 = 0.6 exactly. COCO matches when IoU >= threshold (it skips only IoU < t), and
    # np.linspace(.5, .95, 10)[2] == 0.6 exactly, so thresholds 0.5, 0.55, 0.6 give AP 1 and the
    # other seven give AP 0: map = 3/10 = 0.3, ap50 = 1, ap75 = 0.
    metrics = coco_box_metrics(*_one_box_case([2.5, 0.0, 12.5, 10.0]))
    assert metrics == _approx(map=0.3, ap50=1.0, ap75=0.0)


def test_box_false_positive_on_a_negative_image_lowers_ap():
    ground_truth, predictions = _one_box_case([0.0, 0.0, 10.0, 10.0], score=0.9)
    assert coco_box_metrics(ground_truth, predictions)["map"] == pytest.approx(1.0)
    ground_truth.append({"image_id": 2, "boxes": np.zeros((0, 4)), "labels": np.zeros(0)})
    predictions.append({"image_id": 2, "boxes": [[0.0, 0.0, 10.0, 10.0]], "scores": [0.95], "labels": [1]})
    # Ranked: false positive (0.95) then true positive (0.9): precision 0.5 at recall 1, at every IoU.
    assert coco_box_metrics(ground_truth, predictions) == _approx(map=0.5, ap50=0.5, ap75=0.5)


def test_box_no_predictions_gives_zero_and_no_ground_truth_gives_nan():
    ground_truth, predictions = _one_box_case([0.0, 0.0, 10.0, 10.0])
    assert coco_box_metrics(ground_truth, []) == {"map": 0.0, "ap50": 0.0, "ap75": 0.0}
    empty = [{"image_id": 1, "boxes": [], "labels": []}]
    assert all(math.isnan(v) for v in coco_box_metrics(empty, predictions).values())


# ---------------------------------------------------------------- keypoints


def _person(keypoints: np.ndarray, image_id: int = 1, area: float = 10000.0) -> dict:
    return {"image_id": image_id, "keypoints": keypoints, "bbox": [0.0, 0.0, 100.0, 100.0], "area": area}


def test_keypoints_perfect_prediction_scores_one():
    rng = np.random.default_rng(0)
    people = []
    for image_id in (1, 1, 2):
        keypoints = np.concatenate([rng.uniform(0, 100, (17, 2)), np.full((17, 1), 2.0)], axis=1)
        keypoints[3, 2] = 0  # an unlabelled keypoint is skipped by OKS
        people.append(_person(keypoints, image_id))
    predictions = [{"image_id": p["image_id"], "keypoints": torch.from_numpy(p["keypoints"]), "score": 1.0}
                   for p in people]
    assert coco_keypoint_metrics(people, predictions) == _approx(oks_ap=1.0, oks_ap50=1.0, oks_ap75=1.0)


def test_keypoints_known_oks_between_0_5_and_0_75():
    # OKS per keypoint = exp(-d^2 / (2 s^2 k^2)), s^2 = area = 10000, k = 2 * sigma = 0.2:
    # 2 s^2 k^2 = 800, every labelled keypoint moved by d = 20 px: OKS = exp(-400 / 800) = exp(-0.5)
    # = 0.6065, which passes OKS thresholds 0.5, 0.55, 0.6 -> oks_ap = 0.3, ap50 = 1, ap75 = 0.
    sigmas = (0.1, 0.1, 0.1, 0.1)
    truth = np.array([[10.0, 10.0, 2], [40.0, 20.0, 1], [60.0, 70.0, 2], [80.0, 90.0, 0]])
    predicted = truth.copy()
    predicted[:3, 0] += 20.0
    predicted[3, :2] = 1000.0  # unlabelled (v = 0): ignored however far off
    predicted[:, 2] = 1.0
    metrics = coco_keypoint_metrics([_person(truth)], [{"image_id": 1, "keypoints": predicted, "score": 0.8}], sigmas)
    assert metrics == _approx(oks_ap=0.3, oks_ap50=1.0, oks_ap75=0.0)


def test_keypoints_empty_inputs():
    truth = np.array([[10.0, 10.0, 2]] * len(COCO_KEYPOINT_SIGMAS))
    assert coco_keypoint_metrics([_person(truth)], []) == {"oks_ap": 0.0, "oks_ap50": 0.0, "oks_ap75": 0.0}
    with pytest.raises(ValueError, match="keypoints"):
        coco_keypoint_metrics([_person(truth[:5])], [])


# ---------------------------------------------------------------- segmentation


def test_confusion_matrix_hand_computed_2x2():
    confusion = ConfusionMatrix(num_classes=4)
    target = torch.tensor([[[0, 1], [1, 255]]])
    prediction = torch.tensor([[[0, 1], [2, 3]]])
    confusion.update(prediction, target)
    # Labelled pixels (target, prediction): (0,0), (1,1), (1,2); the ignored pixel's prediction 3 is not counted.
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0] = expected[1, 1] = expected[1, 2] = 1
    assert torch.equal(confusion.matrix, expected)
    # IoU: class 0 = 1/1, class 1 = 1/2, class 2 (predicted only) = 0/1, class 3 absent -> excluded.
    metrics = confusion.compute()
    assert metrics["miou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["pixel_acc"] == pytest.approx(2 / 3)


def test_confusion_matrix_perfect_accumulates_and_sums_across_shards():
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 8, 8), generator=generator)
    target[:, 0, 0] = 255
    whole, shards = ConfusionMatrix(5), [ConfusionMatrix(5), ConfusionMatrix(5)]
    whole.update(target.clone(), target)
    shards[0].update(target[:2].clone(), target[:2])
    shards[1].update(target[2:].clone(), target[2:])
    assert torch.equal(shards[0].matrix + shards[1].matrix, whole.matrix)
    assert whole.matrix.dtype == torch.int64 and int(whole.matrix.sum()) == 4 * 63
    assert whole.compute() == {"miou": 1.0, "pixel_acc": 1.0}
    with pytest.raises(ValueError, match="class ids"):
        whole.update(torch.full((1, 2, 2), 5), torch.zeros(1, 2, 2, dtype=torch.long))
    assert all(math.isnan(v) for v in ConfusionMatrix(3).compute().values())


# ---------------------------------------------------------------- depth


def test_depth_perfect_prediction():
    target = torch.rand(2, 6, 7) * 50 + 1
    errors = depth_errors(target.clone(), target)
    assert set(errors) == set(DEPTH_METRICS)
    assert torch.all(errors["abs_rel"] == 0) and torch.all(errors["rmse"] == 0)
    assert torch.all(errors["delta1"] == 1)


def test_depth_hand_computed_with_invalid_pixels_and_an_empty_image():
    target = torch.tensor([[[1.0, 2.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 90.0]]])
    prediction = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]])
    errors = depth_errors(prediction, target)
    # Image 0: valid pixels (p, t) = (1, 1), (3, 2), (2, 4); the t = 0 pixel is missing ground truth.
    assert errors["abs_rel"][0].item() == pytest.approx((0 + 0.5 + 0.5) / 3)
    assert errors["sq_rel"][0].item() == pytest.approx((0 + 1 / 2 + 4 / 4) / 3)
    assert errors["rmse"][0].item() == pytest.approx(math.sqrt((0 + 1 + 4) / 3))
    assert errors["rmse_log"][0].item() == pytest.approx(math.sqrt((math.log(1.5) ** 2 + math.log(0.5) ** 2) / 3))
    assert errors["delta1"][0].item() == pytest.approx(1 / 3)  # ratios 1, 1.5, 2
    assert errors["delta2"][0].item() == pytest.approx(2 / 3)  # 1.5 < 1.5625 < 2
    assert errors["delta3"][0].item() == pytest.approx(2 / 3)  # 2 > 1.953125
    # Image 1: zeros are invalid and 90 m is beyond max_depth = 80, so nothing is valid: nan.
    assert all(torch.isnan(errors[name][1]) for name in DEPTH_METRICS)


def test_depth_eigen_crop_excludes_pixels_outside_it():
    # H = 10, W = 30: crop rows int(4.08)=4 .. int(9.92)=9 (exclusive), cols int(1.08)=1 .. int(28.92)=28.
    target = torch.full((1, 10, 30), 10.0)
    prediction = target.clone()
    prediction[0, 3, 5] = prediction[0, 9, 5] = prediction[0, 5, 0] = prediction[0, 5, 28] = 20.0
    assert depth_errors(prediction, target)["abs_rel"].item() == pytest.approx(4 / 300)
    assert depth_errors(prediction, target, eigen_crop=True)["abs_rel"].item() == 0.0
    prediction[0, 4, 1] = prediction[0, 8, 27] = 20.0  # the crop's corners are inside it
    assert depth_errors(prediction, target, eigen_crop=True)["abs_rel"].item() == pytest.approx(2 / (5 * 27))


def test_depth_batch_matches_per_image_and_clamps_prediction():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(3, 5, 6, generator=generator) * 60
    prediction = torch.rand(3, 5, 6, generator=generator) * 100 - 5  # some below 0 and above 80: clamped
    batched = depth_errors(prediction, target)
    for i in range(3):
        single = depth_errors(prediction[i:i + 1], target[i:i + 1])
        for name in DEPTH_METRICS:
            assert torch.allclose(batched[name][i:i + 1], single[name])
    assert all(torch.isfinite(batched[name]).all() for name in DEPTH_METRICS)


def test_depth_loss_equals_the_masked_formula_and_is_zero_without_valid_pixels():
    """The scale-invariant log loss (masked sums, no boolean index) against the formula over the valid
    pixels only, computed in float64 numpy; invalid pixels may hold anything, even inf or NaN."""
    from codecloop.tasks.depth import SCALE_INVARIANCE, scale_invariant_log_loss

    rng = np.random.default_rng(0)
    prediction = torch.tensor(rng.uniform(0.5, 20.0, (2, 6, 7)), dtype=torch.float32)
    target = torch.tensor(rng.uniform(0.5, 20.0, (2, 6, 7)), dtype=torch.float32)
    valid = torch.tensor(rng.random((2, 6, 7)) < 0.6)
    invalid = int((~valid).sum())
    target[~valid] = torch.tensor([0.0, float("inf"), float("nan")]).repeat(invalid)[:invalid]
    mask = valid.numpy()
    d = np.log(prediction.numpy()[mask].astype(np.float64)) - np.log(target.numpy()[mask].astype(np.float64))
    expected = math.sqrt(np.mean(d**2) - SCALE_INVARIANCE * np.mean(d) ** 2)
    assert scale_invariant_log_loss(prediction, target, valid).item() == pytest.approx(expected, rel=1e-5)

    prediction.requires_grad_(True)
    none = scale_invariant_log_loss(prediction, target, torch.zeros_like(valid))
    none.backward()
    assert none.item() == 0.0 and torch.equal(prediction.grad, torch.zeros_like(prediction))
