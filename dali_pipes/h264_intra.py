"""H.264 for single images: one intra frame encoded by libx264 (PyAV) at a CRF and decoded back.

x264 has no GPU encoder, so this runs on CPU threads (the host codec path). Odd sizes are edge-padded
for 4:2:0 and cropped back; CRF 0 encodes at QP 1 (near-lossless), as the ladder's clean rung does.
The round trip decodes the very bytes `h264_intra_encode` returns, so a rate and a distortion measured
from them come from one encode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from codecloop.dali_pipes.video_codecs import ENCODERS, intra_decode, intra_encode


def h264_intra_encode(image: np.ndarray, level: int, preset: str = "veryfast") -> bytes:
    """An RGB uint8 HxWx3 image as one intra H.264 frame (4:2:0, one thread) at CRF `level`: the bitstream."""
    return intra_encode(ENCODERS["h264"], image, level, preset)


def h264_intra_roundtrip(image: np.ndarray, crf: int, preset: str = "veryfast") -> np.ndarray:
    """Encode an RGB uint8 HxWx3 image as one intra H.264 frame (4:2:0) at `crf` and decode it back."""
    return intra_decode(ENCODERS["h264"], h264_intra_encode(image, crf, preset), *np.shape(image)[:2])


def h264_roundtrip(images: Sequence[np.ndarray], crf: int | Sequence[int], preset: str = "veryfast") -> list[np.ndarray]:
    """The online H.264 stage outside training: each HxWx3 uint8 image at `crf` (one, or one per image)."""
    crfs = [crf] * len(images) if isinstance(crf, (int, np.integer)) else list(crf)
    if len(crfs) != len(images):
        raise ValueError(f"{len(crfs)} CRFs given for {len(images)} images")
    return [h264_intra_roundtrip(np.asarray(image, dtype=np.uint8), int(value), preset)
            for image, value in zip(images, crfs)]
