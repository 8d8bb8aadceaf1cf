"""Images/s of the classification train pipeline (data only), clean vs JPEG in the loop.

Writes real JPEG files (500x375 crops of the photos shipped with scikit-image / scikit-learn),
then times full epochs of `ImageBatches` after one warm-up epoch, three repeats, median and
spread. `codecloop bench` (issue #5) will supersede this script.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import nvidia.dali
import torch

from dali_pipes import ImageBatches, parse_quality_spec
from dali_pipes.fidelity import write_photo_jpegs


def images_per_second(files: list[str], spec: str, batch_size: int, repeats: int) -> list[float]:
    batches = ImageBatches(files, batch_size=batch_size, training=True, spec=parse_quality_spec(spec),
                           device_id=0 if torch.cuda.is_available() else None)
    for _ in batches:
        pass
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        count = sum(batch["image"].shape[0] for batch in batches)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        rates.append(count / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="append the Markdown table here")
    args = parser.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else (
        next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "CPU"))
    lines = [f"train pipeline, 500x375 JPEG -> random-resized-crop 224 + flip, batch {args.batch_size}, "
             f"{args.images} images; {device}, DALI {nvidia.dali.__version__}, torch {torch.__version__}, "
             f"python {platform.python_version()}", "",
             "| JPEG stage | images/s (median) | min | max |", "| --- | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as scratch:
        files = write_photo_jpegs(Path(scratch), args.images)
        for spec in ("none", "5-95"):
            rates = images_per_second(files, spec, args.batch_size, args.repeats)
            lines.append(f"| {spec} | {np.median(rates):.1f} | {min(rates):.1f} | {max(rates):.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with args.out.open("a") as handle:
            handle.write(table + "\n\n")


if __name__ == "__main__":
    main()
