"""`codecloop bench`: samples/s of codec-in-the-loop input pipelines and training, against the peers.

| mode    | times                                              | contenders                                         |
| ------- | -------------------------------------------------- | -------------------------------------------------- |
| `data`  | the input pipeline alone, batches on the device    | ``codecloop`` (DALI, codec stage), ``dali-bare``   |
|         |                                                    | (no codec stage: the ceiling), ``torch-dataloader``|
|         |                                                    | (PIL + ``transforms.v2.JPEG``), ``torchvision-     |
|         |                                                    | nvjpeg`` (batched GPU decode / encode / crop; CUDA |
|         |                                                    | only; its encoder is 4:4:4)                        |
| `model` | a training step on device-resident random tensors  | the model                                          |
| `train` | pipeline feeding the training step, end to end     | ``codecloop`` and ``codecloop-clean``              |
| `sweep` | evaluation pipelines of a 9-level JPEG sweep        | ``one-pass`` (decode once, 9 codec stages) and     |
|         | (image-levels/s)                                   | ``pass-per-level`` (10 full passes)                |
| `feeder`| planning alone: whole epochs of ``--samples`` N    | ``sample-plan`` (order, draws, crop boxes, JPEG    |
|         | samples, no file read or decode (one CPU core)     | qualities per batch)                               |

Every contender does the same work per image: decode, JPEG at a per-sample quality, random-resized
crop, flip, normalize. With ``--codec h264`` the data, model and train modes time clips instead
(`bench.video`: a CRF rung drawn per clip, a torchvision video model). Each contender is
warmed up, then timed `repeats` times over `iterations` batches with device synchronisation; the
median and spread are reported. An epoch holds at least 20 batches (the images repeated if need be),
and a device out-of-memory (torch's or DALI's) halves the batch and starts again. Rows are appended to
``OUT/bench-<device>-<precision>-torch<v>-dali<v>-cuda<v>.csv`` and ``.json``.
"""

from __future__ import annotations

import csv
import gc
import itertools
import json
import math
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import nvidia.dali
import timm
import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes import (IMAGENET_MEAN, IMAGENET_STD, ImageBatches, ImageGeometry, SweepBatches,
                                  default_num_threads)
from codecloop.dali_pipes.codecs import JPEG, get_codec
from codecloop.dali_pipes.fidelity import cpu_model, write_photo_jpegs
from codecloop.dali_pipes.sample_plan import CHOICE, CLEAN, SamplePlan, crop_boxes
from codecloop.tasks.classification import list_image_folder

MODES = ("data", "model", "train", "sweep", "feeder")
CODECS = ("jpeg", "h264")  # JPEG images against the JPEG peers; H.264 clips from a ladder
DEFAULT_LEVELS = {"jpeg": "5-95", "h264": "18-51"}
DEFAULT_MODELS = {"jpeg": "resnet50", "h264": "r3d_18"}
DEFAULT_CROPS = {"jpeg": 224, "h264": 112}
SWEEP_LEVELS = (5, 10, 15, 20, 30, 50, 75, 90, 95)
DATA_CONTENDERS = ("codecloop", "dali-bare", "torch-dataloader", "torchvision-nvjpeg")
MIN_EPOCH_BATCHES = 20  # an epoch shorter than this resets the pipelines so often that they never prefetch


def device_name() -> str:
    """The GPU's name, or the CPU model."""
    return torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_model()


def results_stem(precision: str) -> str:
    """File stem naming the device, precision and versions that produced the numbers."""
    device = re.sub(r"[^A-Za-z0-9]+", "-", device_name()).strip("-").lower()
    return (f"bench-{device}-{precision}-torch{torch.__version__.split('+')[0]}-dali{nvidia.dali.__version__}"
            f"-cuda{torch.version.cuda or 'none'}")


def timed(batches: Iterator[int], iterations: int, warmup: int, repeats: int, device: torch.device) -> list[float]:
    """Samples/s of `repeats` runs of `iterations` batches (each yields its batch size), after `warmup`."""
    for _ in itertools.islice(batches, warmup):
        pass
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        images = sum(itertools.islice(batches, iterations))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(images / (time.perf_counter() - started))
    return rates


def forever(*epochs) -> Iterator:
    """Batches of each iterable in turn, again and again (each pass over one is an epoch)."""
    while True:
        for batches in epochs:
            yield from batches


class PilJpegDataset(torch.utils.data.Dataset):
    """The DataLoader peer: PIL decode, ``v2.JPEG`` at a random quality per sample, crop, flip, normalize."""

    def __init__(self, files: list[str], quality: tuple[int, int] | None, crop: int) -> None:
        codec = [v2.JPEG(quality=quality)] if quality else []
        self.files = files
        self.transform = v2.Compose([v2.PILToTensor(), *codec, v2.RandomResizedCrop(crop, antialias=True),
                                     v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB"))


def random_resized_boxes(heights: torch.Tensor, widths: torch.Tensor, generator: torch.Generator,
                         scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                         tries: int = 10) -> torch.Tensor:
    """Random-resized-crop boxes ``(B, 4)`` x0, y0, x1, y1 (pixels) for images of these sizes, drawn
    for the whole batch at once by torchvision's law: `tries` (area, log-aspect) draws per image, the
    first that fits, else the whole image center-cropped to the aspect range."""
    count = len(heights)
    heights, widths = heights.double()[:, None], widths.double()[:, None]
    area = heights * widths * torch.empty(count, tries, dtype=torch.float64).uniform_(*scale, generator=generator)
    aspect = torch.empty(count, tries, dtype=torch.float64).uniform_(
        math.log(ratio[0]), math.log(ratio[1]), generator=generator).exp()
    crop_w, crop_h = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
    fits = (crop_w > 0) & (crop_w <= widths) & (crop_h > 0) & (crop_h <= heights)
    first = fits.double().argmax(dim=1, keepdim=True)
    crop_w, crop_h = crop_w.gather(1, first)[:, 0], crop_h.gather(1, first)[:, 0]
    heights, widths = heights[:, 0], widths[:, 0]
    fallback_w = torch.where(widths / heights < ratio[0], widths, torch.where(
        widths / heights > ratio[1], (heights * ratio[1]).round(), widths))
    fallback_h = torch.where(widths / heights < ratio[0], (widths / ratio[0]).round(), heights)
    found = fits.any(dim=1)
    crop_w, crop_h = torch.where(found, crop_w, fallback_w), torch.where(found, crop_h, fallback_h)
    left = torch.where(found, (torch.rand(count, generator=generator, dtype=torch.float64) * (widths - crop_w + 1))
                       .floor(), ((widths - crop_w) / 2).round())
    top = torch.where(found, (torch.rand(count, generator=generator, dtype=torch.float64) * (heights - crop_h + 1))
                      .floor(), ((heights - crop_h) / 2).round())
    return torch.stack([left, top, left + crop_w, top + crop_h], dim=1).float()


def resized_crops(images: list[torch.Tensor], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """The boxes of uint8 CHW images resized to `size` square, as one float batch ``(B, C, size, size)``
    in 0..255: one `roi_align` over the batch (padded to its largest image), which averages an
    adaptive grid of bilinear samples per output pixel (an antialiased downscale)."""
    from torchvision.ops import roi_align

    if len({tuple(image.shape) for image in images}) == 1:
        batch = torch.stack(images).float()
    else:
        height, width = max(image.shape[1] for image in images), max(image.shape[2] for image in images)
        batch = images[0].new_zeros((len(images), images[0].shape[0], height, width), dtype=torch.float32)
        for position, image in enumerate(images):
            batch[position, :, :image.shape[1], :image.shape[2]] = image
    rois = torch.cat([torch.arange(len(images), dtype=torch.float32)[:, None], boxes], dim=1).to(batch.device)
    return roi_align(batch, rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def nvjpeg_batches(files: list[str], quality: tuple[int, int] | None, crop: int, batch_size: int,
                   device: torch.device, seed: int = 0) -> Iterator[torch.Tensor]:
    """The GPU peer, written as well as torchvision allows: batched nvJPEG decode; a quality drawn per
    image and one batched nvJPEG encode per distinct quality (``encode_jpeg`` takes one quality per
    call); the encoded bytes back to the host in one copy (``decode_jpeg`` reads host bytes only);
    batched decode; one batched random-resized crop (`resized_crops`), flip and normalize on the GPU.
    Its CUDA encoder writes 4:4:4 chroma where DALI's stage (and libjpeg's default) is 4:2:0."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg, read_file

    encoded = [read_file(path) for path in files]
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor(IMAGENET_MEAN, device=device)[:, None, None] * 255
    std = torch.tensor(IMAGENET_STD, device=device)[:, None, None] * 255
    while True:
        for start in range(0, len(encoded), batch_size):
            images = decode_jpeg(encoded[start:start + batch_size], mode=ImageReadMode.RGB, device=device)
            if quality:
                levels = torch.randint(quality[0], quality[1] + 1, (len(images),), generator=generator)
                again: list[torch.Tensor] = [torch.empty(0)] * len(images)
                for level in levels.unique().tolist():
                    members = (levels == level).nonzero().flatten().tolist()
                    for position, data in zip(members, encode_jpeg([images[i] for i in members], quality=level)):
                        again[position] = data
                if device.type == "cuda":
                    again = list(torch.cat(again).cpu().split([len(data) for data in again]))
                images = decode_jpeg(again, mode=ImageReadMode.RGB, device=device)
            sizes = torch.tensor([image.shape[1:] for image in images])
            views = resized_crops(images, random_resized_boxes(sizes[:, 0], sizes[:, 1], generator), crop)
            flip = (torch.rand(len(images), generator=generator) < 0.5).to(device)[:, None, None, None]
            yield (torch.where(flip, views.flip(-1), views) - mean) / std


def data_contender(name: str, files: list[str], spec: str, crop: int, batch_size: int, workers: int,
                   threads: int, device: torch.device) -> Iterator[int] | str:
    """Batch sizes of one contender's batches on `device`, forever; or why it is skipped."""
    parsed = JPEG.parse_spec(spec)
    quality = (min(parsed.levels), max(parsed.levels)) if parsed.levels else None
    device_id = (device.index or 0) if device.type == "cuda" else None
    if name in ("codecloop", "dali-bare"):
        batches = ImageBatches(files, runtime=PipelineRuntime(batch_size=batch_size, device_id=device_id,
                               num_threads=threads), training=True,
                               spec=JPEG.parse_spec(spec if name == "codecloop" else "none"), codec=JPEG,
                               geometry=ImageGeometry(crop_size=crop),)
        return (len(batch["image"]) for batch in forever(batches))
    if name == "torch-dataloader":
        loader = torch.utils.data.DataLoader(PilJpegDataset(files, quality, crop), batch_size=batch_size,
                                             shuffle=True, num_workers=workers, persistent_workers=workers > 0,
                                             pin_memory=device.type == "cuda")
        return (len(batch.to(device, non_blocking=True)) for batch in forever(loader))
    if name == "torchvision-nvjpeg":
        if device.type != "cuda":
            return "needs CUDA (torch.cuda.is_available() is False)"
        return (len(batch) for batch in nvjpeg_batches(files, quality, crop, batch_size, device))
    raise ValueError(f"unknown contender {name!r}; data contenders: {', '.join(DATA_CONTENDERS)}")


def train_step(model: torch.nn.Module, device: torch.device, bf16: bool,
               channels_last: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure running one AdamW step of `model` on a batch (image models channels-last)."""
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(inputs: torch.Tensor, labels: torch.Tensor) -> None:
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


@dataclass(frozen=True)
class BenchSettings:
    """What one `codecloop bench` call measures and how (see the CLI's ``bench --help``)."""

    mode: str
    codec: str
    levels: str
    crop: int
    frames: int
    batch_size: int
    workers: int
    threads: int
    device: torch.device
    bf16: bool
    model: str
    contenders: list[str] | None
    iterations: int
    warmup: int
    repeats: int

    @property
    def device_id(self) -> int | None:
        return (self.device.index or 0) if self.device.type == "cuda" else None

    def time(self, counts: Iterator[int], iterations: int | None = None) -> list[float]:
        """`timed` with these iteration counts."""
        return timed(counts, iterations or self.iterations, self.warmup, self.repeats, self.device)


def run_bench(mode: str, *, codec: str = "jpeg", data: Path | None, images: int, batch_size: int, crop: int | None,
              level: str | None = None, frames: int = 16, iterations: int, warmup: int, repeats: int,
              model: str | None, precision: str, workers: int | None, threads: int | None,
              contenders: list[str] | None, out: Path, samples: int = 1_000_000) -> list[dict]:
    """Run one mode, append its rows to the results files, print the table; returns the rows."""
    if mode not in MODES:
        raise ValueError(f"bench mode {mode!r} is not one of {', '.join(MODES)}")
    if codec not in CODECS:
        raise ValueError(f"bench codec {codec!r} is not one of {', '.join(CODECS)}")
    if codec == "h264" and mode == "sweep":
        raise ValueError("bench --mode sweep times JPEG sweeps (one pass against a pass per level); H.264 sweeps "
                         "read one ladder rung per level, so there is no second pass to save")
    if codec == "h264" and mode == "feeder":
        raise ValueError("bench --mode feeder plans JPEG qualities; leave out --codec h264 (the plan is the same "
                         "for every codec)")
    levels = level or DEFAULT_LEVELS[codec]
    crop = crop or DEFAULT_CROPS[codec]
    get_codec(codec).parse_spec(levels)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    threads = threads or default_num_threads()
    settings = BenchSettings(mode, codec, levels, crop, frames, batch_size, workers if workers is not None else threads,
                             threads, device, precision == "bf16" or (precision == "auto" and device.type == "cuda"),
                             model or DEFAULT_MODELS[codec], contenders, iterations, warmup, repeats)
    notes: list[str] = []
    if mode == "feeder":
        measured, sample_count = {"sample-plan": measure_plan(samples, settings.batch_size, levels, warmup,
                                                              repeats)}, samples
    else:
        measured, sample_count, settings = _measure_mode(settings, codec, data, images, notes)
    if not measured:
        raise ValueError("no contender could run: " + "; ".join(note for note in notes if note.startswith("skipped")))
    base = {"mode": mode, "codec": codec, "device": device_name(), "precision": "bf16" if settings.bf16 else "fp32",
            "torch": torch.__version__, "torchvision": torchvision.__version__, "dali": nvidia.dali.__version__,
            "cuda": torch.version.cuda or "none", "batch_size": settings.batch_size, "crop": crop,
            "frames": frames if codec == "h264" else "", "samples": sample_count,
            "levels": levels if mode != "sweep" else ",".join(map(str, SWEEP_LEVELS)),
            "model": settings.model if mode in ("model", "train") else "", "iterations": iterations,
            "repeats": repeats, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    reference = measured.get({"train": "codecloop-clean", "sweep": "pass-per-level"}.get(mode, "codecloop"))
    rows = []
    for name, rates in measured.items():
        median = statistics.median(rates)
        unit = "clips" if codec == "h264" else "samples" if mode == "feeder" else "images"
        rows.append({**base, "contender": name, "unit": unit,
                     "samples_per_sec": round(median, 2), "min": round(min(rates), 2), "max": round(max(rates), 2),
                     "ratio": round(median / statistics.median(reference), 3) if reference else ""})
    append_rows(rows, out, results_stem(base["precision"]))
    print(_markdown(rows, mode, notes))
    return rows


def _measure_mode(settings: BenchSettings, codec: str, data: Path | None, images: int,
                  notes: list[str]) -> tuple[dict[str, list[float]], int, BenchSettings]:
    """Rates of a data / model / train / sweep mode's contenders, the samples per epoch, and the settings they
    ran with (the batch halved after a device out-of-memory)."""
    epoch = max(images, MIN_EPOCH_BATCHES * settings.batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        if codec == "h264":
            from codecloop.bench.video import clip_list, load_bench_ladder, measure_video

            ladder = load_bench_ladder(data, Path(scratch))
            samples = clip_list(ladder, epoch)
            measure = partial(measure_video, ladder=ladder, clips=samples)
        else:
            files = list_image_folder(data / "train")[1] if data else write_photo_jpegs(Path(scratch), images)
            samples = files * -(-epoch // len(files))
            if len(samples) > len(files):
                notes.append(f"{len(files)} images repeated to {len(samples)} per epoch: at least "
                             f"{MIN_EPOCH_BATCHES} batches, so that the pipelines prefetch across batches")
            measure = partial(_measure_images, files=samples)
        while True:
            try:
                measured = measure(settings, notes=notes)
                break
            except RuntimeError as error:  # torch's OutOfMemoryError is one, and so is DALI's
                if not out_of_memory(error) or settings.batch_size == 1:
                    raise
                notes.append(f"out of memory at batch {settings.batch_size}: stepping down to "
                             f"{settings.batch_size // 2}")
                print(notes[-1])
                settings = replace(settings, batch_size=settings.batch_size // 2)
                gc.collect()  # the failed attempt's DALI pipelines release their device memory
                torch.cuda.empty_cache()
    return measured, len(samples), settings


def measure_plan(samples: int, batch_size: int, quality: str, warmup: int, repeats: int) -> list[float]:
    """Samples per second of planning alone, one epoch per run: a `SamplePlan` over `samples` samples (the
    epoch's order, every batch's draws), each batch's crop boxes (640x480 images) and JPEG qualities."""
    spec = JPEG.parse_spec(quality)
    plan = SamplePlan(samples, training=True, batch_size=batch_size)
    regions = np.tile(np.array([0.0, 0.0, 640.0, 480.0]), (batch_size, 1))
    rates = []
    for epoch in range(warmup + repeats):
        start = time.perf_counter()
        for batch in range(plan.batches_per_epoch()):
            planned = plan.batch(epoch, batch)
            crop_boxes(planned.draws, regions[:len(planned.samples)], 0.08)
            spec.picks(planned.draws[:, CLEAN], planned.draws[:, CHOICE])
        if epoch >= warmup:
            rates.append(samples / (time.perf_counter() - start))
    return rates


def out_of_memory(error: RuntimeError) -> bool:
    """Whether `error` is a device allocation failure: torch's ``OutOfMemoryError`` or DALI's
    ``CUDA allocation failed`` / ``out of memory`` (a plain RuntimeError from the pipeline)."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or any(
        text in str(error) for text in ("CUDA allocation failed", "out of memory"))


def skip(notes: list[str], name: str, reason: str) -> None:
    """Record and print that contender `name` did not run, and why."""
    notes.append(f"skipped {name}: {reason}")
    print(notes[-1])


def _measure_images(settings: BenchSettings, *, files: list[str], notes: list[str]) -> dict[str, list[float]]:
    measured: dict[str, list[float]] = {}
    if settings.mode == "data":
        for name in settings.contenders or DATA_CONTENDERS:
            batches = data_contender(name, files, settings.levels, settings.crop, settings.batch_size,
                                     settings.workers, settings.threads, settings.device)
            if isinstance(batches, str):
                skip(notes, name, batches)
                continue
            measured[name] = settings.time(batches)
            if name == "torchvision-nvjpeg":
                notes.append("torchvision-nvjpeg: nvJPEG's CUDA encoder writes 4:4:4 chroma, DALI's stage 4:2:0; "
                             "its crop is one roi_align over the padded batch")
        return measured
    batch_size, crop, threads, device_id = settings.batch_size, settings.crop, settings.threads, settings.device_id
    if settings.mode == "sweep":
        geometry = ImageGeometry(crop_size=crop, resize_size=crop * 8 // 7)
        one_pass = SweepBatches(files, runtime=PipelineRuntime(batch_size=batch_size, device_id=device_id,
                                num_threads=threads), levels=SWEEP_LEVELS, codec=JPEG, geometry=geometry,)
        per_level = [ImageBatches(files, runtime=PipelineRuntime(batch_size=batch_size, device_id=device_id,
                                  num_threads=threads), training=False, geometry=geometry,
                                  spec=JPEG.parse_spec(str(level) if level else "none"), codec=JPEG) for level in (None,
                                  *SWEEP_LEVELS)]
        levels = len(SWEEP_LEVELS) + 1
        measured["one-pass"] = settings.time(len(batch["index"]) * levels for batch in forever(one_pass))
        measured["pass-per-level"] = settings.time((len(batch["image"]) for batch in forever(*per_level)),
                                                   settings.iterations * levels)
        return measured
    step = train_step(timm.create_model(settings.model, pretrained=False, num_classes=1000), settings.device,
                      settings.bf16, channels_last=True)
    labels = torch.randint(0, 1000, (batch_size,), device=settings.device)
    if settings.mode == "model":
        images = torch.randn(batch_size, 3, crop, crop, device=settings.device)
        measured[settings.model] = settings.time(step(images, labels) or batch_size for _ in itertools.count())
        return measured
    for name, spec in (("codecloop", settings.levels), ("codecloop-clean", "none")):
        batches = ImageBatches(files, runtime=PipelineRuntime(batch_size=batch_size, device_id=device_id,
                               num_threads=threads), training=True, spec=JPEG.parse_spec(spec), codec=JPEG,
                               geometry=ImageGeometry(crop_size=crop),)
        measured[name] = settings.time(step(batch["image"], labels[:len(batch["image"])]) or len(batch["image"])
                                       for batch in forever(batches))
    return measured


def append_rows(rows: list[dict], out: Path, stem: str) -> None:
    """Append to ``stem.csv`` (header once) and to the list in ``stem.json`` (rewritten whole)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / f"{stem}.csv", out / f"{stem}.json"
    new_file = not csv_path.is_file()
    with csv_path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    previous = json.loads(json_path.read_text()) if json_path.is_file() else []
    temporary = json_path.with_name(f".{json_path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(previous + rows, indent=1))
    temporary.replace(json_path)


def _markdown(rows: list[dict], mode: str, notes: list[str]) -> str:
    first = rows[0]
    ratio = {"train": "codec / clean", "sweep": "vs pass per level"}.get(mode, "vs codecloop")
    shape = f"{first['crop']}x{first['crop']}"
    shape = f"{first['frames']}x{shape}" if first["frames"] else shape
    level_name = get_codec(first["codec"]).level_name
    lines = [f"`codecloop bench --mode {mode} --codec {first['codec']}`: {first['device']}, {first['precision']}, "
             f"batch {first['batch_size']}, {shape}, {level_name} {first['levels']}, torch {first['torch']}, DALI "
             f"{first['dali']}, CUDA {first['cuda']}", "",
             f"| contender | {first['unit']}/s (median) | min | max | {ratio} |", "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['contender']} | {row['samples_per_sec']:.1f} | {row['min']:.1f} | {row['max']:.1f} | "
              f"{row['ratio']} |" for row in rows]
    return "\n".join(lines + [""] + notes)
