"""`codecloop bench --mode codecs`: what each online codec costs on the CPU, and what share of a GPU step that is.

Every registered codec that compresses images online (in the DALI graph, or a host round trip on the feeder's
CPU threads) is timed on real photos at 224x224 and at the photos' native size, at a few of its default levels
(the most and least compressed and the middle one): milliseconds per image on one thread (median of the
repeats, after a warm-up) and images/s on `threads` threads (a thread pool like the feeder's; for an in-graph
codec, a DALI CPU pipeline with that many threads). JPEG is also timed through Pillow's libjpeg, for reference.
A codec with no online image path (a ladder-only codec) or that this machine cannot run is listed as skipped,
with the reason.

The share of a GPU step: codec time per batch on the threads over a GPU training step's time per batch,
``gpu_images_per_sec / images_per_sec``. Above 1 the GPU waits on the codec: it needs more cores (the
threads that would keep up are printed, scaling the measured per-thread rate) or a ladder, encoded ahead.
The default GPU rate is a published figure (`codecloop.bench.gpu_rates`); give your own model's (``bench --mode
model`` on the GPU).
Rows are appended to ``OUT/bench-codecs-<cpu>-dali<v>-pillow<v>-av<v>.csv`` and ``.json``.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import nvidia.dali
from nvidia.dali import fn, pipeline_def, types
from PIL import Image, features

from codecloop.bench.gpu_rates import GPU_IMAGES_PER_SEC, GPU_SOURCE
from codecloop.bench.throughput import append_rows
from codecloop.dali_pipes.codecs import Codec, codec_names, get_codec
from codecloop.dali_pipes.fidelity import cpu_model, packaged_photos
from codecloop.dali_pipes.reference import reference_jpeg_roundtrip

NETWORK_SIZE = 224
SIZES = ("224x224", "native")
REFERENCES = {"jpeg": ("pillow-libjpeg", reference_jpeg_roundtrip)}  # a codec's usual encoder, timed beside its stage
Measure = Callable[[list[np.ndarray], int, int, "CostSettings"], tuple[list[float], list[float]]]


@dataclass(frozen=True)
class CostSettings:
    """How each (codec, level, size) is timed (see the CLI's ``bench --help``)."""

    threads: int
    batch_size: int
    warmup: int
    iterations: int
    repeats: int
    level_count: int
    gpu_images_per_sec: float


def cost_levels(codec: Codec, count: int) -> list[int]:
    """`count` of the codec's default levels, most compressed first, spread over the list: one is the middle
    level, three the most and least compressed and the middle one."""
    levels = codec.worst_first(codec.default_levels)
    if count >= len(levels):
        return levels
    if count == 1:
        return [levels[len(levels) // 2]]
    return [levels[round(position)] for position in np.linspace(0, len(levels) - 1, count)]


def bench_photos(count: int, data: Path | None = None) -> list[np.ndarray]:
    """Up to `count` real RGB photos at their native size: the packaged ones, or the first files of an
    ImageFolder's ``train/`` (`data`)."""
    if data is None:
        return list(packaged_photos().values())[:count]
    from codecloop.tasks.classification import list_image_folder

    photos = []
    for path in list_image_folder(Path(data) / "train")[1][:count]:
        with Image.open(path) as image:
            photos.append(np.asarray(image.convert("RGB")))
    return photos


def network_view(image: np.ndarray, side: int = NETWORK_SIZE) -> np.ndarray:
    """The centre square of `image` resized to `side` x `side`: what the network sees."""
    height, width = image.shape[:2]
    edge = min(height, width)
    top, left = (height - edge) // 2, (width - edge) // 2
    square = Image.fromarray(image[top:top + edge, left:left + edge])
    return np.asarray(square.resize((side, side), Image.Resampling.BILINEAR))


def cycled(images: Sequence[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` images, going round `images` as often as needed."""
    return [images[index % len(images)] for index in range(count)]


def host_costs(roundtrip: Callable[[np.ndarray, int], np.ndarray]) -> Measure:
    """A measure of a host round trip: ms per image on this thread (each repeat `iterations` images, after
    `warmup`), and images/s of `batch_size` images mapped over a pool of `threads` threads."""

    def measure(images: list[np.ndarray], level: int, threads: int,
                settings: CostSettings) -> tuple[list[float], list[float]]:
        for image in cycled(images, settings.warmup):
            roundtrip(image, level)
        milliseconds = []
        for _ in range(settings.repeats):
            started = time.perf_counter()
            for image in cycled(images, settings.iterations):
                roundtrip(image, level)
            milliseconds.append((time.perf_counter() - started) * 1000 / settings.iterations)
        batch, rates = cycled(images, settings.batch_size), []
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(roundtrip, cycled(images, threads), [level] * threads))
            for _ in range(settings.repeats):
                started = time.perf_counter()
                list(pool.map(roundtrip, batch, [level] * len(batch)))
                rates.append(len(batch) / (time.perf_counter() - started))
        return milliseconds, rates

    return measure


@pipeline_def
def _graph_pipeline(stage: Callable, images: list[np.ndarray], level: int):
    frames = fn.external_source(source=lambda: images, layout="HWC", dtype=types.UINT8)
    return stage(frames, types.Constant(level, dtype=types.INT32))


def graph_costs(stage: Callable) -> Measure:
    """A measure of an in-graph codec stage in a DALI CPU pipeline: ms per image from one-thread batches of
    `iterations` images, and images/s from batches of `batch_size` on `threads` threads (one untimed batch
    after building each pipeline, then one timed batch per repeat)."""

    def rates(images: list[np.ndarray], level: int, threads: int, batch_size: int, repeats: int) -> list[float]:
        batch = cycled(images, batch_size)
        pipe = _graph_pipeline(stage, batch, level, batch_size=batch_size, num_threads=threads, device_id=None)
        pipe.build()
        pipe.run()
        measured = []
        for _ in range(repeats):
            started = time.perf_counter()
            pipe.run()
            measured.append(batch_size / (time.perf_counter() - started))
        return measured

    def measure(images: list[np.ndarray], level: int, threads: int,
                settings: CostSettings) -> tuple[list[float], list[float]]:
        one = rates(images, level, 1, settings.iterations, settings.repeats)
        return [1000 / rate for rate in one], rates(images, level, threads, settings.batch_size, settings.repeats)

    return measure


def contenders(codec: Codec) -> list[tuple[str, str, Measure]] | str:
    """``(contender, runs as, measure)`` of each way `codec` compresses images online, or why it is skipped."""
    if not codec.on_images:
        return (f"no online image path (runs as: {', '.join(codec.runs)}): its clips are encoded ahead into a "
                f"ladder by `codecloop transcode`")
    reason = codec.missing() if codec.missing else None
    if reason:
        return reason
    found = []
    if codec.graph_stage is not None:
        found.append(("dali-cpu", "graph", graph_costs(codec.graph_stage)))
    if codec.name in REFERENCES:
        name, roundtrip = REFERENCES[codec.name]
        found.append((name, "reference", host_costs(roundtrip)))
    if codec.roundtrip is not None:
        found.append(("host", "host", host_costs(codec.roundtrip)))
    return found


def library_versions() -> dict[str, str]:
    """The versions of the libraries whose codecs are timed."""
    return {"dali": nvidia.dali.__version__, "pillow": Image.__version__, "av": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
            "libjpeg_turbo": features.version("libjpeg_turbo") or "", "libwebp": features.version("webp") or "",
            "libavif": features.version("avif") or ""}


def results_stem(versions: dict[str, str]) -> str:
    """File stem naming the CPU and the codec libraries that produced the numbers."""
    cpu = re.sub(r"[^A-Za-z0-9]+", "-", cpu_model()).strip("-").lower()
    return f"bench-codecs-{cpu}-dali{versions['dali']}-pillow{versions['pillow']}-av{versions['av']}"


def size_text(images: Sequence[np.ndarray]) -> str:
    """The sizes of `images` as ``WxH`` (one size) or a range and the mean megapixels."""
    sizes = sorted({(image.shape[1], image.shape[0]) for image in images}, key=lambda size: size[0] * size[1])
    if len(sizes) == 1:
        return f"{sizes[0][0]}x{sizes[0][1]}"
    mean = statistics.mean(image.shape[0] * image.shape[1] for image in images) / 1e6
    return f"{sizes[0][0]}x{sizes[0][1]} to {sizes[-1][0]}x{sizes[-1][1]}, mean {mean:.2f} MP"


def run_codec_cost(*, data: Path | None, images: int, threads: int | None, batch_size: int, warmup: int,
                   iterations: int, repeats: int, level_count: int, gpu_images_per_sec: float,
                   out: Path) -> list[dict]:
    """Time every registered codec (see the module docstring), append the rows, print the table; returns the
    rows (a skipped codec's carries its reason in ``skipped``)."""
    if min(images, batch_size, iterations, repeats, level_count) < 1 or warmup < 0:
        raise ValueError("bench --mode codecs needs --images, --batch_size, --iterations, --repeats and "
                         "--level_count of at least 1 and --warmup of at least 0")
    if not gpu_images_per_sec > 0:
        raise ValueError(f"--gpu_images_per_sec must be positive, got {gpu_images_per_sec}")
    from codecloop.dali_pipes import default_num_threads

    settings = CostSettings(threads or default_num_threads(), batch_size, warmup, iterations, repeats, level_count,
                            gpu_images_per_sec)
    native = bench_photos(images, data)
    if not native:
        raise ValueError(f"no photos to time under {data}/train")
    views = {"224x224": [network_view(image) for image in native], "native": native}
    versions = library_versions()
    base = {"mode": "codecs", "device": cpu_model(), "cores": os.cpu_count(), "threads": settings.threads,
            **versions, "photos": len(native), "native_size": size_text(native), "batch_size": batch_size,
            "warmup": warmup, "iterations": iterations, "repeats": repeats,
            "gpu_images_per_sec": gpu_images_per_sec,
            "gpu_source": GPU_SOURCE if gpu_images_per_sec == GPU_IMAGES_PER_SEC else "given (--gpu_images_per_sec)",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    rows = []
    for name in codec_names():
        codec = get_codec(name)
        found = contenders(codec)
        if isinstance(found, str):
            print(f"skipped {name}: {found}")
            rows.append(cost_row(base, codec, "", "", None, "", None, None, settings, skipped=found))
            continue
        for contender, runs, measure in found:
            for level in cost_levels(codec, level_count):
                for size in SIZES:
                    milliseconds, rates = measure(views[size], level, settings.threads, settings)
                    rows.append(cost_row(base, codec, contender, runs, level, size, milliseconds, rates, settings))
    append_rows(rows, out, results_stem(versions))
    print(cost_markdown(rows))
    return rows


def cost_row(base: dict, codec: Codec, contender: str, runs: str, level: int | None, size: str,
             milliseconds: list[float] | None, rates: list[float] | None, settings: CostSettings,
             skipped: str = "") -> dict:
    """One CSV row: a codec's cost at one level and size, or why it was skipped."""
    row = {**base, "codec": codec.name, "contender": contender, "runs": runs, "level_name": codec.level_name,
           "level": "" if level is None else level, "size": size, "ms_per_image": "", "ms_min": "", "ms_max": "",
           "images_per_sec": "", "gpu_step_fraction": "", "threads_to_keep_up": "", "skipped": skipped}
    if milliseconds and rates:
        rate = statistics.median(rates)
        row.update(ms_per_image=round(statistics.median(milliseconds), 3), ms_min=round(min(milliseconds), 3),
                   ms_max=round(max(milliseconds), 3), images_per_sec=round(rate, 1),
                   gpu_step_fraction=round(settings.gpu_images_per_sec / rate, 3),
                   threads_to_keep_up=math.ceil(settings.gpu_images_per_sec * settings.threads / rate))
    return row


def cost_markdown(rows: list[dict]) -> str:
    """The rows as one table line per (codec, contender, level), 224x224 beside native, and the notes."""
    first = rows[0]
    threads = first["threads"]
    lines = [f"`codecloop bench --mode codecs`: {first['device']} ({first['cores']} logical cores), {threads} threads, "
             f"DALI {first['dali']}, Pillow {first['pillow']} (libjpeg-turbo {first['libjpeg_turbo'] or '-'}, libwebp "
             f"{first['libwebp'] or '-'}, libavif {first['libavif'] or '-'}), PyAV {first['av']} (libavcodec "
             f"{first['libavcodec']}); {first['photos']} photos, native {first['native_size']}; median of "
             f"{first['repeats']} repeats", "",
             f"| codec | contender | level | ms/image 224 (1 thread) | ms/image native | images/s 224 ({threads} "
             f"threads) | images/s native | GPU step share 224 | threads to keep up 224 | GPU step share native |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    measured = [row for row in rows if not row["skipped"]]
    for key in dict.fromkeys((row["codec"], row["contender"], row["level"]) for row in measured):
        by_size = {row["size"]: row for row in measured if (row["codec"], row["contender"], row["level"]) == key}
        small, large = by_size["224x224"], by_size["native"]
        lines.append(f"| {key[0]} | {key[1]} | {small['level_name']} {key[2]} | {small['ms_per_image']:.2f} | "
                     f"{large['ms_per_image']:.2f} | {small['images_per_sec']:.0f} | {large['images_per_sec']:.0f} | "
                     f"{small['gpu_step_fraction']:.2f} | {small['threads_to_keep_up']} | "
                     f"{large['gpu_step_fraction']:.2f} |")
    notes = ["", f"GPU step: {first['gpu_images_per_sec']:g} images/s ({first['gpu_source']}). A share above 1 means "
             f"the GPU would wait on that codec with {threads} threads: it needs more cores (threads to keep up, "
             "from the measured per-thread rate) or a ladder (encoded ahead). The pipeline applies a codec at the "
             "native size, before the resize; 224x224 is the cheaper 'after resize' option. On a GPU the JPEG "
             "stage runs as a CUDA kernel, not on these threads; pillow-libjpeg is a reference, not a stage."]
    notes += [f"skipped {row['codec']}: {row['skipped']}" for row in rows if row["skipped"]]
    return "\n".join(lines + notes)
