"""The scan cache next to the data: per-file facts (mode, label values) checked once when an index is built,
found again by every later stage, sweep and run without opening a file, checked again when a file changes,
and kept in the user's cache folder (with a warning) when the data folder cannot hold it."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.dali_pipes import validate
from codecloop.tasks.depth import DepthTask
from codecloop.tasks.segmentation import SegmentationTask
from codecloop.synthetic import make_synthetic

SIZE = {"input_size": "48x64"}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("index-cache")
    return {"segmentation": make_synthetic("segmentation", root / "segmentation", train=4, val=2, height=48,
                                           width=64, seed=3),
            "depth": make_synthetic("depth", root / "depth", train=4, val=2, height=48, width=64, seed=3)}


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every file opened through Python's `open` (Pillow's and numpy's readers use it) while the test runs."""
    paths, real_open = [], builtins.open

    def counting(file, *args, **kwargs):
        paths.append(os.path.abspath(file) if isinstance(file, (str, os.PathLike)) else repr(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return paths


def _data_files(paths: list[str], root: Path) -> list[str]:
    """The opened files of the dataset itself (not its cache folder)."""
    root = str(root.resolve())
    return [path for path in paths if path.startswith(root) and validate.DATA_CACHE_FOLDER not in Path(path).parts]


def test_segmentation_index_cached_next_to_the_data(written, tmp_path, opened):
    root = _copy(written["segmentation"], tmp_path)
    first = SegmentationTask(root, **SIZE).sample_index("train")
    assert _data_files(opened, root), "the first index reads the files"
    (cache_file,) = (root / ".codecloop").glob("scan-*.json")
    payload = json.loads(cache_file.read_text())
    mask = first.annotations[0]["mask"]
    entry = payload["files"][os.path.relpath(mask, payload["root"])]
    stored = np.unique(np.asarray(Image.open(mask)))
    np.testing.assert_array_equal(validate.FileFacts(*entry[2:]).value_set(), stored)
    assert entry[2:4] == ["PNG", 64] and entry[-2] == "L"
    opened.clear()
    second = SegmentationTask(root, **SIZE).sample_index("train")  # another stage, sweep or run
    assert _data_files(opened, root) == []
    assert second.files == first.files and second.annotations == first.annotations and second.sizes == first.sizes


def test_depth_index_opens_no_file_the_second_time(written, tmp_path, opened, capsys):
    root = _copy(written["depth"], tmp_path)
    task = DepthTask(root, **SIZE)
    first = task.sample_index("val")
    assert all(first.sizes[path] == (64, 48) for path in first.files)
    opened.clear()
    assert task.sample_index("val").files == first.files
    assert _data_files(opened, root) == []


def test_changed_mask_is_checked_again(written, tmp_path):
    root = _copy(written["segmentation"], tmp_path)
    index = SegmentationTask(root, **SIZE).sample_index("val")
    mask = Path(index.annotations[1]["mask"])
    values = np.asarray(Image.open(mask)).copy()
    values[3, 4] = 9
    Image.fromarray(values).save(mask)
    with pytest.raises(ValueError, match=f"mask {mask} holds class id 9, beyond the 4 classes"):
        SegmentationTask(root, **SIZE).sample_index("val")


def test_unwritable_data_folder_keeps_the_cache_in_the_user_folder(written, tmp_path, monkeypatch):
    root = _copy(written["segmentation"], tmp_path)
    (root / ".codecloop").write_text("a file where the cache folder would be")
    monkeypatch.setenv("CODECLOOP_CACHE_DIR", str(tmp_path / "user-cache"))
    with pytest.warns(UserWarning, match=f"data folder {root} cannot hold the image scan cache .*: keeping it in "
                                         f"{tmp_path / 'user-cache' / 'scan'}"):
        SegmentationTask(root, **SIZE).sample_index("train")
    assert len(list((tmp_path / "user-cache" / "scan").glob("*.json"))) == 1


def test_ranks_started_together_decode_each_mask_once(written, tmp_path, monkeypatch):
    root = _copy(written["segmentation"], tmp_path)
    decoded, lock, decode = [], threading.Lock(), validate.label_values

    def counting(path):
        with lock:
            decoded.append(str(path))
        return decode(path)

    monkeypatch.setattr(validate, "label_values", counting)
    results = []
    threads = [threading.Thread(target=lambda: results.append(SegmentationTask(root, **SIZE).sample_index("train")))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and results[0].files == results[1].files == results[2].files
    assert sorted(decoded) == sorted(annotation["mask"] for annotation in results[0].annotations)


def test_classification_training_reads_sizes_from_the_index(tmp_path, monkeypatch):
    """The scan's stored sizes reach the image feeder: training crops need no header read per sample."""
    from codecloop.dali_pipes import PipelineRuntime, images
    from codecloop.dali_pipes.codecs import JPEG
    from codecloop.tasks.classification import ClassificationTask

    rng = np.random.default_rng(0)
    for position, (name, width, height) in enumerate([("a", 64, 48), ("a", 50, 70), ("b", 81, 33), ("b", 40, 40)]):
        (tmp_path / "train" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(tmp_path / "train" / name /
                                                                                 f"{position}.jpg")
    task = ClassificationTask(tmp_path, crop_size=32, resize_size=40)
    index = task.sample_index("train")
    assert index.sizes == {path: Image.open(path).size for path in index.files}
    monkeypatch.setattr(images, "image_size", lambda path: pytest.fail(f"the feeder read the header of {path}"))
    batches = task.batches(index, training=True, spec=JPEG.parse_spec("20-90"), codec=JPEG,
                           runtime=PipelineRuntime(batch_size=2))
    assert sum(len(batch["index"]) for batch in batches) == len(index)
