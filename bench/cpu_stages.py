"""Where the CPU training pipeline's time goes: milliseconds of one DALI thread per image, stage by stage.

Each row is a DALI CPU pipeline on one thread that stops after a stage (file read, decode, the
JPEG stage at a quality drawn in 5..95, random-resized crop to 224 + flip + normalize), over the
same 500x375 JPEGs written from the packaged photos; the last row is the pipeline codecloop
trains with on a CPU, which decodes and compresses only the crop's 16-pixel-grid region.
The rows are measured in turn, `--rounds` times, and the median is reported.

    python bench/cpu_stages.py --out bench/results/cpu_stages.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import nvidia.dali
import nvidia.dali.math as dali_math
from nvidia.dali import fn, pipeline_def, types

from codecloop.dali_pipes.codec import jpeg_stage
from codecloop.dali_pipes.fidelity import cpu_model, write_photo_jpegs
from codecloop.dali_pipes.pipelines import ImageGeometry, normalize

GEOMETRY = ImageGeometry(crop_size=224)


def quality():
    return fn.random.uniform(range=[5, 96], dtype=types.INT32)


def decoded(encoded):
    return fn.decoders.image(encoded, output_type=types.RGB)


def train_geometry(images, geometry: ImageGeometry):
    """A random-resized crop to the crop size (area min_scale..1, aspect 3/4..4/3), drawn in the graph."""
    return fn.random_resized_crop(images, size=[geometry.crop_size] * 2, random_area=[geometry.min_scale, 1.0],
                                  random_aspect_ratio=[3 / 4, 4 / 3], antialias=True)


def windowed(encoded):
    """The crop's region on the 16-pixel grid, one tile to spare on each side, decoded and compressed alone
    (what `codecloop.dali_pipes.images.tile_window` does with the sample plan's boxes), then resized."""
    shape = fn.peek_image_shape(encoded)
    anchor, size = fn.random_crop_generator(shape, random_area=[GEOMETRY.min_scale, 1.0],
                                            random_aspect_ratio=[3 / 4, 4 / 3])
    start = dali_math.max(anchor // 16 * 16 - 16, 0)
    end = dali_math.min((anchor + size + 15) // 16 * 16 + 16, fn.cast(shape[0:2], dtype=types.INT32))
    region = fn.decoders.image_slice(encoded, start, end - start, axes=[0, 1], output_type=types.RGB)
    offset = fn.cast(anchor - start, dtype=types.FLOAT)
    return fn.resize(jpeg_stage(region, quality()), size=[GEOMETRY.crop_size] * 2, roi_start=offset,
                     roi_end=offset + fn.cast(size, dtype=types.FLOAT), antialias=True)


STAGES = {
    "read": lambda encoded: encoded,
    "read + decode": decoded,
    "read + decode + JPEG stage": lambda encoded: jpeg_stage(decoded(encoded), quality()),
    "read + decode + crop/flip/normalize (no codec)": lambda encoded: normalize(
        train_geometry(decoded(encoded), GEOMETRY), GEOMETRY, mirror=fn.random.coin_flip()),
    "whole image: read + decode + JPEG + crop/flip/normalize": lambda encoded: normalize(
        train_geometry(jpeg_stage(decoded(encoded), quality()), GEOMETRY), GEOMETRY, mirror=fn.random.coin_flip()),
    "crop region: read + decode + JPEG + crop/flip/normalize": lambda encoded: normalize(
        windowed(encoded), GEOMETRY, mirror=fn.random.coin_flip()),
}


def stage_pipeline(files: list[str], graph, batch_size: int):
    @pipeline_def
    def pipeline():
        encoded, _ = fn.readers.file(files=files, random_shuffle=True)
        return graph(encoded)

    pipe = pipeline(batch_size=batch_size, num_threads=1, device_id=None, seed=1)
    pipe.build()
    return pipe


def ms_per_image(pipe, batch_size: int, batches: int) -> float:
    started = time.perf_counter()
    for _ in range(batches):
        pipe.run()
    return (time.perf_counter() - started) * 1000 / (batches * batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        files = write_photo_jpegs(Path(folder), args.images)
        pipes = {name: stage_pipeline(files, graph, args.batch_size) for name, graph in STAGES.items()}
        for pipe in pipes.values():
            ms_per_image(pipe, args.batch_size, 2)
        timings: dict[str, list[float]] = {name: [] for name in pipes}
        for _ in range(args.rounds):
            for name, pipe in pipes.items():
                timings[name].append(ms_per_image(pipe, args.batch_size, args.batches))
    lines = ["# CPU pipeline stages, ms of one DALI thread per image", "",
             f"{cpu_model()}, DALI {nvidia.dali.__version__}; 500x375 JPEGs, batch {args.batch_size}, median of "
             f"{args.rounds} rounds of {args.batches} batches (min..max)", "",
             "| pipeline up to | ms / image | min | max |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
              for name, values in timings.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
