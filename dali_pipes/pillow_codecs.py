"""Image codecs through the encoders inside Pillow's wheels: WebP and AVIF in the loop, and JPEG's bitstream.

WebP and AVIF run on the host (the feeder's CPU threads), as H.264 intra does: there is no DALI operator
for them. Pillow's quality scale is 0..100 for both, higher better. JPEG runs in the DALI graph, which
keeps no bitstream, so its bits per pixel come from libjpeg here (`jpeg_encode`). A Pillow built without one of them is reported
with the install hint before any work (`missing`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, features


def pillow_encode(image: np.ndarray, quality: int, format: str, **options) -> bytes:
    """The bitstream of an RGB uint8 HxWx3 image encoded by Pillow's `format` encoder at `quality`."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buffer, format, quality=int(quality), **options)
    return buffer.getvalue()


def pillow_decode(data: bytes) -> np.ndarray:
    """An encoded image back to RGB uint8 HxWx3."""
    with Image.open(io.BytesIO(data)) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg_encode(image: np.ndarray, quality: int) -> bytes:
    """A baseline JPEG through libjpeg (Pillow) at `quality`, 4:2:0 as the in-graph stage: the file size the
    graph stage (which has no entropy coder) stands for."""
    return pillow_encode(image, quality, "JPEG", subsampling="4:2:0")


def webp_encode(image: np.ndarray, quality: int) -> bytes:
    """Lossy WebP (libwebp, 4:2:0) at `quality`."""
    return pillow_encode(image, quality, "WEBP")


def avif_encode(image: np.ndarray, quality: int) -> bytes:
    """AVIF (libavif) at `quality`, on the calling thread alone: callers already run many images at once, and
    libavif's default (a thread per core for every encode) oversubscribes their pool."""
    return pillow_encode(image, quality, "AVIF", max_threads=1)


def webp_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """`webp_encode`, decoded back."""
    return pillow_decode(webp_encode(image, quality))


def avif_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """`avif_encode`, decoded back."""
    return pillow_decode(avif_encode(image, quality))


def missing(feature: str) -> str | None:
    """Why Pillow cannot encode `feature` (``webp``, ``avif``) here, with the install hint; None when it can."""
    if features.check(feature):
        return None
    return (f"the installed Pillow {Image.__version__} has no {feature.upper()} encoder: pip install -U 'pillow>=11.3' "
            f"(its wheels carry libwebp and libavif)")
