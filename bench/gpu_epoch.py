"""One epoch of resnet50 (bf16 on a GPU) with the JPEG stage in the loop; prints and saves images/s.

The dataset is written here: 10 classes of real JPEG crops (500x375) of the photos shipped with
scikit-image / scikit-learn, `per_class` per class. Part 1 of gpu_check.sh runs it (tiny on a CPU).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from codecloop.dali_pipes.fidelity import packaged_photos
from codecloop.launch.cli import main as codecloop
from codecloop.bench.throughput import device_name


def write_dataset(root: Path, per_class: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    photos = list(packaged_photos().items())
    for class_id in range(10):
        name, photo = photos[class_id % len(photos)]
        for split, count in (("train", per_class), ("val", max(1, per_class // 8))):
            folder = root / split / f"{class_id:02d}_{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                height, width = photo.shape[:2]
                side = int(rng.integers(min(height, width) // 2, min(height, width)))
                top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
                crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((500, 375))
                crop.save(folder / f"{index:05d}.jpg", quality=90)
    return root


def run(out: Path, per_class: int, batch_size: int, crop_size: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        data = write_dataset(Path(scratch) / "data", per_class)
        run_dir = Path(scratch) / "run"
        status = codecloop(["train", "--data", str(data), "--model", "resnet50", "--precision", "auto",
                            "--crop_size", str(crop_size), "--resize_size", str(crop_size * 8 // 7),
                            "--batch_size", str(batch_size), "--epochs", "1", "--level", "5-95",
                            "--clean_prob", "0.1", "--log_every", "5", "--checkpoint_every", "0",
                            "--wandb", "disabled", "--progress", "false", "--out", str(run_dir)])
        if status != 0:
            raise SystemExit(f"codecloop train exited with {status}")
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in records if "throughput/samples_per_sec" in r][1:]  # first interval holds warm-up
    result = {
        "device": device_name(), "precision": "bf16" if torch.cuda.is_available() else "fp32",
        "torch": torch.__version__, "python": platform.python_version(),
        "images": per_class * 10, "batch_size": batch_size, "crop_size": crop_size,
        "samples_per_sec_median": float(np.median([r["throughput/samples_per_sec"] for r in steady])),
        "data_wait_frac_median": float(np.median([r["throughput/data_wait_frac"] for r in steady])),
        "eval_top1": [r["eval/top1"] for r in records if "eval/top1" in r][-1],
    }
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results/resnet50_epoch.json"))
    parser.add_argument("--per_class", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--crop_size", type=int, default=224)
    args = parser.parse_args()
    run(args.out, args.per_class, args.batch_size, args.crop_size)
