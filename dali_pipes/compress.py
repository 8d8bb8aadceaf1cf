"""Write a real JPEG copy of an image dataset at one quality (the `codecloop compress` verb).

The in-loop codec stage has no bitstream; this writes actual files, so a sweep level has a real
size on disk (bits per pixel) and a model can be trained or evaluated on exactly what a server
would store. Layout is preserved, every output is written to a hidden temporary name and renamed
when whole, and existing outputs are kept, so an interrupted run is simply run again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from codecloop.dali_pipes.reference import JPEG_SAVE_OPTIONS, check_quality
from codecloop.dali_pipes.validate import DATA_CACHE_FOLDER

__all__ = ["IMAGE_SUFFIXES", "CompressReport", "compress_dataset"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
"""Source suffixes treated as images (compared lower-cased)."""


@dataclass
class CompressReport:
    """What a `compress_dataset` run did.

    Pixel and byte totals cover every output the dataset now has, written by this run or found
    from an earlier one, so `bits_per_pixel` describes the compressed dataset as a whole.
    """

    src: Path
    dst: Path
    quality: int
    written: int = 0
    skipped_existing: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped_non_image: list[Path] = field(default_factory=list)
    total_pixels: int = 0
    total_bytes: int = 0

    @property
    def bits_per_pixel(self) -> float:
        """Compressed size per source pixel: ``8 * total_bytes / total_pixels`` (0 when empty)."""
        return 8.0 * self.total_bytes / self.total_pixels if self.total_pixels else 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (
            f"q{self.quality}: {self.written} written, {self.skipped_existing} already present, "
            f"{len(self.failed)} failed, {len(self.skipped_non_image)} non-image skipped; "
            f"{self.total_bytes} bytes for {self.total_pixels} pixels = "
            f"{self.bits_per_pixel:.3f} bpp"
        )


@dataclass(frozen=True)
class _Job:
    source: Path
    target: Path


def _temporary_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp-{os.getpid()}")


def _load(source: Path) -> tuple[Image.Image, dict]:
    """Fully decode `source` (so truncated files fail here) as RGB or greyscale; also returns the
    EXIF and ICC metadata to carry over, so orientation and colour stay as in the source."""
    with Image.open(source) as image:
        image.load()
        metadata = {key: image.info[key] for key in ("exif", "icc_profile") if image.info.get(key)}
        decoded = image.copy() if image.mode in ("RGB", "L") else image.convert("RGB")
    return decoded, metadata


def _save_jpeg(image: Image.Image, path: Path, quality: int, metadata: dict) -> None:
    """Encode `image` as a baseline 4:2:0 JPEG at `quality` into `path`."""
    image.save(path, "JPEG", quality=quality, **JPEG_SAVE_OPTIONS, **metadata)


def _existing(job: _Job) -> tuple[str, int, int, str]:
    try:
        with Image.open(job.target) as existing:
            width, height = existing.size
    except (OSError, ValueError) as error:
        return "failed", 0, 0, f"existing output {job.target} is unreadable: {error}"
    return "existing", width * height, job.target.stat().st_size, ""


def _write(job: _Job, quality: int, overwrite: bool) -> tuple[str, int, int, str]:
    """Process one file; returns ``(outcome, pixels, bytes, reason)``, zero counts on failure."""
    if not overwrite and job.target.exists():
        return _existing(job)
    try:
        image, metadata = _load(job.source)
    except Exception as error:  # a broken file can make any decoder plugin raise anything
        return "failed", 0, 0, f"{type(error).__name__}: {error}"
    job.target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(job.target)
    try:
        _save_jpeg(image, temporary, quality, metadata)
        os.replace(temporary, job.target)
    except Exception as error:
        raise OSError(f"could not write {job.target}: {error}") from error
    finally:
        temporary.unlink(missing_ok=True)
    width, height = image.size
    return "written", width * height, job.target.stat().st_size, ""


def _scan(src: Path, dst: Path, report: CompressReport) -> list[_Job]:
    """List image jobs under `src` in a stable order; record non-images and name clashes."""
    jobs: list[_Job] = []
    claimed: dict[Path, Path] = {}
    for folder, subfolders, files in os.walk(src):
        subfolders[:] = sorted(name for name in subfolders if name != DATA_CACHE_FOLDER)  # our scan cache
        for name in sorted(files):
            source = Path(folder) / name
            if source.suffix.lower() not in IMAGE_SUFFIXES:
                report.skipped_non_image.append(source)
                continue
            target = dst / source.relative_to(src).with_suffix(".jpg")
            if target in claimed:
                report.failed.append((source, f"{target} is already made from {claimed[target]}"))
                continue
            claimed[target] = source
            jobs.append(_Job(source, target))
    return jobs


def _run(
    jobs: list[_Job], quality: int, overwrite: bool, workers: int
) -> Iterator[tuple[_Job, tuple[str, int, int, str]]]:
    """Run jobs on a thread pool keeping a bounded number in flight; yields results as they end."""
    pending = iter(jobs)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        in_flight: dict[Future, _Job] = {}
        try:
            while True:
                while len(in_flight) < 4 * workers:
                    job = next(pending, None)
                    if job is None:
                        break
                    in_flight[pool.submit(_write, job, quality, overwrite)] = job
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    yield in_flight.pop(future), future.result()
        finally:
            for future in in_flight:
                future.cancel()


def compress_dataset(
    src: Path,
    dst: Path,
    quality: int,
    progress: bool = True,
    overwrite: bool = False,
    workers: int | None = None,
) -> CompressReport:
    """Write every image under `src` as a real JPEG at `quality` to the same relative path under
    `dst`, suffix ``.jpg``.

    Non-image files are skipped and listed; corrupt, truncated or unreadable images are skipped and
    listed with the decoder's error. Existing outputs are kept unless `overwrite`. A failure to
    write stops the run with the file named; nothing partial is ever left under a final name.
    """
    quality = check_quality(quality)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"source dataset {src} does not exist")
    if not src.is_dir():
        raise NotADirectoryError(f"source dataset {src} is not a directory")
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"destination {dst} lies inside source {src}; choose a folder outside it")
    report = CompressReport(src=src, dst=dst, quality=quality)
    jobs = _scan(src, dst, report)
    with tqdm(total=len(jobs), disable=not progress, unit="img", desc=f"jpeg q{quality}") as bar:
        for job, (outcome, pixels, size, reason) in _run(jobs, quality, overwrite, workers):
            if outcome == "failed":
                report.failed.append((job.source, reason))
            elif outcome == "written":
                report.written += 1
            else:
                report.skipped_existing += 1
            report.total_pixels += pixels
            report.total_bytes += size
            bar.update()
    report.failed.sort()
    return report
