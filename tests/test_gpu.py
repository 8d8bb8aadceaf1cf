"""GPU path: nvJPEG decode ("mixed"), the CUDA codec kernel, bf16 training. Skipped without CUDA."""

from __future__ import annotations

import json

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
