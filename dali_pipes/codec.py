"""The JPEG codec stage as pure functions of DALI nodes, and a helper to run it outside training.

The stage is DALI's `fn.jpeg_compression_distortion`: on the GPU a CUDA kernel running the
lossy JPEG stages (YCbCr, 4:2:0, 8x8 DCT, IJG quantization, IDCT), on the CPU a real encoder
round trip. It is applied at the image's native resolution, before any resize, as a camera or
an image server would; `jpeg_quality` travels with every sample (0 for a clean sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from codecloop.dali_pipes.quality import CLEAN_QUALITY, MAX_QUALITY, MIN_QUALITY, QualitySpec


def jpeg_stage(images, quality):
    """Compress and decompress each image of `images` (RGB uint8 HWC) at its `quality` (INT32)."""
    return fn.jpeg_compression_distortion(images, quality=quality)


def sample_quality(spec: QualitySpec):
    """Draw one quality per sample from `spec` (a scalar INT32 node; ``0`` where there is no codec)."""
    if spec.is_none:
        return fn.random.choice(np.array([CLEAN_QUALITY], dtype=np.int32))
    return fn.random.choice(spec.choices())


def jpeg_codec(images, spec: QualitySpec):
    """Apply the codec stage per `spec`; returns ``(images, jpeg_quality)``.

    With ``clean_prob`` > 0 a coin decides per sample whether the image passes through
    untouched (reported quality 0). Needs a pipeline built with ``enable_conditionals=True``.
    """
    quality = sample_quality(spec)
    if spec.is_none:
        return images, quality
    if spec.clean_prob <= 0.0:
        return jpeg_stage(images, quality), quality
    is_clean = fn.random.coin_flip(probability=spec.clean_prob, dtype=types.BOOL)
    if is_clean:
        output = images
    else:
        output = jpeg_stage(images, quality)
    return output, quality * (1 - fn.cast(is_clean, dtype=types.INT32))


@pipeline_def
def _roundtrip_pipeline(device: str):
    images = fn.external_source(name="images", layout="HWC", dtype=types.UINT8)
    quality = fn.external_source(name="quality", dtype=types.INT32)
    if device == "gpu":
        images = images.gpu()
    return jpeg_stage(images, quality)


def jpeg_roundtrip(
    images: Sequence[np.ndarray], quality: int | Sequence[int], device: str = "cpu"
) -> list[np.ndarray]:
    """Run the in-loop codec stage on HxWx3 uint8 arrays, outside training.

    `quality` is one int for all images or one per image. `device` is ``"cpu"`` (real encoder
    round trip) or ``"gpu"`` (the CUDA kernel training uses on a GPU).
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device {device!r} must be 'cpu' or 'gpu'")
    images = [np.ascontiguousarray(image, dtype=np.uint8) for image in images]
    if not images:
        return []
    for position, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image {position} has shape {image.shape}; expected HxWx3 uint8")
    qualities = [quality] * len(images) if isinstance(quality, (int, np.integer)) else list(quality)
    if len(qualities) != len(images):
        raise ValueError(f"{len(qualities)} qualities given for {len(images)} images")
    for value in qualities:
        if not MIN_QUALITY <= int(value) <= MAX_QUALITY:
            raise ValueError(f"JPEG quality {value} is outside {MIN_QUALITY}..{MAX_QUALITY}")
    pipe = _roundtrip_pipeline(
        device=device,
        batch_size=len(images),
        num_threads=1,
        device_id=0 if device == "gpu" else None,
        prefetch_queue_depth=1,
    )
    pipe.build()
    pipe.feed_input("images", images)
    pipe.feed_input("quality", [np.array(int(value), dtype=np.int32) for value in qualities])
    (output,) = pipe.run()
    if device == "gpu":
        output = output.as_cpu()
    return [np.array(output[index]) for index in range(len(images))]
