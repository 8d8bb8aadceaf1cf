"""Data side of a 9-level JPEG sweep: one pass (decode once, 9 codec stages) against one pass per level.

Writes real 500x375 JPEG files (crops of the photos shipped with scikit-image / scikit-learn),
then times the evaluation pipelines only (the model runs once per image and level either way):
`SweepBatches` over clean + 9 qualities, against 10 epochs of `ImageBatches` at one quality
each. After a warm-up, three repeats; median and spread of image-levels per second.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import nvidia.dali
import torch

from dali_pipes import ImageBatches, parse_quality_spec
from dali_pipes.fidelity import write_photo_jpegs
from dali_pipes.iterator import SweepBatches

LEVELS = [5, 10, 15, 20, 30, 50, 75, 90, 95]


def timed(run, repeats: int) -> list[float]:
    run()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="append the Markdown table here")
    args = parser.parse_args()
    device_id = 0 if torch.cuda.is_available() else None
    with tempfile.TemporaryDirectory() as folder:
        files = write_photo_jpegs(Path(folder), args.images)
        one_pass = SweepBatches(files, levels=LEVELS, batch_size=args.batch_size, device_id=device_id)
        per_level = [ImageBatches(files, batch_size=args.batch_size, training=False, device_id=device_id,
                                  spec=parse_quality_spec(str(level) if level else "none"))
                     for level in [None, *LEVELS]]

        def run_one_pass() -> None:
            for _ in one_pass:
                pass

        def run_per_level() -> None:
            for batches in per_level:
                for _ in batches:
                    pass

        work = args.images * (len(LEVELS) + 1)
        rates = {name: sorted(work / s for s in timed(run, args.repeats))
                 for name, run in (("one pass", run_one_pass), ("one pass per level", run_per_level))}
    device = torch.cuda.get_device_name() if device_id is not None else next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "CPU")
    lines = [f"9-level JPEG sweep, data only, {args.images} images of 500x375, batch {args.batch_size}; {device}, "
             f"DALI {nvidia.dali.__version__}, torch {torch.__version__}, python {platform.python_version()}", "",
             "| sweep | image-levels/s (median) | min | max |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {r[len(r) // 2]:.1f} | {r[0]:.1f} | {r[-1]:.1f} |" for name, r in rates.items()]
    speedup = rates["one pass"][len(rates["one pass"]) // 2] / rates["one pass per level"][len(rates["one pass per level"]) // 2]
    lines += ["", f"speed-up of the one-pass sweep: {speedup:.2f}x"]
    print("\n".join(lines))
    if args.out:
        with args.out.open("a") as handle:
            handle.write("\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
