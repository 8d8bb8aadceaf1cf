"""The in-graph codec stage as pure functions of DALI nodes, and the JPEG stage run outside training.

A codec that runs in the graph (JPEG: DALI's `fn.jpeg_compression_distortion`; on the GPU a CUDA
kernel running the lossy JPEG stages, on the CPU a real encoder round trip) is applied at the
image's native resolution, before any resize, as a camera or an image server would; the drawn
level travels with every sample (`CLEAN_LEVEL` for a clean one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from nvidia.dali import fn, pipeline_def, types

from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelScale, LevelSpec

JPEG_QUALITY = LevelScale("JPEG", "quality", 1, 100)


def jpeg_stage(images, quality):
    """Compress and decompress each image of `images` (RGB uint8 HWC) at its `quality` (INT32)."""
    return fn.jpeg_compression_distortion(images, quality=quality)


def sample_level(spec: LevelSpec):
    """Draw one level per sample from `spec` (a scalar INT32 node; `CLEAN_LEVEL` where there is no codec)."""
    if spec.is_none:
        return fn.random.choice(np.array([CLEAN_LEVEL], dtype=np.int32))
    return fn.random.choice(spec.choices())


def graph_codec(images, spec: LevelSpec, stage: Callable):
    """Apply an in-graph codec `stage` per `spec`; returns ``(images, codec_level)``.

    With ``clean_prob`` > 0 a coin decides per sample whether the image passes through
    untouched (reported `CLEAN_LEVEL`). Needs a pipeline built with ``enable_conditionals=True``.
    """
    level = sample_level(spec)
    if spec.is_none:
        return images, level
    if spec.clean_prob <= 0.0:
        return stage(images, level), level
    is_clean = fn.random.coin_flip(probability=spec.clean_prob, dtype=types.BOOL)
    if is_clean:
        output = images
    else:
        output = stage(images, level)
    clean = fn.cast(is_clean, dtype=types.INT32)
    return output, level * (1 - clean) + CLEAN_LEVEL * clean


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
    """Run the in-loop JPEG stage on HxWx3 uint8 arrays, outside training.

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
        JPEG_QUALITY.level(str(int(value)), str(value))
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
