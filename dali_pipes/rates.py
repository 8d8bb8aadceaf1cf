"""Bits per pixel of a codec's levels on an evaluation set, from real encoders, cached beside the data.

Quality and CRF numbers do not compare across codecs; bits per pixel do. The in-graph JPEG stage keeps
no bitstream (DALI's GPU kernel has no entropy coder), so a level's rate is measured apart from the
pipeline: every image of the evaluation set (or an evenly spaced `DEFAULT_RATE_IMAGES` of them) is
decoded upright at its native resolution, as the codec stage sees it, and encoded whole by the codec's
own encoder (`Codec.encode`: libjpeg, libwebp and libavif through Pillow, x264 through PyAV). For clips
the ladder's rungs are the bitstreams: their manifest rows hold each rung's bits per pixel.

A level's rate is the mean of the per-image (per-clip) bits per pixel, with their standard deviation and
count. What each image cost at each level is cached by file stamp (size, mtime_ns) next to the data
(``<data root>/.codecloop/rates-<codec>-<hash>.json``, or the user cache folder when the data folder
cannot be written), so every later sweep of the same files reads it; a changed file is measured again,
and a cache written by other encoder versions is rebuilt, never silently reused.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.ladder import Ladder
from codecloop.dali_pipes.validate import StampedCache, cache_folder, scan_cache_dir

DEFAULT_RATE_IMAGES = 256


@dataclass(frozen=True)
class Rate:
    """One level's rate on a set: mean bits per pixel over its images (clips), their spread and count."""

    bpp: float
    bpp_std: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Rate:
        """The rate of per-item bits per pixel `values`."""
        values = np.asarray(values, np.float64)
        spread = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return cls(float(values.mean()), spread, len(values))


@dataclass(frozen=True)
class RateSource:
    """What a sweep's bits per pixel are measured on: whole image files below `data_root`, or `clips` of a
    `ladder` (its rungs' own sizes)."""

    images: tuple[str, ...] = ()
    data_root: str | None = None
    ladder: Ladder | None = None
    clips: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        """What one rate sample is: ``images`` or ``clips``."""
        return "clips" if self.ladder is not None else "images"


def rate_images(files: Sequence[str], limit: int | None = DEFAULT_RATE_IMAGES) -> list[str]:
    """The distinct files of `files` a rate is measured on: all of them, or `limit` evenly spaced in path order
    (the same files for every sweep of the same set)."""
    distinct = sorted(set(map(str, files)))
    if not limit or len(distinct) <= limit:
        return distinct
    return [distinct[i] for i in np.unique(np.linspace(0, len(distinct) - 1, limit).round().astype(int))]


def upright_rgb(path: str) -> np.ndarray:
    """A file as the codec stage sees it: decoded, turned upright by its EXIF orientation, RGB uint8 HxWx3."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def bits_per_pixel(codec: Codec, image: np.ndarray, level: int) -> float:
    """Bits per pixel of `image` (HxWx3 uint8) encoded by `codec` at `level`."""
    return 8.0 * len(codec.encode(image, level)) / (image.shape[0] * image.shape[1])


def encoder_versions() -> dict[str, str | None]:
    """Versions of the libraries whose encoders measure rates: a cache written by others is rebuilt."""
    versions = {}
    for package in ("pillow", "av"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


class RateCache(StampedCache):
    """Per-file pixel count and encoded bytes per level of one codec, by file stamp."""

    title = "rate"

    def __init__(self, root: str, folder: Path, codec: str) -> None:
        self.kind = f"rates-{codec}"
        super().__init__(root, folder, {"codec": codec, "encoders": encoder_versions()})

    def sizes(self, path: str, stamp) -> tuple[int, dict[str, int]] | None:
        """``(pixels, {level: bytes})`` cached for `path` at this stamp, or None."""
        entry = self.entry(path, stamp)
        return (int(entry[0]), dict(entry[1])) if entry and len(entry) == 2 else None


def _stamp(path: str) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns


def image_rates(files: Sequence[str], codec: Codec, levels: Sequence[int], *, data_root: str | Path | None = None,
                limit: int | None = DEFAULT_RATE_IMAGES, workers: int | None = None,
                progress: bool = False) -> dict[int, Rate]:
    """Each level's rate over `files` (or `limit` of them, `rate_images`) by `codec`'s encoder; cached (see the
    module docstring), so only what no earlier call measured is encoded, each image decoded once."""
    if codec.encode is None:
        raise ValueError(f"codec {codec.name!r} has no encoder for single images (Codec.encode): its bits per pixel "
                         f"cannot be measured")
    chosen = rate_images(files, limit)
    if not chosen:
        raise ValueError("no image to measure bits per pixel on")
    levels = [int(level) for level in levels]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in chosen])
    folder = cache_folder(data_root) if data_root is not None else scan_cache_dir()
    cache = RateCache(root, folder, codec.name)

    def measure(path: str) -> tuple[int, dict[str, int]]:
        stamp = _stamp(path)
        pixels, sizes = cache.sizes(path, stamp) or (0, {})
        wanted = [level for level in levels if str(level) not in sizes]
        if wanted:
            image = upright_rgb(path)
            pixels = image.shape[0] * image.shape[1]
            sizes = {**sizes, **{str(level): len(codec.encode(image, level)) for level in wanted}}
            cache.set_entry(path, stamp, [pixels, sizes])
        return pixels, sizes

    with cache.locked():
        with ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1)) as pool:
            measured = list(tqdm(pool.map(measure, chosen), total=len(chosen), disable=not progress,
                                 desc=f"{codec.title} bits per pixel ({len(levels)} levels)"))
    return {level: Rate.of([8.0 * sizes[str(level)] / pixels for pixels, sizes in measured]) for level in levels}


def ladder_rates(ladder: Ladder, clips: Sequence[str], codec: Codec, levels: Sequence[int]) -> dict[int, Rate]:
    """Each level's rate over the distinct `clips`: the mean of their rungs' bits per pixel (the manifest's)."""
    distinct = sorted(set(clips))
    if not distinct:
        raise ValueError(f"no clip of the ladder {ladder.root} to measure bits per pixel on")
    return {int(level): Rate.of([ladder.rung(clip, int(level), codec.name).bits_per_pixel for clip in distinct])
            for level in levels}


def measure_rates(source: RateSource, codec: Codec, levels: Sequence[int], *, limit: int | None = DEFAULT_RATE_IMAGES,
                  workers: int | None = None, progress: bool = False) -> dict[int, Rate]:
    """Each level's rate on `source` (see `image_rates`, `ladder_rates`)."""
    if source.ladder is not None:
        return ladder_rates(source.ladder, source.clips, codec, levels)
    return image_rates(source.images, codec, levels, data_root=source.data_root, limit=limit, workers=workers,
                       progress=progress)


def levels_at_rates(source: RateSource, codec: Codec, low: float, high: float, *,
                    limit: int | None = DEFAULT_RATE_IMAGES, workers: int | None = None) -> str:
    """The level spec of `codec` whose levels' mean bits per pixel on `source` lie in [`low`, `high`]: a range
    of the codec's scale (found by bisection, the rate being monotone in the level), or on a ladder the list of
    its rungs in range. No level in range is an error giving the rates the codec spans."""
    if source.ladder is not None:
        rungs = source.ladder.crfs(codec.name)
        rates = ladder_rates(source.ladder, source.clips, codec, rungs)
        inside = [level for level in rungs if low <= rates[level].bpp <= high]
        spans = [rates[level].bpp for level in rungs]
        if inside:
            return ",".join(map(str, inside))
    else:
        scale, memo = codec.scale, {}
        count = scale.high - scale.low + 1

        def level_at(step: int) -> int:  # step 0 is the most compressed level
            return scale.low + step if codec.higher_is_better else scale.high - step

        def rate_at(step: int) -> float:
            if step not in memo:
                level = level_at(step)
                memo[step] = image_rates(source.images, codec, [level], data_root=source.data_root, limit=limit,
                                         workers=workers)[level].bpp
            return memo[step]

        def first(predicate, lo: int, hi: int) -> int:  # smallest step in [lo, hi] where predicate holds
            while lo < hi:
                middle = (lo + hi) // 2
                lo, hi = (lo, middle) if predicate(middle) else (middle + 1, hi)
            return lo

        spans = [rate_at(0), rate_at(count - 1)]
        if spans[1] >= low and spans[0] <= high:
            start = first(lambda step: rate_at(step) >= low, 0, count - 1)
            stop = first(lambda step: rate_at(step) > high, 0, count - 1)
            stop = stop - 1 if rate_at(stop) > high else stop
            if start <= stop:
                levels = sorted((level_at(start), level_at(stop)))
                return str(levels[0]) if levels[0] == levels[1] else f"{levels[0]}-{levels[1]}"
    raise ValueError(f"no {codec.title} {codec.level_name} has a mean rate in {low:g}-{high:g} bits per pixel on "
                     f"these {source.unit} (its levels span {min(spans):.3g}-{max(spans):.3g})")
