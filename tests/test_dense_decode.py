"""Masks and 16-bit depth PNGs read and decoded in the DALI graph, bit-equal to the Pillow path (the task's
`load_targets`) on real files of every layout; palette masks and ``.npy`` depth stay with Pillow / numpy; the
feeder itself opens no file."""

from __future__ import annotations

import builtins
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.dali_pipes import PipelineRuntime
from codecloop.dali_pipes.codecs import JPEG
from codecloop.tasks.depth import DepthTask
from codecloop.tasks.segmentation import SegmentationTask
from codecloop.synthetic import make_synthetic

HEIGHT, WIDTH = 48, 64
SIZE = {"input_size": f"{HEIGHT}x{WIDTH}"}
SEGMENTATION = ("folder", "cityscapes", "voc", "ade20k")
DEPTH = ("folder", "kitti", "nyu")


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("dense-decode")
    data = {("segmentation", name): make_synthetic("segmentation", root / f"segmentation-{name}", format=name,
                                                   train=2, val=4, height=HEIGHT, width=WIDTH, seed=5)
            for name in SEGMENTATION}
    data.update({("depth", name): make_synthetic("depth", root / f"depth-{name}", format=name, train=4, val=4,
                                                 height=HEIGHT, width=WIDTH, seed=5) for name in DEPTH})
    return data


def _task(kind: str, root: Path):
    return SegmentationTask(root, **SIZE) if kind == "segmentation" else DepthTask(root, **SIZE)


def _eval_targets(task, index, name: str) -> np.ndarray:
    """The raster `name` of every sample of `index` as the pipeline hands it over in evaluation (uncropped at
    this size), in index order."""
    batch = next(iter(task.batches(index, training=False, spec=JPEG.parse_spec("none"), codec=JPEG,
                                   runtime=PipelineRuntime(batch_size=len(index)))))
    order = np.argsort(batch["index"].cpu().numpy())
    return batch[name].cpu().numpy()[order]


@pytest.mark.parametrize("kind, layout", [*(("segmentation", name) for name in SEGMENTATION),
                                          *(("depth", name) for name in DEPTH)])
def test_in_graph_decode_is_bit_equal_to_pillow(kind, layout, written, monkeypatch):
    task = _task(kind, written[kind, layout])
    index = task.sample_index("val")
    name = task.layout.rasters[0]
    in_graph = task.raster_files(index)
    palette = kind == "segmentation" and {annotation["mode"] for annotation in index.annotations} == {"P"}
    assert (in_graph == {}) == palette  # palette PNGs (VOC) are the one case DALI cannot decode to indices
    decoded = _eval_targets(task, index, name)
    monkeypatch.setattr(type(task), "raster_files", lambda self, index: {})
    by_pillow = _eval_targets(task, index, name)
    expected = np.stack([task.load_targets(index, position)[name] for position in range(len(index))])
    assert decoded.dtype == by_pillow.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, by_pillow)
    np.testing.assert_array_equal(decoded, expected)


def test_cityscapes_mixed_tables_in_one_batch(written, tmp_path):
    """labelTrainIds and labelIds files of one split go through their own rows of one lookup table."""
    root = Path(shutil.copytree(written["segmentation", "cityscapes"], tmp_path / "cityscapes"))
    label = next((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    ids = np.asarray(Image.open(label))
    train_ids = np.where(ids == 26, 13, np.where(ids == 7, 0, 255)).astype(np.uint8)
    Image.fromarray(train_ids).save(str(label).replace("_labelIds", "_labelTrainIds"))
    task = SegmentationTask(root, **SIZE)
    index = task.sample_index("val")
    assert {annotation["table"] for annotation in index.annotations} == {"label_ids", "train_ids"}
    decoded = _eval_targets(task, index, "mask")
    expected = np.stack([task.load_targets(index, position)["mask"] for position in range(len(index))])
    np.testing.assert_array_equal(decoded, expected)


def test_palette_masks_of_the_folder_layout_stay_with_pillow(written, tmp_path):
    root = Path(shutil.copytree(written["segmentation", "folder"], tmp_path / "folder"))
    mask = sorted((root / "masks" / "val").glob("*.png"))[0]
    palette = Image.fromarray(np.asarray(Image.open(mask))).convert("P")
    palette.putpalette([value for index in range(256) for value in (index, 255 - index, index // 2)])
    palette.save(mask)
    task = SegmentationTask(root, **SIZE)
    index = task.sample_index("val")
    assert task.raster_files(index) == {}
    expected = np.stack([task.load_targets(index, position)["mask"] for position in range(len(index))])
    np.testing.assert_array_equal(_eval_targets(task, index, "mask"), expected)


def test_feeder_opens_no_file(written, monkeypatch):
    """Image and mask files are read by DALI: the Python feeder hands over file names and draws only."""
    task = _task("segmentation", written["segmentation", "folder"])
    index = task.sample_index("train")
    batches = task.batches(index, training=True, spec=JPEG.parse_spec("20-90"), codec=JPEG,
                           runtime=PipelineRuntime(batch_size=2))
    opened, real_open = [], builtins.open

    def counting(file, *args, **kwargs):
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: pytest.fail("the feeder opened an image"))
    monkeypatch.setattr(np, "fromfile", lambda *args, **kwargs: pytest.fail("the feeder read a file"))
    count = sum(len(batch["index"]) for batch in batches)
    assert count == len(index)
    assert [path for path in opened if path.startswith(str(written["segmentation", "folder"]))] == []
