"""COCO files that lie: duplicate image ids, JSON sizes unlike the file's, a keypoint category that is
not the person category. Each is refused naming the culprit, or (sizes) warned about and fixed."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.tasks.detection import DetectionTask
from codecloop.tasks.pose import PoseTask
from codecloop.synthetic.datasets import make_synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coco")
    return {task: make_synthetic(task, root / task, train=6, val=2, height=64, width=80)
            for task in ("detection", "pose")}


def _edit(source: Path, tmp_path: Path, name: str, change) -> Path:
    """A copy of the dataset whose ``annotations/<name>`` JSON went through `change`."""
    root = Path(shutil.copytree(source, tmp_path / source.name))
    path = root / "annotations" / name
    payload = json.loads(path.read_text())
    change(payload)
    path.write_text(json.dumps(payload))
    return root


def test_duplicate_image_id_names_the_id_and_both_files(synthetic, tmp_path, run_cli):
    def duplicate(coco):
        coco["images"][3]["id"] = coco["images"][1]["id"]

    root = _edit(synthetic["detection"], tmp_path, "instances_train.json", duplicate)
    train = root / "train"
    message = f"image id 2 is listed twice, for {train / '000001.png'} and {train / '000003.png'}"
    with pytest.raises(ValueError, match=message):
        DetectionTask(root, input_size="96").sample_index("train")
    status, _, err = run_cli("train", "--task", "detection", "--data", root, "--input_size", "96", "--wandb",
                             "disabled", "--progress", "false", "--out", tmp_path / "run")
    assert status == 2 and message in err, err


def test_json_size_unlike_the_file_is_warned_once_and_the_file_size_used(synthetic, tmp_path):
    def lie(coco):
        coco["images"][0].update(width=40, height=30)
        coco["images"][2].update(width=100, height=90)
        coco["images"][4].update(width=64, height=80)  # the upright size of the EXIF-rotated file below

    clean = DetectionTask(synthetic["detection"], input_size="96").sample_index("train")
    root = _edit(synthetic["detection"], tmp_path, "instances_train.json", lie)
    with Image.open(root / "train" / "000004.png") as image:
        exif = image.getexif()
        exif[0x0112] = 6  # stored 80x64, shown rotated by 90 degrees
        image.save(root / "train" / "000004.png", exif=exif)
    task = DetectionTask(root, input_size="96")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = task.sample_index("train")
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert "3 image(s) whose JSON width / height differ from the file; the file's size is used" in message
    assert f"{root / 'train' / '000000.png'} (JSON 40x30, file 80x64)" in message
    assert f"{root / 'train' / '000002.png'} (JSON 100x90, file 80x64)" in message
    assert f"{root / 'train' / '000004.png'} (JSON 64x80, file 80x64, EXIF orientation 6)" in message
    assert index.counts["image_sizes_from_file"] == 3
    for fixed, truth in zip(index.annotations, clean.annotations):  # boxes clipped to the file, not the JSON
        np.testing.assert_array_equal(fixed["boxes"], truth["boxes"])


def test_pose_refuses_a_keypoint_category_other_than_person(synthetic, tmp_path):
    def rename(coco):
        coco["categories"][0]["name"] = "dog"

    root = _edit(synthetic["pose"], tmp_path / "renamed", "person_keypoints_train.json", rename)
    with pytest.raises(ValueError, match=r"person category's keypoints; keypoint categories found: 'dog' \(id 1\)"):
        PoseTask(root, input_size="64x48")


def test_pose_refuses_an_annotation_of_another_category(synthetic, tmp_path):
    def add_car(coco):
        coco["categories"].append({"id": 3, "name": "car", "supercategory": "vehicle"})
        coco["annotations"][1]["category_id"] = 3

    root = _edit(synthetic["pose"], tmp_path, "person_keypoints_train.json", add_car)
    with pytest.raises(ValueError, match=r"annotation 2 is of category 'car' \(id 3\), not the person category"):
        PoseTask(root, input_size="64x48")
