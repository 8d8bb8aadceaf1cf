"""Synthetic datasets: each task's on-disk format reads back, output is deterministic and atomic,
and the textures are fine enough that JPEG at quality 5 visibly damages them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.synthetic import datasets as synthetic
from codecloop.synthetic.datasets import COCO_KEYPOINTS, COCO_SKELETON, SYNTHETIC_TASKS, make_synthetic

HEIGHT, WIDTH = 64, 80
COUNTS = {"train": 6, "val": 2}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {task: make_synthetic(task, root / task, train=COUNTS["train"], val=COUNTS["val"],
                                 height=HEIGHT, width=WIDTH, seed=3) for task in SYNTHETIC_TASKS}


def _names(count: int) -> list[str]:
    return [f"{index:06d}.png" for index in range(count)]


def _check_box(bbox: list[float], width: int, height: int) -> None:
    x, y, w, h = bbox
    assert w > 0 and h > 0
    assert 0 <= x and 0 <= y and x + w <= width and y + h <= height


def _check_coco_images(payload: dict, folder: Path, count: int) -> None:
    assert [image["file_name"] for image in payload["images"]] == _names(count)
    assert len({image["id"] for image in payload["images"]}) == count
    for image in payload["images"]:
        assert (image["width"], image["height"]) == (WIDTH, HEIGHT)
        assert Image.open(folder / image["file_name"]).size == (WIDTH, HEIGHT)


def test_detection_reads_back_as_coco(datasets):
    root = datasets["detection"]
    for split, count in COUNTS.items():
        payload = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert set(payload) == {"images", "annotations", "categories"}
        assert payload["categories"] == [{"id": 1, "name": "rectangle"}, {"id": 2, "name": "ellipse"},
                                         {"id": 3, "name": "triangle"}]
        _check_coco_images(payload, root / split, count)
        image_ids = {image["id"] for image in payload["images"]}
        for annotation in payload["annotations"]:
            assert set(annotation) == {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}
            assert annotation["image_id"] in image_ids and annotation["category_id"] in (1, 2, 3)
            _check_box(annotation["bbox"], WIDTH, HEIGHT)
            assert min(annotation["bbox"][2:]) >= 12 and 0 < annotation["area"] <= np.prod(annotation["bbox"][2:])
        assert len({annotation["id"] for annotation in payload["annotations"]}) == len(payload["annotations"])
        per_image = [sum(a["image_id"] == i for a in payload["annotations"]) for i in sorted(image_ids)]
        assert all(objects <= 3 for objects in per_image)
        if split == "train":
            assert 0 in per_image[5:] and all(objects >= 1 for objects in per_image[:5])


def test_segmentation_masks_match_images(datasets):
    root = datasets["segmentation"]
    assert (root / "classes.txt").read_text().splitlines() == ["background", "rectangle", "ellipse", "triangle"]
    for split, count in COUNTS.items():
        assert sorted(path.name for path in (root / "images" / split).iterdir()) == _names(count)
        for name in _names(count):
            image, mask = Image.open(root / "images" / split / name), Image.open(root / "masks" / split / name)
            assert image.mode == "RGB" and mask.mode == "L" and image.size == mask.size == (WIDTH, HEIGHT)
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values <= {0, 1, 2, 3, 255} and 0 in values and 255 in values and values & {1, 2, 3}


def test_pose_reads_back_as_coco_keypoints(datasets):
    root = datasets["pose"]
    for split, count in COUNTS.items():
        payload = json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())
        (category,) = payload["categories"]
        assert category["id"] == 1 and category["name"] == "person"
        assert category["keypoints"] == list(COCO_KEYPOINTS) and len(COCO_KEYPOINTS) == 17
        assert category["skeleton"] == [list(pair) for pair in COCO_SKELETON]
        _check_coco_images(payload, root / split, count)
        assert count <= len(payload["annotations"]) <= 2 * count
        for annotation in payload["annotations"]:
            keypoints = np.array(annotation["keypoints"], dtype=float).reshape(17, 3)
            assert len(annotation["keypoints"]) == 51 and set(keypoints[:, 2].tolist()) <= {0, 2}
            visible, hidden = keypoints[keypoints[:, 2] == 2], keypoints[keypoints[:, 2] == 0]
            assert annotation["num_keypoints"] == len(visible) > 0 and not hidden[:, :2].any()
            assert (visible[:, 0] < WIDTH).all() and (visible[:, 1] < HEIGHT).all() and (visible >= 0).all()
            _check_box(annotation["bbox"], WIDTH, HEIGHT)
            x, y, w, h = annotation["bbox"]
            assert annotation["area"] == pytest.approx(w * h) and annotation["iscrowd"] == 0
            assert (visible[:, 0] >= x).all() and (visible[:, 0] <= x + w).all()


def test_depth_png_round_trips_kitti_values(datasets):
    root = datasets["depth"]
    for split, count in COUNTS.items():
        for index, name in enumerate(_names(count)):
            image = Image.open(root / "images" / split / name)
            depth = np.asarray(Image.open(root / "depth" / split / name))
            assert image.mode == "RGB" and image.size == (WIDTH, HEIGHT) and depth.shape == (HEIGHT, WIDTH)
            assert depth.dtype == np.uint16
            _, written = synthetic._depth_scene(synthetic._rng(3, split, index), HEIGHT, WIDTH)
            assert written.dtype == np.uint16
            np.testing.assert_array_equal(depth, written)
            valid = depth[depth > 0]
            assert (depth == 0).any() and valid.min() >= 256 and valid.max() <= 80 * 256
            assert len(set(depth[-1].tolist())) == 1, "the bottom row is ground or a box touching it: one depth"


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_same_seed_same_bytes_other_seed_differs(tmp_path, task):
    def files(seed: int, folder: str) -> dict[str, bytes]:
        root = make_synthetic(task, tmp_path / folder, train=2, val=1, height=HEIGHT, width=WIDTH, seed=seed)
        return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}

    first, again, other = files(7, "a"), files(7, "b"), files(8, "c")
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if name.endswith(".png"))


@pytest.mark.parametrize("task", SYNTHETIC_TASKS)
def test_jpeg_quality_5_destroys_the_texture(datasets, task):
    folder = datasets[task] / ("images/train" if task in ("segmentation", "depth") else "train")
    image = Image.open(folder / "000000.png").convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=5)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=float)
    assert np.abs(np.asarray(image, dtype=float) - decoded).mean() > 8


def test_unknown_task_is_named(tmp_path):
    with pytest.raises(ValueError, match="classification") as error:
        make_synthetic("classification", tmp_path / "out")
    assert "detection" in str(error.value) and not (tmp_path / "out").exists()


def test_refuses_non_empty_out_and_accepts_empty(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full"):
        make_synthetic("segmentation", full, train=1, val=1, height=HEIGHT, width=WIDTH)
    assert [path.name for path in full.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_synthetic("segmentation", empty, train=1, val=1, height=HEIGHT, width=WIDTH) == empty.resolve()
    assert (empty / "classes.txt").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty", "full"]


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def write_one_file_then_fail(root: Path, *_args) -> None:
        (root / "partial.png").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setitem(synthetic._WRITERS, "depth", write_one_file_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        make_synthetic("depth", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
