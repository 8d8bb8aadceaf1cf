"""Cityscapes targets checked against the dataset's own tools: cityscapesScripts' label table, and label
images rendered by its ``json2labelImg`` from a ``*_gtFine_polygons.json`` in the format Cityscapes ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.tasks.segmentation import SegmentationTask, read_mask
from codecloop.tasks.segmentation_layouts import CITYSCAPES_CLASSES, CITYSCAPES_LABELS, cityscapes_label_id_table
from codecloop.synthetic.datasets import make_synthetic

labels = pytest.importorskip("cityscapesscripts.helpers.labels")
json2label = pytest.importorskip("cityscapesscripts.preparation.json2labelImg")

HEIGHT, WIDTH = 48, 64


def test_label_table_equals_cityscapes_scripts():
    official = {label.id: (label.name, label.trainId, label.color) for label in labels.labels if label.id >= 0}
    ours = {label_id: (name, train_id, colour) for name, label_id, train_id, colour in CITYSCAPES_LABELS}
    assert ours == official
    trained = sorted((label.trainId, label.name) for label in labels.labels if 0 <= label.trainId < 255)
    assert list(CITYSCAPES_CLASSES) == [name for _, name in trained]


def _polygons(rng: np.random.Generator) -> dict:
    """A gtFine polygons file: every label (license plate and a ``cargroup`` too) as overlapping quadrilaterals,
    drawn in order, later ones on top, as Cityscapes' annotation tool writes them."""
    names = [label.name for label in labels.labels] + ["cargroup", "persongroup"]
    objects = []
    for name in names:
        left, top = int(rng.integers(0, WIDTH - 8)), int(rng.integers(0, HEIGHT - 8))
        right, bottom = left + int(rng.integers(6, 30)), top + int(rng.integers(6, 20))
        objects.append({"label": name, "polygon": [[left, top], [right, top + 2], [right - 1, bottom],
                                                   [left + 1, bottom - 1]]})
    return {"imgHeight": HEIGHT, "imgWidth": WIDTH, "objects": objects}


def test_label_ids_rendered_by_cityscapes_scripts_read_as_its_train_ids(tmp_path):
    root = make_synthetic("segmentation", tmp_path / "cityscapes", format="cityscapes", train=2, val=2,
                          height=HEIGHT, width=WIDTH, seed=3)
    label_files = sorted((root / "gtFine").rglob("*_gtFine_labelIds.png"))
    rng = np.random.default_rng(0)
    references = {}
    for label_file in label_files:
        polygons = label_file.with_name(label_file.name.replace("_labelIds.png", "_polygons.json"))
        polygons.write_text(json.dumps(_polygons(rng)))
        json2label.json2labelImg(str(polygons), str(label_file), "ids")
        reference = tmp_path / f"{label_file.stem}_trainIds.png"
        json2label.json2labelImg(str(polygons), str(reference), "trainIds")
        references[str(label_file)] = np.asarray(Image.open(reference))
    assert len(references) == 4
    task = SegmentationTask(root, input_size=f"{HEIGHT}x{WIDTH}")
    seen = set()
    for split in ("train", "val"):
        index = task.sample_index(split)
        for position, annotation in enumerate(index.annotations):
            mask = task.load_targets(index, position)["mask"]
            np.testing.assert_array_equal(mask, references[annotation["mask"]])
            seen |= set(np.unique(mask).tolist())
    assert len(seen) >= 15, seen
    for label_file in label_files:
        np.testing.assert_array_equal(read_mask(str(label_file), 19, cityscapes_label_id_table(19)),
                                      references[str(label_file)])


def test_a_train_ids_file_rendered_by_cityscapes_scripts_is_preferred(tmp_path):
    root = make_synthetic("segmentation", tmp_path / "cityscapes", format="cityscapes", train=1, val=1,
                          height=HEIGHT, width=WIDTH, seed=4)
    label_file = next((root / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    polygons = Path(str(label_file).replace("_labelIds.png", "_polygons.json"))
    polygons.write_text(json.dumps(_polygons(np.random.default_rng(1))))
    train_ids = Path(str(label_file).replace("_labelIds.png", "_labelTrainIds.png"))
    json2label.json2labelImg(str(polygons), str(train_ids), "trainIds")
    index = SegmentationTask(root, input_size=f"{HEIGHT}x{WIDTH}").sample_index("val")
    assert index.annotations[0]["mask"] == str(train_ids)
    mask = SegmentationTask(root).load_targets(index, 0)["mask"]
    np.testing.assert_array_equal(mask, np.asarray(Image.open(train_ids)))
