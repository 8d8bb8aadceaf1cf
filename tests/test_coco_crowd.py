"""COCO detection as the official evaluation scores it: crowd regions ignored, negatives evaluated,
grayscale images read. The task's mAP is checked against pycocotools run by hand on the JSON file."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from codecloop.dali_pipes.codecs import JPEG
from codecloop.dali_pipes import PipelineRuntime
from codecloop.tasks.dense_metrics import coco_box_metrics
from codecloop.tasks.detection import DetectionTask
from codecloop.synthetic.datasets import make_synthetic

CROWD_BOX = [2.0, 2.0, 30.0, 24.0]  # x, y, w, h on the first val image


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Six val images (the sixth has no object: a negative) and a crowd region on the first."""
    root = make_synthetic("detection", tmp_path_factory.mktemp("crowd") / "coco", train=1, val=6, height=64, width=80)
    json_path = root / "annotations" / "instances_val.json"
    coco = json.loads(json_path.read_text())
    coco["annotations"].append({"id": 9999, "image_id": coco["images"][0]["id"], "category_id": 1, "bbox": CROWD_BOX,
                                "area": CROWD_BOX[2] * CROWD_BOX[3], "iscrowd": 1, "segmentation": {}})
    json_path.write_text(json.dumps(coco))
    return root


def eval_batch(task: DetectionTask) -> tuple[dict[str, torch.Tensor], list[str]]:
    index = task.sample_index("val")
    batches = task.batches(index, training=False, spec=JPEG.parse_spec("none"), codec=JPEG,
                           runtime=PipelineRuntime(batch_size=len(index)))
    return next(iter(batches)), index.files


def made_up_detections(task: DetectionTask, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per image: each object found with a jittered box and a random score, three detections inside the
    crowd region (the crowd's image, ranked first) and a false positive (the negative image), in view pixels."""
    rng = np.random.default_rng(7)
    scale = batch["points_mt"][:, :, :2].diagonal(dim1=1, dim2=2)  # view pixels per image pixel, (B, 2)
    detections = []
    for image, truth in enumerate(task.host_targets(batch)):
        boxes, labels = truth["boxes"].numpy(), truth["labels"].numpy()
        size = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
        boxes = boxes + rng.uniform(-0.2, 0.2, boxes.shape) * size
        if image == 0:
            x, y, w, h = CROWD_BOX
            inside = np.array([[x, y, x + w / 2, y + h / 2], [x + 4, y + 4, x + w - 4, y + h - 4],
                               [x + w / 2, y + 2, x + w, y + h]]) * np.tile(scale[image].numpy(), 2)
            boxes, labels = np.concatenate([boxes, inside]), np.concatenate([labels, [1, 1, 1]])
        if len(truth["boxes"]) == 0:
            boxes, labels = np.array([[5.0, 5.0, 30.0, 25.0]]), np.array([2])
        scores = rng.uniform(0.3, 0.9, len(boxes))
        if image == 0:
            scores[-3:] = 0.99  # ranked first: as false positives they would cost precision at every recall
        detections.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                           "scores": torch.tensor(scores, dtype=torch.float32)})
    return detections


def by_hand(dataset: Path, batch: dict[str, torch.Tensor], files: list[str], detections: list[dict]) -> float:
    """pycocotools on the JSON file itself, the detections mapped back to image pixels."""
    json_path = dataset / "annotations" / "instances_val.json"
    ids = {str(dataset / "val" / image["file_name"]): image["id"] for image in json.loads(json_path.read_text())["images"]}
    label_to_category = {label: category for category, label in DetectionTask(dataset).label_of.items()}
    results = []
    for index, matrix, found in zip(batch["index"].tolist(), batch["points_mt"], detections):
        diagonal, shift = matrix[:, :2].diagonal(), matrix[:, 2]
        corners = (found["boxes"].reshape(-1, 2) - shift) / diagonal
        for (x0, y0, x1, y1), score, label in zip(corners.reshape(-1, 4).tolist(), found["scores"].tolist(),
                                                  found["labels"].tolist()):
            results.append({"image_id": ids[files[index]], "category_id": label_to_category[label],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(json_path))
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_crowd_regions_are_ignored_as_pycocotools_does(dataset):
    task = DetectionTask(dataset, input_size="48x64")
    index = task.sample_index("val")
    assert index.counts["crowd_regions"] == 1 and index.counts["images_without_boxes"] == 1
    batch, files = eval_batch(task)
    assert all(not truth.get("iscrowd", torch.zeros(0)).any() for truth in task.targets(batch))  # never trained on
    detections = made_up_detections(task, batch)
    accumulator = task.metric_accumulator()
    accumulator.update(detections, batch)
    found = accumulator.compute([accumulator.state()])["map"]
    assert 0.2 < found < 0.95
    assert found == pytest.approx(by_hand(dataset, batch, files, detections), abs=1e-6)
    without_crowd = [{key: value for key, value in truth.items() if key != "iscrowd"}
                     for truth in task.host_targets(batch)]
    dropped = coco_box_metrics([{"image_id": i, **truth} for i, truth in zip(batch["index"].tolist(), without_crowd)],
                               [{"image_id": i, **found} for i, found in zip(batch["index"].tolist(), detections)])
    assert dropped["map"] < found - 0.01  # the crowd's three detections would be false positives


def test_grayscale_images_are_read_as_rgb(dataset, tmp_path):
    import shutil

    root = Path(shutil.copytree(dataset, tmp_path / "gray"))
    json_path = root / "annotations" / "instances_val.json"
    coco = json.loads(json_path.read_text())
    first = root / "val" / coco["images"][0]["file_name"]
    with Image.open(first) as image:
        image.convert("L").save(first.with_suffix(".jpg"), quality=95)
    first.unlink()
    coco["images"][0]["file_name"] = first.with_suffix(".jpg").name
    json_path.write_text(json.dumps(coco))
    task = DetectionTask(root, input_size="48x64")
    batch, files = eval_batch(task)
    gray = batch["image"][files.index(str(first.with_suffix(".jpg")))]
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert len(task.host_targets(batch)[files.index(str(first.with_suffix(".jpg")))]["boxes"]) > 0


def test_format_names_the_layouts_a_task_reads(dataset, run_cli):
    status, _, err = run_cli("check-data", "--task", "detection", "--data", dataset, "--format", "voc")
    assert status == 2 and "the detection task reads coco; not 'voc'" in err
    status, out, err = run_cli("check-data", "--task", "detection", "--data", dataset, "--format", "coco")
    assert status == 0, err
    assert "val: 6 samples, 0 file(s) skipped" in out and "crowd_regions 1" in out and "images_without_boxes 1" in out


def test_pose_crowd_regions_are_ignored_as_pycocotools_does(tmp_path):
    """Keypoint AP with a prediction inside a crowd region: ignored as pycocotools run by hand on the
    JSON ignores it (the crowd rides along as ground truth), not a false positive."""
    from codecloop.tasks.pose import PoseTask

    root = make_synthetic("pose", tmp_path / "pose", train=1, val=3, height=96, width=80)
    json_path = root / "annotations" / "person_keypoints_val.json"
    coco = json.loads(json_path.read_text())
    crowd_image = coco["images"][0]["id"]
    coco["annotations"].append({"id": 9999, "image_id": crowd_image, "category_id": 1, "bbox": [2.0, 2.0, 20.0, 30.0],
                                "area": 600.0, "iscrowd": 1, "num_keypoints": 0, "keypoints": [0] * 51,
                                "segmentation": {}})
    json_path.write_text(json.dumps(coco))
    task = PoseTask(root, input_size="64x48")
    index = task.sample_index("val")
    batch = next(iter(task.batches(index, training=False, spec=JPEG.parse_spec("none"), codec=JPEG,
                                   runtime=PipelineRuntime(batch_size=len(index)))))
    keypoints = torch.stack([person["keypoints"][0] for person in task.people(batch)])
    accumulator = task.metric_accumulator()
    accumulator.update(task.heatmaps(keypoints, (16, 12), 4.0), batch)
    in_crowd = np.zeros((17, 3), np.float32)
    in_crowd[:, 0], in_crowd[:, 1], in_crowd[:, 2] = np.linspace(4, 20, 17), np.linspace(4, 30, 17), 1
    accumulator.predictions.append({"image_id": crowd_image, "keypoints": in_crowd, "score": 2.0})
    truth, predictions, images = accumulator.state()
    assert sum(person["iscrowd"] for person in truth) == 1
    found = accumulator.compute([accumulator.state()])
    results = [{"image_id": p["image_id"], "category_id": 1, "keypoints": np.asarray(p["keypoints"]).ravel().tolist(),
                "score": float(p["score"])} for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(json_path))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert found["oks_ap"] == pytest.approx(float(evaluation.stats[0]), abs=1e-6)
    without_crowd = accumulator.compute([([p for p in truth if not p["iscrowd"]], predictions, images)])
    assert without_crowd["oks_ap"] < found["oks_ap"] - 0.01
