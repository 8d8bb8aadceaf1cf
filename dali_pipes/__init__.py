"""DALI building blocks: quality specs, the JPEG codec stage, image pipelines and their iterator."""

from dali_pipes.codec import jpeg_codec, jpeg_roundtrip, jpeg_stage, sample_quality
from dali_pipes.iterator import ImageBatches, default_num_threads
from dali_pipes.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageGeometry, image_pipeline
from dali_pipes.quality import CLEAN_QUALITY, QualitySpec, parse_levels, parse_quality_spec

__all__ = [
    "CLEAN_QUALITY",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBatches",
    "ImageGeometry",
    "QualitySpec",
    "default_num_threads",
    "image_pipeline",
    "jpeg_codec",
    "jpeg_roundtrip",
    "jpeg_stage",
    "parse_levels",
    "parse_quality_spec",
    "sample_quality",
]
