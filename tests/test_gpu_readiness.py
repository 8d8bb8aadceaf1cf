"""What the first GPU run depends on, checked on the CPU: the two-part GPU check script in its CPU mode,
JPEG-only commands without PyAV or pycocotools, channels-last images straight from the pipelines,
padding cut without a mask, NVDEC refused plainly where its library is missing, DALI errors naming
the files in flight."""

from __future__ import annotations

import csv
import json
import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.codecs import H264, JPEG, get_codec
from codecloop.dali_pipes import ImageBatches, ImageGeometry, SweepBatches
from codecloop.dali_pipes.feeder import valid_count
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("av", "pycocotools", "simplejpeg")  # none is on a bare GPU machine


def _run(args: list[str], env: dict[str, str], timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def hidden_packages(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import av``, ``pycocotools`` and ``simplejpeg`` fail."""
    folder = tmp_path_factory.mktemp("hidden")
    for name in HIDDEN:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is hidden by the test')\n")
    return folder


def _hiding(hidden_packages: Path) -> str:
    """PYTHONPATH with the hiding folder first (what was on it before stays: a bundle's DALI, say)."""
    return os.pathsep.join([str(hidden_packages), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


def test_gpu_check_runs_both_parts_in_cpu_mode(tmp_path):
    """The same script as on a GPU, at tiny sizes: every check passes or says why it was skipped."""
    for part in ("1", "2"):
        out = tmp_path / f"part{part}"
        result = _run(["bash", "bench/gpu_check.sh", part, "--cpu"], {"OUT": str(out)})
        summary = (out / "summary.md").read_text()
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "| failed |" not in summary and "| timed out |" not in summary, summary
    first, second = (tmp_path / "part1" / "summary.md").read_text(), (tmp_path / "part2" / "summary.md").read_text()
    assert "| gpu_info | skipped | 0 | no GPU in the CPU mode |" in first
    images_row = first.split("| gpu_tests_images |")[1].split("\n")[0]
    assert images_row.startswith(" passed |") and images_row.endswith(" skipped |")
    for name in ("smoke", "fidelity", "bench_data", "bench_train", "bench_model", "bench_sweep", "resnet50_epoch"):
        assert f"| {name} | passed |" in first
    for name in ("video_ready", "gpu_tests_video", "packaged_ladder", "bench_video_data_32", "bench_video_train"):
        assert f"| {name} | passed |" in second
    assert (tmp_path / "part1" / "fidelity_cpu.md").is_file() and (tmp_path / "part1" / "resnet50_epoch.json").is_file()
    assert (tmp_path / "part1" / "gpu_tests_images.xml").is_file()
    rows = {}
    for part in ("part1", "part2"):
        (table,) = (tmp_path / part).glob("bench-*.csv")
        with table.open() as handle:
            rows[part] = {(row["codec"], row["mode"]) for row in csv.DictReader(handle)}
    assert rows["part1"] == {("jpeg", mode) for mode in ("data", "train", "model", "sweep")}
    assert rows["part2"] == {("h264", "data"), ("h264", "train")}


def test_gpu_check_failure_hides_nothing(tmp_path, hidden_packages):
    """Without PyAV, part 2's checks that need it fail, each on its own, and the others still run."""
    out = tmp_path / "out"
    result = _run(["bash", "bench/gpu_check.sh", "2", "--cpu"],
                  {"OUT": str(out), "PYTHONPATH": _hiding(hidden_packages)})
    summary = (out / "summary.md").read_text()
    assert result.returncode != 0
    assert "| video_ready | failed |" in summary and "| packaged_ladder | failed |" in summary
    assert "| gpu_tests_video | passed |" in summary and "| bench_video_train | failed |" in summary
    assert "av is hidden by the test" in (out / "video_ready.log").read_text()
    assert _run(["bash", "bench/gpu_check.sh", "3"], {}).returncode == 2


def test_jpeg_commands_need_neither_pyav_nor_pycocotools_nor_simplejpeg(image_folder, tmp_path, hidden_packages):
    """What a bare GPU machine lacks: the video and COCO packages, and the damaged-JPEG decoder (its check is
    then left out, saying so)."""
    env = {"PYTHONPATH": _hiding(hidden_packages), "WANDB_MODE": "disabled"}
    imports = _run([sys.executable, "-c", "import av"], env)
    assert imports.returncode != 0 and "av is hidden" in imports.stderr
    data = shutil.copytree(image_folder, tmp_path / "data", ignore=shutil.ignore_patterns(".codecloop"))  # unscanned
    train = _run([sys.executable, "-m", "codecloop", "train", "--data", str(data), *TINY, "--epochs", "1",
                  "--out", str(tmp_path / "run")], env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "damaged JPEG data is not looked for: simplejpeg is not installed" in train.stderr
    bench = _run([sys.executable, "-m", "codecloop", "bench", "--images", "4", "--batch_size", "2", "--crop", "32",
                  "--iterations", "1", "--warmup", "1", "--repeats", "1", "--threads", "1", "--contenders",
                  "codecloop", "--out", str(tmp_path / "bench")], env)
    assert bench.returncode == 0, bench.stderr[-3000:]
    loaded = _run([sys.executable, "-c", "import sys, codecloop.tasks, codecloop.trainers.protocol, "
                   "codecloop.bench.throughput, codecloop.launch.cli; "
                   "print(sorted(name for name in ('av', 'pycocotools', 'simplejpeg') if name in sys.modules))"], env)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr[-2000:]


def _image_files(image_folder: Path) -> list[str]:
    return sorted(str(path) for path in (image_folder / "train").rglob("*.jpg"))


@pytest.mark.parametrize("training, with_clean", [(True, True), (False, False)])
def test_channels_last_batches_equal_the_nchw_ones(image_folder, training, with_clean):
    """NHWC from the pipeline, seen as NCHW in channels-last format: the same values, no copy per step."""
    files = _image_files(image_folder)
    batches = {}
    for channels_last in (False, True):
        batches[channels_last] = list(ImageBatches(files, runtime=PipelineRuntime(batch_size=5, num_threads=2, seed=3,
                                      channels_last=channels_last), training=training, spec=JPEG.parse_spec("5-95",
                                      0.2), codec=JPEG, with_clean=with_clean, geometry=ImageGeometry(crop_size=32,
                                      resize_size=40),))
    for nchw, nhwc in zip(batches[False], batches[True]):
        for name in ("image", "clean_image") if with_clean else ("image",):
            assert nhwc[name].shape == nchw[name].shape and nhwc[name].shape[1] == 3
            assert nhwc[name].is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(nhwc[name], nchw[name])
    sweeps = [list(SweepBatches(files, runtime=PipelineRuntime(batch_size=6, num_threads=2,
                   channels_last=channels_last), levels=[10, 50], codec=JPEG, geometry=ImageGeometry(32,
                   40))) for channels_last in (False, True)]
    for nchw, nhwc in zip(*sweeps):
        for level in (None, 10, 50):
            assert nhwc["views"][level].is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(nhwc["views"][level], nchw["views"][level])


def test_dense_and_h264_batches_channels_last(tmp_path, image_folder):
    from codecloop.dali_pipes.dense import DenseBatches, DenseGeometry, DenseLayout, DenseSample

    files = _image_files(image_folder)[:6]
    for make in (
        lambda last: DenseBatches([DenseSample(path) for path in files],
                                  runtime=PipelineRuntime(batch_size=3, seed=2, channels_last=last),
                                  layout=DenseLayout(points=True),
                                  load_targets=lambda index: {"points": np.zeros((1, 2), np.float32)},
                                  training=True, spec=JPEG.parse_spec("30"), codec=JPEG,
                                  geometry=DenseGeometry(32, 48)),
        lambda last: ImageBatches(files, runtime=PipelineRuntime(batch_size=3, seed=2, channels_last=last),
                                  training=True, spec=H264.parse_spec("30"), codec=H264, geometry=ImageGeometry(32, 40),
                                  with_clean=True)):
        nchw, nhwc = next(iter(make(False))), next(iter(make(True)))
        for name in ("image", "clean_image"):
            if name in nchw:
                assert nhwc[name].is_contiguous(memory_format=torch.channels_last)
                assert torch.equal(nhwc[name], nchw[name])


def test_padding_is_cut_by_a_count_and_must_be_trailing():
    assert valid_count(torch.tensor([[1], [1], [0], [0]], dtype=torch.int32)) == 2
    assert valid_count(torch.ones(3, dtype=torch.int32)) == 3
    with pytest.raises(RuntimeError, match="padding slots in the middle"):
        valid_count(torch.tensor([1, 0, 1], dtype=torch.int32))


def _nvdec_loads() -> bool:
    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvdec_loads(), reason="this machine has NVDEC's library")
def test_nvdec_missing_library_is_named_before_any_pipeline(tmp_path):
    from codecloop.dali_pipes.ladder import load_ladder, transcode
    from codecloop.dali_pipes.video import VideoBatches
    from tests.videos import moving_frames, write_video

    write_video(tmp_path / "src" / "clip.mp4", moving_frames(6, 64, 48))
    transcode(tmp_path / "src", tmp_path / "ladder", crfs=(0, 40), workers=1, progress=False)
    with pytest.raises(RuntimeError, match="NVDEC needs the NVIDIA driver's libnvcuvid.so.1.*video"):
        VideoBatches(load_ladder(tmp_path / "ladder"), ["clip"], runtime=PipelineRuntime(batch_size=1, device_id=0),
                     training=False, spec=H264.parse_spec("40"), codec=H264,)


def test_a_dali_error_names_the_files_in_flight(tmp_path, image_folder):
    """A file DALI cannot decode: the error says which files the failing batches held."""
    from codecloop.dali_pipes.dense import DenseBatches, DenseGeometry, DenseLayout, DenseSample

    files = _image_files(image_folder)[:4]
    broken = tmp_path / "broken.jpg"
    data = Path(files[0]).read_bytes()
    broken.write_bytes(data[:data.index(b"\xff\xda") + 14])  # cut after its headers: PIL still reads the size
    with pytest.raises(RuntimeError, match=f"(?s)Failed to decode.*while reading one of 5 samples: .*{broken.name}"):
        list(DenseBatches([DenseSample(path) for path in [*files, str(broken)]], runtime=PipelineRuntime(batch_size=5),
             layout=DenseLayout(), load_targets=lambda index: {}, training=False, spec=JPEG.parse_spec("none"),
             codec=JPEG, geometry=DenseGeometry(32, 32)))


@pytest.fixture(scope="module")
def small_ladder(tmp_path_factory):
    from codecloop.dali_pipes.ladder import load_ladder, transcode
    from tests.videos import moving_frames, write_video

    root = tmp_path_factory.mktemp("ladder")
    write_video(root / "src" / "clip.mp4", moving_frames(6, 64, 48))
    transcode(root / "src", root / "ladder", crfs=(0, 40), workers=1, progress=False, codecs="h264,hevc,av1")
    return load_ladder(root / "ladder")


def test_every_gpu_graph_traces_on_the_cpu(image_folder, small_ladder):
    """Each pipeline in its GPU form (device 0, nvJPEG / NVDEC "mixed" decoders, outputs moved with
    ``.gpu()``, every option) is traced: DALI checks there what a first GPU run would otherwise find,
    such as a GPU node given as an argument input. Building needs CUDA, so it stops before that."""
    from codecloop.dali_pipes.codec import _roundtrip_pipeline
    from codecloop.dali_pipes.dense import (DenseFeeder, DenseGeometry, DenseLayout, DenseSample, RasterFiles,
                                            dense_pipeline)
    from codecloop.dali_pipes.images import ImageFeeder, image_pipeline
    from codecloop.dali_pipes.pipelines import CODEC_PLACEMENTS
    from codecloop.dali_pipes.video import ClipSampling, LadderFeeder, VideoGeometry, video_pipeline

    files, geometry = _image_files(image_folder)[:4], ImageGeometry(32, 40)
    run = {"batch_size": 2, "num_threads": 1, "device_id": 0}
    for training in (True, False):
        sharding = {"training": training, "batch_size": 2}
        for placement in CODEC_PLACEMENTS:
            for spec in ("none", "5-95", "10"):
                for with_clean in (False, True):
                    feeder = ImageFeeder(files, JPEG.parse_spec(spec, 0.2), JPEG, 0.5, on_gpu=True,
                                         with_clean=with_clean, codec_placement=placement, **sharding)
                    image_pipeline(feeder=feeder, geometry=geometry, channels_last=with_clean, **run)
            if not training:
                feeder = ImageFeeder(files, JPEG.parse_spec("none"), JPEG, 0.5, on_gpu=True, levels=[10, 50],
                                     codec_placement=placement, **sharding)
                image_pipeline(feeder=feeder, geometry=geometry, channels_last=True, **run)
        in_graph = {"mask": RasterFiles(files, lookup=np.zeros((2, 256), np.uint8), rows=[0, 1] * 2),
                    "depth": RasterFiles(files, scale=256.0)}  # masks and depth read and decoded by DALI
        for codec, spec in ((JPEG, JPEG.parse_spec("5-95")), (H264, H264.parse_spec("40"))):
            for raster_files in ({}, in_graph):
                layout = DenseLayout(rasters=("mask", "depth"), points=True, extras=("labels",))
                feeder = DenseFeeder([DenseSample(path) for path in files], layout, lambda index: {}, spec, codec,
                                     DenseGeometry(32, 32), raster_files, **sharding)
                dense_pipeline(feeder=feeder, on_gpu=True, channels_last=training, **run)
        mix = [get_codec(name) for name in ("h264", "hevc", "av1")]  # a (codec, CRF) rung drawn per sample
        for with_clean in (False, True):
            for samples, ladder, codec in (([("clip", 0), ("clip", 3)], small_ladder, H264),
                                           ([("clip", 0), ("clip", 3)], small_ladder, mix), (files, None, H264)):
                feeder = ImageFeeder(samples, H264.parse_spec("0-40"), codec, 0.5, ladder=ladder, on_gpu=True,
                                     with_clean=with_clean, **sharding)
                image_pipeline(feeder=feeder, geometry=geometry, channels_last=with_clean, **run)
        for codec in (H264, mix):
            feeder = LadderFeeder(small_ladder, ["clip"], H264.parse_spec("0-40"), codec, ClipSampling(4, 1, 1),
                                  decode_on_cpu=False, **sharding)
            video_pipeline(feeder=feeder, geometry=VideoGeometry(32, 40), on_gpu=True, **run)
    _roundtrip_pipeline(device="gpu", **run)


def _png_with_broken_pixel_data(source: Path, target: Path) -> None:
    """`source` PNG with its compressed pixel data (IDAT) scrambled and the chunk CRC recomputed: the
    header, every CRC and the end chunk are right, so only a full decode finds it broken."""
    import struct
    import zlib

    data = bytearray(source.read_bytes())
    start = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[start:start + 4])[0]
    body = start + 8
    data[body + 2:body + length] = bytes(reversed(data[body + 2:body + length]))
    data[body + length:body + length + 4] = struct.pack(">I", zlib.crc32(data[start + 4:body + length]))
    target.write_bytes(bytes(data))


def test_a_file_the_pipeline_cannot_decode_stops_a_run_once_not_at_every_resume(tmp_path, run_cli):
    """A PNG that passes the scan but that DALI cannot decode: the run stops naming it and records it as
    a bad file; --resume then skips and counts it and finishes."""
    from codecloop.synthetic.datasets import make_synthetic

    data = make_synthetic("segmentation", tmp_path / "data", train=6, val=2)
    broken = data / "images" / "train" / "000003.png"
    _png_with_broken_pixel_data(broken, broken)
    args = ["train", "--task", "segmentation", "--data", data, "--input_size", "64", "--batch_size", "3",
            "--epochs", "1", "--checkpoint_every", "1", "--wandb", "disabled", "--progress", "false",
            "--num_threads", "1", "--out", tmp_path / "run"]
    with pytest.raises(RuntimeError, match=f"(?s){broken} cannot be decoded .*recorded as a bad file"):
        run_cli(*args)
    status, _, err = run_cli(*args, "--resume")
    assert status == 0, err
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [record for record in records if "data/skipped_files" in record][-1]
    assert skipped["data/skipped_files"] == 1
    assert "the pipeline could not decode it in an earlier run" in skipped["data/skipped_paths"][0]
