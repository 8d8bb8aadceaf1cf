"""GPU path, images (part 1 of bench/gpu_check.sh): nvJPEG decode ("mixed"), the CUDA JPEG kernel against
libjpeg, batches on the device, bf16 training, the dense view. Skipped without CUDA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.codecs import JPEG
from codecloop.dali_pipes import ImageBatches, jpeg_roundtrip
from codecloop.dali_pipes.fidelity import packaged_photos
from codecloop.dali_pipes.reference import mean_abs_diff, psnr, reference_jpeg_roundtrip
from tests.conftest import TINY, no_host_sync

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("quality", [5, 10, 15, 25, 50, 75, 95])
def test_gpu_stage_close_to_reference(quality):
    """Every photo within DALI's own bound of libjpeg (mean absolute difference < 5), and the kernel's
    mean PSNR against the originals within 1.5 dB of libjpeg's (4:2:0 both)."""
    photos = list(packaged_photos().values())
    outputs = jpeg_roundtrip(photos, quality, device="gpu")
    references = [reference_jpeg_roundtrip(photo, quality) for photo in photos]
    for photo, output, reference in zip(photos, outputs, references):
        assert output.shape == photo.shape and output.dtype == np.uint8
        difference = mean_abs_diff(output, reference)
        assert difference < 5, f"quality {quality}: mean absolute difference {difference:.2f}"
    kernel = np.mean([psnr(photo, output) for photo, output in zip(photos, outputs)])
    libjpeg = np.mean([psnr(photo, reference) for photo, reference in zip(photos, references)])
    assert abs(kernel - libjpeg) < 1.5, f"quality {quality}: {kernel:.2f} dB against libjpeg's {libjpeg:.2f} dB"


def test_gpu_batches_live_on_the_device(image_folder):
    files = sorted(str(path) for path in (image_folder / "val").rglob("*.jpg"))
    batches = ImageBatches(files, runtime=PipelineRuntime(batch_size=4, device_id=0), training=True,
                           spec=JPEG.parse_spec("5-95", 0.2), codec=JPEG, targets={"label": torch.arange(len(files))},)
    seen = []
    for batch in batches:
        assert batch["image"].is_cuda and batch["label"].is_cuda and batch["codec_level"].is_cuda
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(files)))


def test_gpu_train_bf16(image_folder, tmp_path, run_cli):
    out = tmp_path / "gpu"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--epochs", "1", "--level", "5-95", "--out", out)
    assert status == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/n"] for r in records if "eval/n" in r] == [15]


def test_gpu_dense_batches_match_the_cpu_path(tmp_path):
    """nvJPEG decode + the dense view on the GPU: masks and points equal the CPU pipeline's."""
    from codecloop.dali_pipes.dense import DenseBatches, DenseGeometry, DenseLayout, DenseSample
    from codecloop.synthetic.datasets import make_synthetic
    from codecloop.tasks.segmentation import SegmentationTask

    data = make_synthetic("segmentation", tmp_path / "data", train=2, val=4)
    task = SegmentationTask(data, input_size="64x96")
    index = task.sample_index("val")
    layout = DenseLayout(rasters=("mask",), points=True)
    points = np.array([[3.0, 4.0], [60.5, 40.25]], np.float32)

    def load(position):
        return {**task.load_targets(index, position), "points": points}

    batches = {}
    for device_id in (None, 0):
        batches[device_id] = next(iter(DenseBatches([DenseSample(path) for path in index.files],
                                  runtime=PipelineRuntime(batch_size=4, device_id=device_id, seed=5), layout=layout,
                                  load_targets=load, training=True, spec=JPEG.parse_spec("none"), codec=JPEG,
                                  geometry=DenseGeometry(64, 96),)))
    gpu, cpu = batches[0], batches[None]
    assert gpu["image"].is_cuda and gpu["mask"].is_cuda and gpu["points"].is_cuda
    assert torch.equal(gpu["mirror"].cpu(), cpu["mirror"])
    assert (gpu["mask"].cpu() == cpu["mask"]).float().mean() > 0.99
    torch.testing.assert_close(gpu["points"].cpu(), cpu["points"])
    assert (gpu["image"].cpu() - cpu["image"]).abs().mean() < 0.05


@pytest.mark.parametrize("name", ["classification", "segmentation", "depth", "pose"])
def test_gpu_training_step_never_waits_for_the_gpu(name, image_folder, tmp_path):
    """Handing a batch over, the loss and the backward pass make no host sync (torch's sync debug mode
    raises on any: `.item()`, `.tolist()`, a boolean index, a copy from pageable memory). Detection
    and Keypoint R-CNN are left out: torchvision's detectors sync inside the model."""
    from codecloop.dali_pipes import PipelineRuntime
    from codecloop.tasks import get_task_class
    from codecloop.synthetic.datasets import make_synthetic

    if name == "classification":
        task = get_task_class(name)(image_folder, model="resnet18", crop_size=64, resize_size=72)
    else:
        task = get_task_class(name)(make_synthetic(name, tmp_path / name, train=8, val=0), input_size="64")
    model = task.create_model().cuda().to(memory_format=torch.channels_last)
    runtime = PipelineRuntime(batch_size=4, device_id=0, num_threads=2, channels_last=True)
    batches = iter(task.batches(task.sample_index("train"), training=True, spec=JPEG.parse_spec("5-95"), codec=JPEG,
                                runtime=runtime))
    next(batches)
    with no_host_sync():
        batch = next(batches)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = task.forward(model, batch)["loss"]
        loss.backward()
    assert batch["image"].is_contiguous(memory_format=torch.channels_last) and batch["image"].shape[1] == 3
    assert torch.isfinite(loss).item()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_gpu_decode_ignores_exif_orientation(orientation, tmp_path):
    """nvJPEG ("mixed") follows the stored-orientation rule too: a tagged file decodes to the untagged
    file's pixels (within nvJPEG's own IDCT rounding of the CPU decoder's)."""
    from PIL import Image

    from tests.test_exif_orientation import write_jpeg

    pixels = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 160, 3), dtype=np.uint8))
    plain = write_jpeg(pixels, tmp_path / "plain.jpg", None)
    tagged = write_jpeg(pixels, tmp_path / "tagged.jpg", orientation)
    batches = {path: next(iter(ImageBatches([str(path)], runtime=PipelineRuntime(batch_size=1, device_id=0),
                          training=False, spec=JPEG.parse_spec("none"), codec=JPEG,)))["image"] for path in (plain,
                          tagged)}
    assert torch.equal(batches[plain], batches[tagged])
