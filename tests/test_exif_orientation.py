"""One orientation rule for every task: images are read in their stored orientation, EXIF tag or not.

Each dense task's dataset is written twice as JPEG with the very same compressed pixels, once
plain and once with a real EXIF block whose orientation tag (3, 6 or 8) says to rotate it; the
batches (images, masks, depth, boxes, keypoints) must be identical, in training and evaluation.
Before the rule, DALI decoded the tagged files upright while sizes, crops and targets used the
stored grid: boxes, masks and keypoints no longer sat on the objects.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from codecloop.dali_pipes.codecs import JPEG
from codecloop.dali_pipes import ImageBatches, PipelineRuntime
from codecloop.tasks.depth import DepthTask
from codecloop.tasks.detection import DetectionTask
from codecloop.tasks.pose import PoseTask
from codecloop.tasks.segmentation import SegmentationTask
from codecloop.synthetic.datasets import make_synthetic

EXIF_ORIENTATION = 0x0112
TASKS = {
    "detection": (DetectionTask, {"input_size": "48x64"}),
    "segmentation": (SegmentationTask, {"input_size": "48x64"}),
    "pose": (PoseTask, {"input_size": "64x48"}),
    "depth": (DepthTask, {"input_size": "48x64"}),
}


def write_jpeg(pixels: Image.Image, path: Path, orientation: int | None) -> Path:
    """`pixels` as a JPEG at `path`; with `orientation`, a real EXIF block carrying that tag (the
    compressed pixel data is the same either way: only the APP1 segment differs)."""
    options = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    pixels.convert("RGB").save(path, "JPEG", quality=95, **options)
    return path


def as_jpeg_dataset(source: Path, destination: Path, orientation: int | None) -> Path:
    """A copy of a synthetic dataset with every image PNG re-saved as JPEG (COCO JSONs follow)."""
    shutil.copytree(source, destination)
    image_folders = [destination / "images"] if (destination / "images").is_dir() else \
        [destination / "train", destination / "val"]
    for folder in image_folders:
        for png in sorted(folder.rglob("*.png")):
            with Image.open(png) as pixels:
                write_jpeg(pixels, png.with_suffix(".jpg"), orientation)
            png.unlink()
    for annotation_file in (destination / "annotations").glob("*.json") if (destination / "annotations").is_dir() \
            else ():
        coco = json.loads(annotation_file.read_text())
        for image in coco["images"]:
            image["file_name"] = str(Path(image["file_name"]).with_suffix(".jpg"))
        annotation_file.write_text(json.dumps(coco))
    return destination


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exif")
    return {task: make_synthetic(task, root / task, train=1, val=3, height=64, width=80) for task in TASKS}


def batches_of(task, training: bool) -> dict[str, torch.Tensor]:
    index = task.sample_index("val")
    return next(iter(task.batches(index, training=training, spec=JPEG.parse_spec("30"), codec=JPEG,
                                  runtime=PipelineRuntime(batch_size=len(index), seed=5))))


def test_written_files_carry_a_real_exif_orientation(tmp_path):
    pixels = Image.fromarray(np.arange(64 * 80 * 3, dtype=np.uint8).reshape(64, 80, 3))
    plain = write_jpeg(pixels, tmp_path / "plain.jpg", None).read_bytes()
    for orientation in (3, 6, 8):
        tagged = write_jpeg(pixels, tmp_path / f"{orientation}.jpg", orientation)
        with Image.open(tagged) as image:
            assert image.getexif()[EXIF_ORIENTATION] == orientation
            upright = ImageOps.exif_transpose(image).size
        assert upright == ((64, 80) if orientation in (6, 8) else (80, 64))
        assert plain[-4000:] == tagged.read_bytes()[-4000:]  # the same compressed pixels


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("task_name", list(TASKS))
def test_dense_targets_land_where_they_do_in_the_untagged_file(task_name, orientation, datasets, tmp_path):
    task_class, options = TASKS[task_name]
    plain = task_class(as_jpeg_dataset(datasets[task_name], tmp_path / "plain", None), **options)
    tagged = task_class(as_jpeg_dataset(datasets[task_name], tmp_path / "tagged", orientation), **options)
    for training in (False, True):
        expected, found = batches_of(plain, training), batches_of(tagged, training)
        assert set(expected) == set(found)
        for key, value in expected.items():
            assert torch.equal(value, found[key]), f"{task_name}, EXIF orientation {orientation}: {key} differs"
        if task_name == "detection":
            assert torch.equal(torch.cat([t["boxes"] for t in plain.host_targets(expected)]),
                               torch.cat([t["boxes"] for t in tagged.host_targets(found)]))


@pytest.mark.parametrize("orientation", [6, 8])
def test_classification_reads_the_stored_orientation(orientation, tmp_path):
    """The CPU training path decodes only the crop's window (`tile_window`): the header size it is computed
    from and the decoder follow the same rule, so the tagged file gives the same crops as the untagged one."""
    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    files = {tag: str(write_jpeg(pixels, tmp_path / f"{tag}.jpg", orientation if tag == "tagged" else None))
             for tag in ("plain", "tagged")}
    for training in (False, True):
        out = {tag: next(iter(ImageBatches([path] * 4, runtime=PipelineRuntime(batch_size=4, seed=3), training=training,
                         geometry=_geometry(), spec=JPEG.parse_spec("20"), codec=JPEG,)))["image"] for tag,
                         path in files.items()}
        assert torch.equal(out["plain"], out["tagged"])


def _geometry():
    from codecloop.dali_pipes.pipelines import ImageGeometry

    return ImageGeometry(crop_size=32, resize_size=40)
