"""H.264 for single images: one intra frame encoded by libx264 (PyAV) at a CRF and decoded back.

x264 has no GPU encoder, so this runs on CPU threads (the host codec path). Odd sizes are edge-padded
for 4:2:0 and cropped back; CRF 0 encodes at QP 1 (near-lossless), as the ladder's clean rung does.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from codecloop.dali_pipes.crf import LOSSLESS_CRF, MAX_CRF, MIN_CRF
from codecloop.dali_pipes.ladder import SWSCALE_THREADS


def h264_intra_roundtrip(image: np.ndarray, crf: int, preset: str = "veryfast") -> np.ndarray:
    """Encode an RGB uint8 HxWx3 image as one intra H.264 frame (4:2:0) at `crf` and decode it back."""
    import av
    if not MIN_CRF <= crf <= MAX_CRF:
        raise ValueError(f"CRF {crf} is outside {MIN_CRF}..{MAX_CRF}")
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = padded.shape[1], padded.shape[0], "yuv420p"
    encoder.time_base = Fraction(1, 25)
    rate = "qp=1" if crf == LOSSLESS_CRF else f"crf={crf}"
    encoder.options = {"preset": preset, "x264-params": f"{rate}:keyint=1:threads=1"}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
    frame = frame.reformat(format="yuv420p", threads=SWSCALE_THREADS)
    packets = encoder.encode(frame) + encoder.encode(None)
    decoder = av.CodecContext.create("h264", "r")
    decoded = [out for packet in packets for out in decoder.decode(packet)] + decoder.decode(None)
    return np.ascontiguousarray(decoded[0].to_ndarray(format="rgb24", threads=SWSCALE_THREADS)[:height, :width])


def h264_roundtrip(images: Sequence[np.ndarray], crf: int | Sequence[int], preset: str = "veryfast") -> list[np.ndarray]:
    """The online H.264 stage outside training: each HxWx3 uint8 image at `crf` (one, or one per image)."""
    crfs = [crf] * len(images) if isinstance(crf, (int, np.integer)) else list(crf)
    if len(crfs) != len(images):
        raise ValueError(f"{len(crfs)} CRFs given for {len(images)} images")
    return [h264_intra_roundtrip(np.asarray(image, dtype=np.uint8), int(value), preset)
            for image, value in zip(images, crfs)]
