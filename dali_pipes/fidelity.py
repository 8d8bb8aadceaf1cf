"""Fidelity of the in-loop codec stage against a real libjpeg round trip, on real photographs.

The in-loop stage must behave like the JPEG a camera or server writes, or the sweep measures the
wrong thing. This module runs both on the colour photographs shipped inside scikit-image and
scikit-learn (no downloads) and tabulates PSNR against the original and the mean absolute
difference between the two outputs (DALI's own bound is < 5).

    python -m codecloop.dali_pipes.fidelity --device cpu --out bench/results/fidelity_cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import skimage.data
from PIL import features
from sklearn.datasets import load_sample_images

from codecloop.dali_pipes.codec import jpeg_roundtrip
from codecloop.dali_pipes.reference import mean_abs_diff, psnr, reference_jpeg_roundtrip

__all__ = ["DEFAULT_QUALITIES", "fidelity_table", "format_markdown", "main", "packaged_photos"]

DEFAULT_QUALITIES: tuple[int, ...] = (5, 10, 15, 25, 50, 75, 95)


def _even_crop(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[0] & ~1, image.shape[1] & ~1
    return np.ascontiguousarray(image[:height, :width, :3], dtype=np.uint8)


def packaged_photos() -> dict[str, np.ndarray]:
    """Real RGB photographs bundled in the scikit-image and scikit-learn wheels, cropped to even
    height and width (4:2:0 subsampling pairs rows and columns)."""
    photos = {
        "astronaut": skimage.data.astronaut(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "rocket": skimage.data.rocket(),
        "motorcycle_left": skimage.data.stereo_motorcycle()[0],
    }
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images):
        photos[Path(filename).stem] = image
    return {name: _even_crop(image) for name, image in photos.items()}


def write_photo_jpegs(folder: Path, count: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> list[str]:
    """`count` real JPEG files (quality 90) of random square crops of the packaged photos,
    resized to `size` (width, height): a benchmark's dataset without any download."""
    rng = np.random.default_rng(seed)
    photos = list(packaged_photos().values())
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(height, width) // 2, min(height, width)))
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        path = Path(folder) / f"{index:05d}.jpg"
        PIL.Image.fromarray(photo[top:top + side, left:left + side]).resize(size).save(path, quality=90)
        paths.append(str(path))
    return paths


def fidelity_table(
    photos: Mapping[str, np.ndarray],
    qualities: Sequence[int] = DEFAULT_QUALITIES,
    device: str = "cpu",
) -> list[dict]:
    """One row per quality: mean PSNR (dB) of the in-loop stage and of the reference codec against
    the originals, and the mean / worst-photo mean absolute difference between the two outputs."""
    if not photos:
        raise ValueError("fidelity_table needs at least one photo")
    names = list(photos)
    originals = [photos[name] for name in names]
    rows = []
    for quality in qualities:
        inloop = jpeg_roundtrip(originals, int(quality), device=device)
        reference = [reference_jpeg_roundtrip(image, int(quality)) for image in originals]
        mads = [mean_abs_diff(a, b) for a, b in zip(inloop, reference)]
        rows.append(
            {
                "quality": int(quality),
                "psnr_inloop": float(np.mean([psnr(o, x) for o, x in zip(originals, inloop)])),
                "psnr_reference": float(
                    np.mean([psnr(o, x) for o, x in zip(originals, reference)])
                ),
                "mad": float(np.mean(mads)),
                "max_mad": float(max(mads)),
                "worst_photo": names[int(np.argmax(mads))],
            }
        )
    return rows


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device: str) -> str:
    if device == "gpu":
        import torch

        return torch.cuda.get_device_name(0)
    return cpu_model()


def _environment() -> list[tuple[str, str]]:
    from nvidia.dali import __version__ as dali_version

    return [
        ("DALI", dali_version),
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("pillow", PIL.__version__),
        ("Pillow's libjpeg-turbo", features.version("libjpeg_turbo") or "not built in"),
        ("CPU", f"{cpu_model()} ({os.cpu_count()} logical cores)"),
    ]


def format_markdown(
    rows: Sequence[Mapping], device_name: str, photos: Mapping[str, np.ndarray] | None = None
) -> str:
    """Render `rows` as a markdown report headed by the device, versions and photos used."""
    lines = [
        "# JPEG in-loop stage vs reference codec",
        "",
        f"In-loop stage: DALI `fn.jpeg_compression_distortion` on **{device_name}**. "
        "Reference: Pillow/libjpeg baseline encode + decode, 4:2:0, IJG quality scaling.",
        "PSNR is against the original (mean over photos); MAD is the mean absolute difference "
        "between in-loop and reference outputs (0..255 units), mean and worst photo.",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in _environment()]
    if photos:
        listed = ", ".join(f"{name} {img.shape[1]}x{img.shape[0]}" for name, img in photos.items())
        lines.append(f"- photos: {listed}")
    lines += [
        "",
        "| quality | PSNR in-loop (dB) | PSNR reference (dB) | MAD | max MAD | worst photo |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        worst = row.get("worst_photo", "") if row["max_mad"] > 0 else "-"
        lines.append(
            f"| {row['quality']} | {row['psnr_inloop']:.2f} | {row['psnr_reference']:.2f} "
            f"| {row['mad']:.3f} | {row['max_mad']:.3f} | {worst} |"
        )
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _qualities(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(token) for token in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--qualities {text!r}: expected e.g. 5,10,50") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the fidelity table, print it and optionally write it to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m codecloop.dali_pipes.fidelity", description=__doc__)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--qualities", type=_qualities, default=DEFAULT_QUALITIES)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    photos = packaged_photos()
    rows = fidelity_table(photos, args.qualities, device=args.device)
    text = format_markdown(rows, _device_name(args.device), photos)
    sys.stdout.write(text)
    if args.out is not None:
        _write_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
