"""What the image scan costs per file: header checks, the damaged-JPEG decode, and a cache hit.

Writes `--images` real 500x375 JPEGs (quality 90) from the packaged photos, then times
`dali_pipes.validate.scan_images` on them: without the decode (``keep_damaged``), with it on one
thread and on every core, and a second scan that finds every verdict in the cache. Each row is the
median of `--rounds` runs, in milliseconds per image (wall time / images).

    python bench/image_scan.py --out bench/results/image_scan_cpu.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import simplejpeg

from codecloop.dali_pipes.fidelity import cpu_model, write_photo_jpegs
from codecloop.dali_pipes.validate import ScanPolicy, scan_images
from codecloop.trainers.report import write_text


def per_image_ms(paths: list[str], rounds: int, cached: bool, **options) -> float:
    """Median wall milliseconds per image of a scan; `cached` scans find a filled cache, others none."""
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["CODECLOOP_CACHE_DIR"] = cache
            if cached:
                scan_images(paths, **options)
            start = time.perf_counter()
            scan_images(paths, **options)
            times.append((time.perf_counter() - start) * 1000 / len(paths))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as folder:
        paths = write_photo_jpegs(Path(folder), args.images)
        rows = [
            ("header, end marker (no decode: keep_damaged)", per_image_ms(
                paths, args.rounds, False, policy=ScanPolicy(keep_damaged=True), cache=False, workers=1)),
            ("header + damaged-JPEG decode, 1 thread", per_image_ms(paths, args.rounds, False, cache=False, workers=1)),
            (f"header + damaged-JPEG decode, {cores} threads", per_image_ms(paths, args.rounds, False, cache=False)),
            (f"header + decode, {cores} threads, writing the cache", per_image_ms(paths, args.rounds, False)),
            ("second scan: every verdict from the cache", per_image_ms(paths, args.rounds, True)),
        ]
    lines = [f"# Image scan cost per 500x375 JPEG (quality 90), {args.images} images",
             "", f"{cpu_model()}, {cores} cores, simplejpeg {simplejpeg.__version__}; "
             f"median of {args.rounds} rounds, wall time / images.", "",
             "| scan | ms per image |", "| --- | ---: |"]
    lines += [f"| {name} | {ms:.3f} |" for name, ms in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
