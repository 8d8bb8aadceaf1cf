"""CPU reference codec: a real libjpeg encode and decode through Pillow.

The in-loop codec stage (`fn.jpeg_compression_distortion`) is checked against this: baseline JPEG,
4:2:0 chroma subsampling, IJG quality scaling, the settings a camera or a web server uses.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from codecloop.dali_pipes.codec import JPEG_QUALITY

__all__ = [
    "JPEG_SAVE_OPTIONS",
    "check_quality",
    "encode_jpeg",
    "mean_abs_diff",
    "psnr",
    "reference_jpeg_roundtrip",
]

JPEG_SAVE_OPTIONS: dict[str, object] = {"subsampling": 2, "optimize": False, "progressive": False}
"""Pillow JPEG save options shared by every real encode: 4:2:0, baseline, standard tables."""


def check_quality(quality: int) -> int:
    """Return `quality` as an int, or raise ValueError naming it when it is outside 1..100."""
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise ValueError(
            f"JPEG quality must be an integer in {JPEG_QUALITY.low}..{JPEG_QUALITY.high}, got {quality!r}"
        )
    if not JPEG_QUALITY.low <= quality <= JPEG_QUALITY.high:
        raise ValueError(f"JPEG quality must be in {JPEG_QUALITY.low}..{JPEG_QUALITY.high}, got {quality}")
    return int(quality)


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 HxWx3 image, got dtype {image.dtype} shape {image.shape}"
        )
    return image


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """Encode an RGB uint8 HxWx3 image as a baseline 4:2:0 JPEG at IJG `quality`."""
    quality = check_quality(quality)
    buffer = io.BytesIO()
    Image.fromarray(_check_image(image)).save(buffer, "JPEG", quality=quality, **JPEG_SAVE_OPTIONS)
    return buffer.getvalue()


def reference_jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode then decode `image` with libjpeg; returns the decoded RGB uint8 HxWx3 array."""
    with Image.open(io.BytesIO(encode_jpeg(image, quality))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with peak 255; `inf` when the images are identical."""
    _same_shape(reference, test)
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference over all pixels and channels, in 0..255 units."""
    _same_shape(a, b)
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))
