"""H.264 for image datasets: online one-frame encodes and frames of a CRF ladder, through the CLI too."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes import ImageBatches, ImageGeometry
from codecloop.dali_pipes.codecs import H264, JPEG
from codecloop.dali_pipes.h264_intra import h264_roundtrip
from codecloop.dali_pipes.ladder import load_ladder, transcode
from codecloop.dali_pipes.reference import psnr
from tests.conftest import TINY
from tests.datasets import write_sequence_folder

GEOMETRY = ImageGeometry(crop_size=48, resize_size=56, min_scale=0.25)


@pytest.fixture(scope="module")
def png_files(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("png")
    paths = []
    for index, name in enumerate(["astronaut", "chelsea", "coffee", "rocket", "chelsea"]):
        path = folder / f"{index}.png"
        Image.fromarray(getattr(skdata, name)()[:121 + index, :163 + 2 * index]).save(path)  # odd sizes too
        paths.append(str(path))
    return paths


def _images(files, spec, training=False, **kwargs) -> torch.Tensor:
    batches = ImageBatches(files, runtime=PipelineRuntime(batch_size=2, num_threads=2), training=training,
                           spec=H264.parse_spec(spec), codec=H264, geometry=GEOMETRY, **kwargs)
    return torch.cat([batch["image"] for batch in batches])


def test_online_clean_matches_the_jpeg_pipelines_clean_view(png_files):
    reference = ImageBatches(png_files, runtime=PipelineRuntime(batch_size=2, num_threads=2), training=False,
                             spec=JPEG.parse_spec("none"), codec=JPEG, geometry=GEOMETRY,)
    torch.testing.assert_close(_images(png_files, "none"), torch.cat([b["image"] for b in reference]),
                               atol=0.02, rtol=0)


def test_online_compression_grows_with_crf(png_files):
    clean = _images(png_files, "none")
    errors = [float((_images(png_files, str(crf)) - clean).abs().mean()) for crf in (10, 28, 45)]
    assert errors == sorted(errors) and errors[0] > 0.005, errors


def test_online_batches_carry_the_drawn_crf_and_a_matched_clean_view(png_files):
    batches = ImageBatches(png_files, runtime=PipelineRuntime(batch_size=2, num_threads=2), training=True,
                           spec=H264.parse_spec("30-40", 0.4), codec=H264, geometry=GEOMETRY, with_clean=True,
                           targets={"label": torch.arange(5) * 3})
    crfs = []
    for batch in batches:
        assert batch["image"].shape[1:] == (3, 48, 48) and batch["clean_image"].shape == batch["image"].shape
        assert torch.equal(batch["label"], batch["index"] * 3)
        for image, clean, crf in zip(batch["image"], batch["clean_image"], batch["codec_level"].tolist()):
            assert torch.equal(image, clean) == (crf == -1)  # clean samples are the untouched image
            crfs.append(crf)
    assert len(crfs) == 6 and set(crfs) <= {-1, *range(30, 41)}  # 5 images and a repeat filling the last batch


def test_h264_roundtrip_helper():
    image = np.ascontiguousarray(skdata.coffee()[:99, :141])
    outputs = h264_roundtrip([image] * 3, [0, 23, 45])
    assert all(output.shape == image.shape and output.dtype == np.uint8 for output in outputs)
    quality = [psnr(image, output) for output in outputs]
    assert quality == sorted(quality, reverse=True) and quality[0] > 35, quality  # CRF 0: 4:2:0 only
    with pytest.raises(ValueError, match="CRF 60 is outside 0..51"):
        h264_roundtrip([image], 60)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    """An ImageFolder of frame sequences (3 classes; 8 train, 4 val frames each) and its ladder."""
    root = write_sequence_folder(tmp_path_factory.mktemp("sequences"), {"train": 8, "val": 4})
    ladder = tmp_path_factory.mktemp("ladder")
    transcode(root, ladder, crfs=(0, 18, 33, 45), workers=2, progress=False)
    return root, ladder


def test_ladder_frames_map_back_to_their_images(sequences):
    root, ladder_dir = sequences
    ladder = load_ladder(ladder_dir)
    assert ladder.frame_files("val/coffee") == [f"frame{i}.png" for i in range(4)]
    files = [str(root / "val" / "coffee" / f"frame{i}.png") for i in (3, 0)]
    frames = [("val/coffee", 3), ("val/coffee", 0)]
    from_ladder = torch.cat([b["image"] for b in ImageBatches(frames, runtime=PipelineRuntime(batch_size=2),
                            ladder=ladder, training=False, spec=H264.parse_spec("0"), codec=H264, geometry=GEOMETRY)])
    online_clean = _images(files, "none")
    assert float((from_ladder - online_clean).abs().mean()) < 0.05  # rung 0: the same images, near-lossless


@pytest.mark.parametrize("mode", ["online", "ladder"])
def test_cli_train_and_sweep_with_h264(sequences, tmp_path, run_cli, mode):
    root, ladder = sequences
    extra = ["--ladder", str(ladder)] if mode == "ladder" else []
    train_dir, sweep_dir = tmp_path / "train", tmp_path / "sweep"
    status, _, err = run_cli("train", "--data", root, *TINY, *extra, "--codec", "h264", "--level", "18-45",
                             "--clean_prob", "0.2", "--batch_size", "6", "--log_every", "1", "--out", train_dir)
    assert status == 0, err
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert len(steps) == 4 and all("codec/level_hist" in r for r in steps)
    assert [r["eval/n"] for r in records if "eval/n" in r] == [12]
    status, _, err = run_cli("sweep", "--data", root, *TINY, *extra, "--codec", "h264", "--checkpoint", train_dir,
                             "--levels", "18,33,45", "--out", sweep_dir)
    assert status == 0, err
    with (sweep_dir / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["level"] for row in rows] == ["clean", "18", "33", "45"] and {row["n"] for row in rows} == {"12"}


def test_a_ladder_of_other_images_is_refused(sequences, tmp_path, run_cli):
    root, ladder = sequences
    other = write_sequence_folder(tmp_path / "other", {"train": 2, "val": 1})
    status, _, err = run_cli("train", "--data", other, *TINY, "--ladder", ladder, "--codec", "h264",
                             "--out", tmp_path / "run")
    assert status == 2 and f"was transcoded from {root}, not from the dataset {other}" in err
    transcode(other, tmp_path / "ladder", crfs=(0, 28), progress=False)
    Image.open(other / "train" / "coffee" / "frame0.png").save(other / "train" / "coffee" / "new.png")
    status, _, err = run_cli("train", "--data", other, *TINY, "--ladder", tmp_path / "ladder", "--codec", "h264",
                             "--out", tmp_path / "run2")
    assert status == 2 and "1 image(s) are not frames of the ladder" in err and "train/coffee/new.png" in err
