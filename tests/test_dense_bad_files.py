"""Detection, segmentation, pose and depth scan their image and target files like classification:
a 0-byte, truncated, non-image, decompression-bomb or damaged file is skipped and counted with its
sample (or named by ``--strict``), through the real CLI, on the synthetic datasets with real bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from codecloop.tasks.detection import DetectionTask
from codecloop.tasks.pose import PoseTask
from codecloop.synthetic.datasets import make_synthetic
from tests.datasets import claim_size, damage_jpeg_data, write_photo_jpeg
from tests.test_dense_tasks import CLI

RUN = ["--wandb", "disabled", "--progress", "false", "--num_threads", "2", "--batch_size", "3", "--epochs", "1"]


def _zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_an_image(path: Path) -> None:
    path.write_text("a text file named like an image")


def _bomb(path: Path) -> None:
    claim_size(path, 60000, 60000)


REASONS = {_zero_bytes: "file too short to be an image", _truncated: "truncated PNG (no IEND chunk)",
           _not_an_image: "not a readable image", _bomb: "60000x60000 = 3,600,000,000 pixels, above max_image_pixels"}

# Bad files per task (relative to the dataset root): 6 train samples stay in each task (two batches of 3).
BAD = {
    "detection": {"train/000000.png": _zero_bytes, "val/000002.png": _bomb, "val/000001.png": _truncated,
                  "val/000003.png": _not_an_image},
    "segmentation": {"images/train/000000.png": _zero_bytes, "masks/train/000003.png": _truncated,
                     "images/val/000001.png": _bomb, "images/val/000002.png": _not_an_image,
                     "images/val/000000.png": _truncated},
    "pose": {"train/000000.png": _zero_bytes, "train/000002.png": _bomb, "val/000001.png": _truncated,
             "val/000003.png": _not_an_image},  # train images 000000 and 000002 hold two people each
    "depth": {"depth/train/000001.png": _truncated, "images/train/000005.png": _bomb,
              "images/val/000000.png": _zero_bytes, "images/val/000003.png": _not_an_image},
}


def _damage_a_detection_image(root: Path) -> Path:
    """Train image 000004 replaced by a damaged photo JPEG of the same size, the JSON pointing at it."""
    annotations = root / "annotations" / "instances_train.json"
    coco = json.loads(annotations.read_text())
    entry = next(image for image in coco["images"] if image["file_name"] == "000004.png")
    (root / "train" / "000004.png").unlink()
    entry["file_name"] = "000004.jpg"
    annotations.write_text(json.dumps(coco))
    return damage_jpeg_data(write_photo_jpeg(root / "train" / "000004.jpg", (entry["width"], entry["height"])))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {task: make_synthetic(task, root / task, train=8, val=4, height=64, width=80) for task in BAD}


@pytest.fixture
def dirty(synthetic, tmp_path) -> callable:
    """`dirty(task)`: a copy of the task's dataset with its bad files written; returns (root, {path: reason})."""

    def make(task: str) -> tuple[Path, dict[str, str]]:
        root = Path(shutil.copytree(synthetic[task], tmp_path / task))
        expected = {}
        for name, spoil in BAD[task].items():
            spoil(root / name)
            expected[str(root / name)] = REASONS[spoil]
        if task == "detection":
            expected[str(_damage_a_detection_image(root))] = "damaged JPEG data: Corrupt JPEG data"
        return root, expected

    return make


def _last_epoch(out: Path) -> dict:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "data/skipped_files" in record][-1]


@pytest.mark.parametrize("task", list(BAD))
def test_bad_files_skipped_and_counted(task, dirty, tmp_path, run_cli):
    root, expected = dirty(task)
    out = tmp_path / "run"
    status, _, err = run_cli("train", "--task", task, "--data", root, *CLI[task], *RUN, "--out", out)
    assert status == 0, err
    epoch = _last_epoch(out)
    assert epoch["data/skipped_files"] == len(expected)
    reasons = dict(line.split(": ", 1) for line in epoch["data/skipped_paths"])
    assert set(reasons) == set(expected)
    for path, reason in expected.items():
        assert reason in reasons[path], (path, reasons[path])
    if task == "segmentation":
        assert f"its image {root / 'images' / 'train' / '000003.png'} is left out with it" in \
            reasons[str(root / "masks" / "train" / "000003.png")]


@pytest.mark.parametrize("task", list(BAD))
def test_strict_stops_naming_the_file(task, dirty, tmp_path, run_cli):
    root, expected = dirty(task)
    status, _, err = run_cli("train", "--task", task, "--data", root, *CLI[task], *RUN, "--strict",
                             "--out", tmp_path / "run")
    assert status == 2, err
    named = [path for path in expected if f"{path}: " in err]
    assert len(named) == 1 and expected[named[0]] in err and "strict mode" in err, err
    assert "Traceback" not in err and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_skipped_images_take_their_annotations_along(dirty):
    root, _ = dirty("detection")
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    boxes_per_file = {image["file_name"]: sum(a["image_id"] == image["id"] for a in coco["annotations"])
                      for image in coco["images"]}
    index = DetectionTask(root, input_size="96").sample_index("train")
    assert [Path(path).name for path in index.files] == ["000001.png", "000002.png", "000003.png", "000005.png",
                                                         "000006.png", "000007.png"]
    assert [len(a["boxes"]) for a in index.annotations] == [boxes_per_file[Path(p).name] for p in index.files]


def test_skipped_pose_image_takes_all_its_people(dirty):
    root, _ = dirty("pose")
    index = PoseTask(root, input_size="64x48").sample_index("train")
    assert len(index) == 6 and not {Path(path).name for path in index.files} & {"000000.png", "000002.png"}
    assert sorted(set(index.targets["image_id"].tolist())) == [2, 4, 5, 6, 7, 8]  # ids 1 and 3 are the bad files
