"""Segmentation in the native layouts of Cityscapes, Pascal VOC 2012 and ADE20K: detection, label decoding
checked against tables written out here by hand (through the real DALI pipeline), train -> sweep on each,
and every bad input stopping with the file named."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.dali_pipes.codecs import JPEG
from codecloop.dali_pipes import PipelineRuntime
from codecloop.tasks.layout_errors import MissingFilesError
from codecloop.tasks.segmentation import SegmentationTask, read_mask
from codecloop.synthetic.datasets import make_synthetic

HEIGHT, WIDTH = 48, 64
FORMATS = ("cityscapes", "voc", "ade20k")
TASK = {"input_size": f"{HEIGHT}x{WIDTH}"}
CLI = ["--task", "segmentation", "--model", "unet_test_efficientnet", "--input_size", f"{HEIGHT}x{WIDTH}",
       "--wandb", "disabled", "--progress", "false", "--num_threads", "2", "--batch_size", "4"]
# Cityscapes label id -> train id, typed from cityscapesScripts' helpers/labels.py; every other id is 255.
TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
            27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
VOC2012 = Path("VOCdevkit") / "VOC2012"
ADE = Path("ADEChallengeData2016")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: make_synthetic("segmentation", root / name, format=name, train=4, val=3, height=HEIGHT,
                                 width=WIDTH, seed=1) for name in FORMATS}


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def _eval_masks(task: SegmentationTask, split: str = "val") -> dict[str, np.ndarray]:
    """Each label file's mask as the DALI pipeline hands it over in evaluation (uncropped at this size)."""
    index = task.sample_index(split)
    batch = next(iter(task.batches(index, training=False, spec=JPEG.parse_spec("none"), codec=JPEG,
                                   runtime=PipelineRuntime(batch_size=len(index)))))
    masks = batch["mask"].cpu().numpy().reshape(len(index), HEIGHT, WIDTH)
    return {index.annotations[int(position)]["mask"]: mask for position, mask in zip(batch["index"], masks)}


def _ids(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# --- layouts read -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, classes, first, tables", [
    ("cityscapes", 19, "road", {"label_ids"}), ("voc", 21, "background", {"ids"}), ("ade20k", 150, "wall", {"ids"})])
def test_layout_detected_and_read(datasets, name, classes, first, tables):
    task = SegmentationTask(datasets[name], **TASK)
    assert task.format == name and task.num_classes == len(task.classes) == classes and task.classes[0] == first
    for split, count in (("train", 4), ("val", 3)):
        index = task.sample_index(split)
        assert len(index) == count and not index.skipped
        assert {annotation["table"] for annotation in index.annotations} == tables
    assert SegmentationTask(datasets[name], format=name, **TASK).format == name


def test_cityscapes_label_ids_become_train_ids_by_the_official_table(datasets, tmp_path):
    root = _copy(datasets["cityscapes"], tmp_path)
    label = next((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    stored = (np.arange(HEIGHT * WIDTH) % 34).reshape(HEIGHT, WIDTH).astype(np.uint8)
    Image.fromarray(stored).save(label)
    masks = _eval_masks(SegmentationTask(root, **TASK))
    expected = np.vectorize(lambda value: TRAIN_ID.get(int(value), 255))(stored)
    np.testing.assert_array_equal(masks[str(label)], expected)
    for path, mask in masks.items():
        np.testing.assert_array_equal(mask, np.vectorize(lambda value: TRAIN_ID.get(int(value), 255))(_ids(path)))


def test_cityscapes_prefers_label_train_ids_and_reads_gt_coarse(datasets, tmp_path):
    root = _copy(datasets["cityscapes"], tmp_path)
    label = next((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    train_ids = label.with_name(label.name.replace("_labelIds", "_labelTrainIds"))
    stored = np.full((HEIGHT, WIDTH), 255, np.uint8)
    stored[:, :19] = np.arange(19)
    Image.fromarray(stored).save(train_ids)
    task = SegmentationTask(root, **TASK)
    np.testing.assert_array_equal(_eval_masks(task)[str(train_ids)], stored)
    assert sorted(a["table"] for a in task.sample_index("val").annotations) == ["label_ids", "label_ids", "train_ids"]

    shutil.move(root / "gtFine", root / "gtCoarse")
    for path in (root / "gtCoarse").rglob("*_gtFine_*"):
        path.rename(path.with_name(path.name.replace("_gtFine_", "_gtCoarse_")))
    coarse = SegmentationTask(root, mask_folder="gtCoarse", **TASK).sample_index("train")
    assert all(a["mask"].endswith("_gtCoarse_labelIds.png") for a in coarse.annotations) and len(coarse) == 4
    with pytest.raises(ValueError, match="'mask_folder': the cityscapes layout takes one of gtFine, gtCoarse"):
        SegmentationTask(root, mask_folder="SegmentationClassAug", **TASK)


def test_voc_palette_ids_read_and_boundary_stays_ignore(datasets):
    root = datasets["voc"]
    label = next((root / VOC2012 / "SegmentationClass").glob("*.png"))
    with Image.open(label) as png:
        assert png.mode == "P" and png.getpalette()[3 * 255:3 * 256] == [224, 224, 192]
        assert png.getpalette()[3:6] == [128, 0, 0] and png.getpalette()[3 * 15:3 * 16] == [192, 128, 128]
    masks = _eval_masks(SegmentationTask(root, **TASK))
    assert len(masks) == 3
    for path, mask in masks.items():
        np.testing.assert_array_equal(mask, _ids(path))
        assert (mask == 255).any() and (mask == 0).any()
    for data in (root, root / "VOCdevkit", root / VOC2012):
        assert SegmentationTask(data, **TASK).format == "voc"


def test_voc_segmentation_class_aug(datasets, tmp_path):
    root = _copy(datasets["voc"], tmp_path) / VOC2012
    lists = root / "ImageSets" / "Segmentation"
    train = lists.joinpath("train.txt").read_text().split()
    (root / "SegmentationClassAug").mkdir()
    for name in train[1:]:  # SBD lacks the first train image: its label comes from SegmentationClass
        Image.fromarray(np.full((HEIGHT, WIDTH), 3, np.uint8)).save(root / "SegmentationClassAug" / f"{name}.png")
    lists.joinpath("train_aug.txt").write_text("".join(f"/JPEGImages/{n}.jpg /SegmentationClassAug/{n}.png\n"
                                                       for n in train))
    task = SegmentationTask(root, mask_folder="SegmentationClassAug", **TASK)
    masks = [a["mask"] for a in task.sample_index("train").annotations]
    assert masks == [str(root / "SegmentationClass" / f"{train[0]}.png")] + \
        [str(root / "SegmentationClassAug" / f"{n}.png") for n in train[1:]]
    assert all("SegmentationClass/" in a["mask"] for a in task.sample_index("val").annotations)
    lists.joinpath("train_aug.txt").unlink()
    lists.joinpath("aug.txt").write_text(f"{train[1]}\n")
    masks = [a["mask"] for a in task.sample_index("train").annotations]
    assert masks == [str(root / "SegmentationClass" / f"{n}.png") for n in train]
    lists.joinpath("aug.txt").unlink()
    with pytest.raises(FileNotFoundError, match="trainaug.txt or train_aug.txt or aug.txt"):
        task.sample_index("train")


def test_ade20k_zero_becomes_ignore_and_ids_shift_down(datasets, tmp_path):
    root = _copy(datasets["ade20k"], tmp_path)
    label = next((root / ADE / "annotations" / "validation").glob("*.png"))
    stored = (np.arange(HEIGHT * WIDTH) % 151).reshape(HEIGHT, WIDTH).astype(np.uint8)
    Image.fromarray(stored).save(label)
    task = SegmentationTask(root, **TASK)
    masks = _eval_masks(task)
    np.testing.assert_array_equal(masks[str(label)], np.where(stored == 0, 255, stored.astype(int) - 1))
    for path, mask in masks.items():
        values = _ids(path).astype(int)
        np.testing.assert_array_equal(mask, np.where(values == 0, 255, values - 1))
    kept = SegmentationTask(root, reduce_zero_label=False, **TASK)
    assert kept.num_classes == 151 and kept.classes[:2] == ["other", "wall"]
    np.testing.assert_array_equal(_eval_masks(kept)[str(label)], stored)


def test_ade20k_names_from_object_info(datasets, tmp_path):
    root = _copy(datasets["ade20k"], tmp_path)
    info = root / ADE / "objectInfo150.txt"
    with info.open() as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["Idx", "Ratio", "Train", "Val", "Name"] and len(rows) == 151
    rows[2][4] = "building, edifice"
    info.write_text("".join("\t".join(row) + "\n" for row in rows))
    assert SegmentationTask(root, **TASK).classes[:3] == ["wall", "building", "sky"]
    info.unlink()
    classes = SegmentationTask(root / ADE, **TASK).classes
    assert len(classes) == 150 and classes[-1] == "flag" and classes[7] == "bed"


def test_synthetic_layouts_are_deterministic(tmp_path):
    for name in FORMATS:
        first, second = (make_synthetic("segmentation", tmp_path / f"{name}{k}", format=name, train=2, val=1,
                                        height=HEIGHT, width=WIDTH, seed=5) for k in (0, 1))
        files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
        assert files == sorted(path.relative_to(second) for path in second.rglob("*") if path.is_file())
        assert all((first / path).read_bytes() == (second / path).read_bytes() for path in files)


# --- command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_train_then_sweep_cli(name, datasets, tmp_path, run_cli):
    train_dir, sweep_dir = tmp_path / "train", tmp_path / "sweep"
    status, _, err = run_cli("train", "--data", datasets[name], *CLI, "--max_steps", "1", "--out", train_dir)
    assert status == 0, err
    status, _, err = run_cli("sweep", "--data", datasets[name], "--format", name, *CLI, "--checkpoint", train_dir,
                             "--levels", "10", "--out", sweep_dir)
    assert status == 0, err
    with (sweep_dir / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["level"] for row in rows] == ["clean", "10"] and all(row["n"] == "3" for row in rows)


# --- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, folder, value, message", [
    ("cityscapes", "gtFine/val", 40, "holds Cityscapes label id 40, beyond the 34 label ids (0..33) that "
                                     "cityscapesScripts' table maps to the 19 classes"),
    ("voc", "VOCdevkit/VOC2012/SegmentationClass", 21, "holds class id 21, beyond the 21 classes"),
    ("ade20k", "ADEChallengeData2016/annotations/validation", 151, "holds class id 151, beyond the 150 classes"),
])
def test_id_beyond_the_classes_names_file_id_and_count(name, folder, value, message, datasets, tmp_path, run_cli):
    root = _copy(datasets[name], tmp_path)
    task = SegmentationTask(root, **TASK)
    index = task.sample_index("val")
    label = Path(index.annotations[1]["mask"])
    assert str(label).startswith(str(root / folder))
    ids = _ids(label).copy()
    ids[5, 7] = value
    Image.fromarray(ids).save(label)
    with pytest.raises(ValueError, match=f"mask {label} {message}".replace("(", r"\(").replace(")", r"\)")):
        task.load_targets(index, 1)
    status, _, err = run_cli("sweep", "--data", root, *CLI, "--levels", "10", "--out", tmp_path / "run")
    assert status == 2 and f"mask {label} {message}" in err, err


def test_rgb_label_names_the_file(datasets, tmp_path, run_cli):
    root = _copy(datasets["cityscapes"], tmp_path)
    label = next((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    shutil.copy(str(label).replace("_labelIds", "_color"), label)
    task = SegmentationTask(root, **TASK)
    with pytest.raises(ValueError, match=f"mask {label} is mode RGBA; expected class ids"):
        task.sample_index("train")  # the mode is checked when the index is built, before any work
    status, _, err = run_cli("train", "--data", root, *CLI, "--max_steps", "1", "--out", tmp_path / "run")
    assert status == 2 and f"mask {label} is mode RGBA; expected class ids" in err, err
    with pytest.raises(ValueError, match="_color.png is a rendering for people: read \\*_labelIds.png"):
        read_mask(str(label).replace("_labelIds", "_color"), task.num_classes, task.tables["label_ids"])


def test_cityscapes_image_without_label_is_named(datasets, tmp_path, run_cli):
    root = _copy(datasets["cityscapes"], tmp_path)
    label = next((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    image = root / "leftImg8bit" / "val" / label.parent.name / label.name.replace("gtFine_labelIds", "leftImg8bit")
    label.unlink()
    with pytest.raises(MissingFilesError, match=f"The Cityscapes image {image} has no label file {label}"):
        SegmentationTask(root, **TASK).sample_index("val")
    status, _, err = run_cli("train", "--data", root, *CLI, "--max_steps", "1", "--out", tmp_path / "run")
    assert status == 2 and str(image) in err, err


def test_voc_split_file_naming_missing_files(datasets, tmp_path, run_cli):
    root = _copy(datasets["voc"], tmp_path)
    val = root / VOC2012 / "ImageSets" / "Segmentation" / "val.txt"
    absent = [f"2011_{k:06d}" for k in range(3)]
    val.write_text(val.read_text() + "".join(f"{name}\n" for name in absent))
    expected = [str(root / VOC2012 / folder / f"{name}.{suffix}") for name in absent
                for folder, suffix in (("JPEGImages", "jpg"), ("SegmentationClass", "png"))]
    with pytest.raises(MissingFilesError) as caught:
        SegmentationTask(root, **TASK).sample_index("val")
    assert caught.value.missing == expected
    message = str(caught.value)
    assert message.startswith(f"{val} names 6 missing file(s) (first: {', '.join(expected[:3])})")
    assert "`codecloop check-data`" in message and expected[3] not in message
    status, out, _ = run_cli("check-data", "--task", "segmentation", "--data", root)
    assert status == 2 and "train: 4 samples" in out and f"val: {val} names 6 missing file(s):" in out
    assert all(f"  {path}\n" in out for path in expected)
    status, _, err = run_cli("train", "--data", root, *CLI, "--max_steps", "1", "--out", tmp_path / "run")
    assert status == 2 and "names 6 missing file(s)" in err and "codecloop check-data" in err


def test_layout_errors_name_the_key(datasets, tmp_path):
    with pytest.raises(ValueError, match="'format': the segmentation task reads folder, cityscapes, voc, ade20k"):
        SegmentationTask(datasets["voc"], format="kitti", **TASK)
    with pytest.raises(ValueError, match="'mask_folder': the ade20k layout takes none"):
        SegmentationTask(datasets["ade20k"], mask_folder="gtFine", **TASK)
    with pytest.raises(ValueError, match="'reduce_zero_label': Cityscapes label ids map"):
        SegmentationTask(datasets["cityscapes"], reduce_zero_label=True, **TASK)
    with pytest.raises(ValueError, match="is not laid out as a segmentation dataset"):
        SegmentationTask(tmp_path, **TASK)
    with pytest.raises(ValueError, match=f"'format': the voc layout expects VOCdevkit/VOC2012/ .* under {tmp_path}"):
        SegmentationTask(tmp_path, format="voc", **TASK)
