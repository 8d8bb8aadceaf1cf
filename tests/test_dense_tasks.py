"""Detection, segmentation, pose and depth: readers, target geometry, metrics, CLI runs and bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.codecs import H264, JPEG
from codecloop.dali_pipes.dense import DenseBatches, DenseGeometry, DenseLayout, DenseSample
from codecloop.tasks.depth import DepthTask
from codecloop.tasks.detection import DetectionTask
from codecloop.tasks.pose import PoseTask, flip_permutation
from codecloop.tasks.segmentation import SegmentationTask, read_mask
from codecloop.synthetic.datasets import COCO_KEYPOINTS, make_synthetic

TASKS = {"detection": DetectionTask, "segmentation": SegmentationTask, "pose": PoseTask, "depth": DepthTask}
CLI = {
    "detection": ["--model", "fasterrcnn_mobilenet_v3_large_fpn", "--input_size", "96"],
    "segmentation": ["--model", "unet_test_efficientnet", "--input_size", "48x64"],
    "pose": ["--model", "simplebaseline_test_efficientnet", "--input_size", "64x48"],
    "depth": ["--model", "unet_test_efficientnet", "--input_size", "48x64"],
}
COMMON = ["--wandb", "disabled", "--progress", "false", "--num_threads", "2", "--batch_size", "4"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {task: make_synthetic(task, root / task, train=8, val=4, height=64, width=80) for task in TASKS}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# --- readers -------------------------------------------------------------------------------------


def test_detection_reader_round_trip(synthetic):
    task = DetectionTask(synthetic["detection"], input_size="96")
    index = task.sample_index("train")
    coco = _json(synthetic["detection"] / "annotations" / "instances_train.json")
    assert len(index) == len(coco["images"]) == 8
    for image, path, annotation in zip(coco["images"], index.files, index.annotations):
        expected = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        assert path.endswith(image["file_name"])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in expected)], np.float32)
        np.testing.assert_allclose(annotation["boxes"], boxes.reshape(-1, 4))
        assert annotation["labels"].tolist() == [a["category_id"] for a in expected]
    assert index.counts["images_without_boxes"] == sum(
        not any(a["image_id"] == image["id"] for a in coco["annotations"]) for image in coco["images"]) >= 1
    assert task.num_classes == 4


def test_segmentation_and_depth_readers_round_trip(synthetic):
    segmentation = SegmentationTask(synthetic["segmentation"], input_size="48x64")
    index = segmentation.sample_index("val")
    assert segmentation.classes == ["background", "rectangle", "ellipse", "triangle"]
    mask_path = index.annotations[0]["mask"]
    assert Path(mask_path).name == Path(index.files[0]).name
    np.testing.assert_array_equal(segmentation.load_targets(index, 0)["mask"], np.asarray(Image.open(mask_path)))
    depth = DepthTask(synthetic["depth"], input_size="48x64")
    index = depth.sample_index("val")
    stored = np.asarray(Image.open(index.annotations[0]["depth"]))
    np.testing.assert_allclose(depth.load_targets(index, 0)["depth"], stored / 256.0)


def test_pose_reader_round_trip(synthetic):
    task = PoseTask(synthetic["pose"], input_size="64x48")
    coco = _json(synthetic["pose"] / "annotations" / "person_keypoints_train.json")
    people = [a for a in coco["annotations"] if any(a["keypoints"][2::3])]
    index = task.sample_index("train")
    assert len(index) == len(people)
    first = people[0]
    keypoints = np.array(first["keypoints"], np.float32).reshape(17, 3)
    np.testing.assert_allclose(index.annotations[0]["points"][2:], keypoints[:, :2])
    assert index.annotations[0]["visibility"].tolist() == keypoints[:, 2].astype(int).tolist()
    assert index.targets["gt_keypoints"][0, 0].numpy().tolist() == keypoints.tolist()
    left, right = COCO_KEYPOINTS.index("left_wrist"), COCO_KEYPOINTS.index("right_wrist")
    assert flip_permutation(COCO_KEYPOINTS)[left] == right and flip_permutation(COCO_KEYPOINTS)[0] == 0


# --- target geometry -----------------------------------------------------------------------------


def _crop_of(matrix: np.ndarray, geometry: DenseGeometry) -> tuple[float, float, float, float, bool]:
    """The crop box and flip a batch's ``points_mt`` encodes."""
    scale_x, scale_y = abs(matrix[0, 0]), matrix[1, 1]
    mirror = matrix[0, 0] < 0
    x0 = (matrix[0, 2] - geometry.width) / scale_x if mirror else -matrix[0, 2] / scale_x
    y0 = -matrix[1, 2] / scale_y
    return x0, y0, x0 + geometry.width / scale_x, y0 + geometry.height / scale_y, mirror


def test_targets_follow_crop_flip_resize(tmp_path):
    """Masks, depth and points after a random crop + flip + resize equal a hand computation."""
    height, width = 50, 70
    rows, cols = np.mgrid[:height, :width]
    mask = ((rows * 7 + cols) % 250).astype(np.uint8)
    depth = (rows * 100 + cols).astype(np.float32)
    points = np.array([[10.0, 5.0], [40.5, 30.25], [69.0, 49.0]], np.float32)
    Image.fromarray(np.dstack([mask] * 3)).save(tmp_path / "image.png")
    geometry = DenseGeometry(24, 32, min_scale=0.3)
    layout = DenseLayout(rasters=("mask", "depth"), points=True)
    batches = DenseBatches([DenseSample(str(tmp_path / "image.png"))] * 8, runtime=PipelineRuntime(batch_size=8,
                           seed=3), layout=layout, load_targets=lambda _: {"mask": mask, "depth": depth,
                           "points": points}, training=True, spec=JPEG.parse_spec("none"), codec=JPEG,
                           geometry=geometry,)
    batch = next(iter(batches))
    assert batch["mirror"].min() == 0 and batch["mirror"].max() == 1
    out_rows, out_cols = np.mgrid[:geometry.height, :geometry.width]
    for sample in range(8):
        x0, y0, x1, y1, mirror = _crop_of(batch["points_mt"][sample].numpy(), geometry)
        assert bool(batch["mirror"][sample]) == mirror
        source_cols = np.floor(x0 + (out_cols + 0.5) * (x1 - x0) / geometry.width).astype(int).clip(0, width - 1)
        source_rows = np.floor(y0 + (out_rows + 0.5) * (y1 - y0) / geometry.height).astype(int).clip(0, height - 1)
        if mirror:
            source_cols = source_cols[:, ::-1]
        expected = mask[source_rows, source_cols]
        assert (batch["mask"][sample].numpy() == expected).mean() > 0.97
        assert (batch["depth"][sample].numpy() == depth[source_rows, source_cols]).mean() > 0.97
        moved_x = (points[:, 0] - x0) * geometry.width / (x1 - x0)
        moved = np.stack([geometry.width - moved_x if mirror else moved_x,
                          (points[:, 1] - y0) * geometry.height / (y1 - y0)], axis=1)
        np.testing.assert_allclose(batch["points"][sample].numpy(), moved, atol=1e-3)


def test_detection_boxes_reordered_and_clipped_after_flip(synthetic):
    task = DetectionTask(synthetic["detection"], input_size="96", min_scale=0.5)
    index = task.sample_index("train")
    from codecloop.dali_pipes import PipelineRuntime

    batch = next(iter(task.batches(index, training=True, spec=JPEG.parse_spec("50"), codec=JPEG,
                                   runtime=PipelineRuntime(batch_size=8, seed=1))))
    mirrored_with_boxes = 0
    for sample, target in enumerate(task.targets(batch)):
        boxes = target["boxes"]
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert ((boxes >= 0) & (boxes <= 96)).all()
        mirrored_with_boxes += bool(batch["mirror"][sample]) and len(boxes) > 0
        assert len(target["labels"]) == len(boxes)
        original = index.annotations[int(batch["index"][sample])]["boxes"]
        assert len(boxes) <= len(original)
    assert mirrored_with_boxes >= 1


def test_pose_flip_swaps_left_and_right(synthetic):
    task = PoseTask(synthetic["pose"], input_size="64x48")
    index = task.sample_index("train")
    from codecloop.dali_pipes import PipelineRuntime

    batch = next(iter(task.batches(index, training=True, spec=JPEG.parse_spec("none"), codec=JPEG,
                                   runtime=PipelineRuntime(batch_size=16, seed=2))))
    people = task.people(batch)
    left, right = COCO_KEYPOINTS.index("left_ankle"), COCO_KEYPOINTS.index("right_ankle")
    checked = 0
    for sample, person in enumerate(people):
        matrix = batch["points_mt"][sample]
        original = index.annotations[int(batch["index"][sample])]["points"][2:]
        source = right if batch["mirror"][sample] else left
        if index.annotations[int(batch["index"][sample])]["visibility"][source] == 0:
            continue
        expected = matrix[:, :2] @ torch.tensor(original[source]) + matrix[:, 2]
        torch.testing.assert_close(person["keypoints"][0, left, :2], expected, atol=1e-3, rtol=0)
        checked += 1
    assert checked >= 2 and batch["mirror"].sum() >= 1


# --- metrics through the tasks -------------------------------------------------------------------


def _eval_batch(task, split: str = "val", spec=None, codec=JPEG):
    from codecloop.dali_pipes import PipelineRuntime

    index = task.sample_index(split)
    return next(iter(task.batches(index, training=False, spec=spec or codec.parse_spec("none"), codec=codec,
                                  runtime=PipelineRuntime(batch_size=len(index)))))


def test_perfect_predictions_score_one(synthetic):
    detection = DetectionTask(synthetic["detection"], input_size="96")
    batch = _eval_batch(detection)
    found = [{**target, "scores": torch.ones(len(target["boxes"]))} for target in detection.targets(batch)]
    accumulator = detection.metric_accumulator()
    accumulator.update(found, batch)
    assert accumulator.compute([accumulator.state()])["map"] == pytest.approx(1.0)

    segmentation = SegmentationTask(synthetic["segmentation"], input_size="48x64")
    batch = _eval_batch(segmentation)
    mask = batch["mask"].long()
    logits = torch.nn.functional.one_hot(mask.clamp_max(3), 4).permute(0, 3, 1, 2).float()
    accumulator = segmentation.metric_accumulator()
    accumulator.update(logits, batch)
    assert accumulator.compute([accumulator.state()]) == {"miou": pytest.approx(1.0), "pixel_acc": pytest.approx(1.0)}

    depth = DepthTask(synthetic["depth"], input_size="48x64")
    batch = _eval_batch(depth)
    metrics = depth.sample_metrics(batch["depth"].float(), batch)
    assert torch.nanmean(metrics["abs_rel"]) == 0 and torch.nanmean(metrics["delta1"]) == 1

    pose = PoseTask(synthetic["pose"], input_size="128x96")
    batch = _eval_batch(pose)
    keypoints = torch.stack([person["keypoints"][0] for person in pose.people(batch)])
    heatmaps = pose.heatmaps(keypoints, (32, 24), 4.0)
    accumulator = pose.metric_accumulator()
    accumulator.update(heatmaps, batch)
    results = accumulator.compute([accumulator.state()])
    assert results["oks_ap50"] == pytest.approx(1.0) and results["oks_ap"] > 0.6


# --- command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_train_then_sweep_cli(task, synthetic, tmp_path, run_cli):
    train_dir, sweep_dir = tmp_path / "train", tmp_path / "sweep"
    status, _, err = run_cli("train", "--task", task, "--data", synthetic[task], *CLI[task], *COMMON,
                             "--max_steps", "2", "--level", "5-95", "--eval_level", "30", "--out", train_dir)
    assert status == 0, err
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors"):
        assert (train_dir / name).is_file(), name
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    primary = TASKS[task].primary_metric
    assert any(f"eval/{primary}" in record for record in records)
    assert any("codec/level_mean" in record for record in records)
    status, _, err = run_cli("sweep", "--task", task, "--data", synthetic[task], *CLI[task], *COMMON,
                             "--checkpoint", train_dir, "--levels", "10,50", "--out", sweep_dir)
    assert status == 0, err
    rows = _rows(sweep_dir / "sweep.csv")
    assert [row["level"] for row in rows] == ["clean", "10", "50"]
    assert all(primary in row and row["n"] == rows[0]["n"] != "0" for row in rows)
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    assert "| clean |" in (sweep_dir / "report.md").read_text()


def test_h264_sweep_of_a_dense_task(synthetic, tmp_path, run_cli):
    out = tmp_path / "h264"
    status, _, err = run_cli("sweep", "--task", "segmentation", "--data", synthetic["segmentation"],
                             *CLI["segmentation"], *COMMON, "--codec", "h264", "--levels", "23,46", "--out", out)
    assert status == 0, err
    rows = _rows(out / "sweep.csv")
    assert [(row["codec"], row["level"]) for row in rows] == [("none", "clean"), ("h264", "23"), ("h264", "46")]


def test_model_names_listed_and_validated(run_cli, synthetic, capsys):
    with pytest.raises(SystemExit):
        run_cli("train", "--task", "detection", "--help")
    assert "ssdlite320_mobilenet_v3_large" in capsys.readouterr().out
    status, _, err = run_cli("train", "--task", "segmentation", "--data", synthetic["segmentation"],
                             "--model", "unet_nonexistent", *COMMON)
    assert status == 2 and "unet_nonexistent" in err and "lraspp_mobilenet_v3_large" in err


def test_make_synthetic_cli(tmp_path, run_cli):
    status, out, _ = run_cli("make-synthetic", "--task", "depth", "--out", tmp_path / "d", "--train", "2",
                             "--val", "1", "--size", "40x48")
    assert status == 0 and "codecloop experiment --task depth" in out
    assert len(list((tmp_path / "d" / "depth" / "train").glob("*.png"))) == 2
    status, _, err = run_cli("make-synthetic", "--task", "depth", "--out", tmp_path / "d")
    assert status == 2 and str(tmp_path / "d") in err


# --- bad input -----------------------------------------------------------------------------------


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def test_bad_boxes_clipped_dropped_and_counted(synthetic, tmp_path):
    root = _copy(synthetic["detection"], tmp_path)
    path = root / "annotations" / "instances_train.json"
    coco = _json(path)
    image = coco["images"][0]
    coco["annotations"] += [
        {"id": 900, "image_id": image["id"], "category_id": 1, "bbox": [-10, -5, 30, 20], "area": 600, "iscrowd": 0},
        {"id": 901, "image_id": image["id"], "category_id": 2, "bbox": [10, 10, 0, 15], "area": 0, "iscrowd": 0},
        {"id": 902, "image_id": image["id"], "category_id": 2, "bbox": [500, 500, 9, 9], "area": 81, "iscrowd": 0},
    ]
    path.write_text(json.dumps(coco))
    index = DetectionTask(root, input_size="96").sample_index("train")
    assert index.counts["boxes_clipped"] == 1 and index.counts["boxes_dropped"] == 2
    np.testing.assert_allclose(index.annotations[0]["boxes"][-1], [0, 0, 20, 15])


def test_missing_images_listed(synthetic, tmp_path):
    root = _copy(synthetic["detection"], tmp_path)
    for name in ("000001.png", "000002.png"):
        (root / "val" / name).unlink()
    with pytest.raises(FileNotFoundError, match="2 missing image.*000001.png"):
        DetectionTask(root, input_size="96").sample_index("val")


def test_bad_masks_name_the_file(synthetic, tmp_path):
    root = _copy(synthetic["segmentation"], tmp_path)
    task = SegmentationTask(root, input_size="48x64")
    mask = root / "masks" / "train" / "000000.png"
    Image.fromarray(np.full((10, 12), 1, np.uint8)).save(mask)
    with pytest.raises(ValueError, match="000000.png is 12x10"):
        task.sample_index("train")
    Image.fromarray(np.full((64, 80), 7, np.uint8)).save(mask)
    with pytest.raises(ValueError, match="000000.png holds class id 7, beyond the 4 classes"):
        read_mask(str(mask), task.num_classes)


def test_bad_mask_stops_training_naming_it(synthetic, tmp_path, run_cli):
    root = _copy(synthetic["segmentation"], tmp_path)
    Image.fromarray(np.full((64, 80), 9, np.uint8)).save(root / "masks" / "train" / "000003.png")
    status, _, err = run_cli("train", "--task", "segmentation", "--data", root, *CLI["segmentation"], *COMMON,
                             "--max_steps", "2", "--out", tmp_path / "run")
    assert status != 0 and "000003.png holds class id 9" in err


def test_depth_with_wrong_dtype_names_the_file(synthetic, tmp_path):
    root = _copy(synthetic["depth"], tmp_path)
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(root / "depth" / "val" / "000001.png")
    with pytest.raises(ValueError, match="000001.png is mode L .*16-bit"):
        DepthTask(root, input_size="48x64").sample_index("val")
    (root / "depth" / "val" / "000001.png").unlink()
    np.save(root / "depth" / "val" / "000001.npy", np.zeros((64, 80), np.int32))
    with pytest.raises(ValueError, match="000001.npy is int32"):
        DepthTask(root, input_size="48x64").sample_index("val")


def test_h264_dense_batches(synthetic):
    task = SegmentationTask(synthetic["segmentation"], input_size="48x64")
    batch = _eval_batch(task, spec=H264.parse_spec("40"), codec=H264)
    assert batch["codec_level"].tolist() == [40] * len(batch["index"]) and batch["image"].shape[1:] == (3, 48, 64)


def test_keypoint_rcnn_trains_and_decodes(synthetic):
    """Image-level pose: every person's box and keypoints become Keypoint R-CNN targets; the
    predictions come back in original image coordinates, one result per detected person."""
    from codecloop.dali_pipes import PipelineRuntime

    task = PoseTask(synthetic["pose"], model="keypointrcnn_resnet50_fpn", input_size="64")
    index = task.sample_index("train")
    assert len(index) == 8 and index.targets["gt_count"].max() >= 2
    batch = next(iter(task.batches(index, training=True, spec=JPEG.parse_spec("20"), codec=JPEG,
                                   runtime=PipelineRuntime(batch_size=4, seed=0))))
    assert batch["image"].max() <= 1.0 and batch["image"].min() >= 0.0  # the model normalizes itself
    model = task.create_model()
    model.train()
    losses = task.forward(model, batch)
    assert torch.isfinite(losses["loss"]) and "loss_keypoint" in losses
    model.eval()
    with torch.no_grad():
        found = task.predict(model, batch)
    results = task.decode(found, batch)
    assert len(results) == sum(len(image["boxes"]) for image in found)
    assert all(result["keypoints"].shape == (17, 3) for result in results)


@pytest.mark.parametrize("config", sorted(Path(__file__).parents[1].joinpath("launch", "configs").glob("*.yaml")))
def test_shipped_configs_validate(config):
    from codecloop.trainers.config import Config, check_task_keys, load_yaml

    values = load_yaml(config)
    Config(**values).validate()
    assert "codecloop experiment --config launch/configs/" in config.read_text()
    check_task_keys(values["task"], values, f"{config}: ")
