"""WebP and AVIF for single images: an encode and decode through the encoders inside Pillow's wheels.

They run on the host (the feeder's CPU threads), as H.264 intra does: there is no DALI operator for them.
Pillow's quality scale is 0..100 for both, higher better. A Pillow built without one of them is reported
with the install hint before any work (`missing`).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, features


def pillow_roundtrip(image: np.ndarray, quality: int, format: str) -> np.ndarray:
    """Encode an RGB uint8 HxWx3 image with Pillow's `format` encoder at `quality` and decode it back."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buffer, format, quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def webp_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """`pillow_roundtrip` through libwebp (lossy, 4:2:0)."""
    return pillow_roundtrip(image, quality, "WEBP")


def avif_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """`pillow_roundtrip` through Pillow's AVIF encoder (libavif)."""
    return pillow_roundtrip(image, quality, "AVIF")


def missing(feature: str) -> str | None:
    """Why Pillow cannot encode `feature` (``webp``, ``avif``) here, with the install hint; None when it can."""
    if features.check(feature):
        return None
    return (f"the installed Pillow {Image.__version__} has no {feature.upper()} encoder: pip install -U 'pillow>=11.3' "
            f"(its wheels carry libwebp and libavif)")
