"""What the dense feeder costs per sample for segmentation: the Python feeder alone, and the whole CPU pipeline.

Writes a generated segmentation dataset (`--images` JPEG photos-like images with mode-L masks, or palette
masks with ``--format voc``), builds the task's training pipeline (`SegmentationTask.batches`) and times

- ``feeder``: the external-source callable alone (what Python does per batch: reads, decodes, draws);
- ``pipeline``: whole epochs through DALI on the CPU (`device_id` None), decode, crop, resize included.

Each row is the best of `--rounds` epochs, in samples per second.

    python bench/dense_feeder.py --threads 1 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from codecloop.dali_pipes import PipelineRuntime
from codecloop.dali_pipes.codecs import JPEG
from codecloop.tasks.segmentation import SegmentationTask
from codecloop.synthetic import make_synthetic


def feeder_rate(batches, rounds: int) -> float:
    """Samples per second of the feeder callable over whole epochs."""
    feeder, best = batches.feeder, 0.0
    for epoch in range(rounds):
        start, count = time.perf_counter(), 0
        for batch in range(feeder.batches_per_epoch()):
            outputs = feeder(SimpleNamespace(epoch_idx=epoch + 1, iteration=batch))
            count += len(outputs[0])
        best = max(best, count / (time.perf_counter() - start))
    return best


def pipeline_rate(batches, rounds: int) -> float:
    """Samples per second of whole epochs through the CPU pipeline."""
    best = 0.0
    for _ in range(rounds):
        start, count = time.perf_counter(), 0
        for batch in batches:
            count += len(batch["index"])
        best = max(best, count / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--format", default="folder")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = make_synthetic("segmentation", Path(folder) / "data", format=args.format, train=args.images, val=1,
                              height=args.height, width=args.width)
        task = SegmentationTask(root, input_size="256x512")
        index = task.sample_index("train")
        print(f"segmentation {args.format}, {len(index)} images {args.width}x{args.height}, batch {args.batch_size}")
        for threads in args.threads:
            runtime = PipelineRuntime(batch_size=args.batch_size, num_threads=threads)
            batches = task.batches(index, training=True, spec=JPEG.parse_spec("10-95"), codec=JPEG,
                                   runtime=runtime)
            fed = feeder_rate(batches, args.rounds)
            piped = pipeline_rate(batches, args.rounds)
            print(f"threads {threads}: feeder {fed:,.0f} samples/s, CPU pipeline {piped:,.1f} samples/s", flush=True)


if __name__ == "__main__":
    main()
