"""DALI building blocks: JPEG quality and H.264 CRF specs, codec stages, image and video pipelines."""

from codecloop.dali_pipes.codec import jpeg_codec, jpeg_roundtrip, jpeg_stage, sample_quality
from codecloop.dali_pipes.crf import CLEAN_CRF, CrfSpec, parse_crf_levels, parse_crf_spec
from codecloop.dali_pipes.iterator import ImageBatches, default_num_threads
from codecloop.dali_pipes.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageGeometry, image_pipeline
from codecloop.dali_pipes.quality import CLEAN_QUALITY, QualitySpec, parse_levels, parse_quality_spec
from codecloop.dali_pipes.runtime import PipelineRuntime

__all__ = [
    "CLEAN_CRF",
    "CLEAN_QUALITY",
    "CrfSpec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBatches",
    "ImageGeometry",
    "PipelineRuntime",
    "QualitySpec",
    "default_num_threads",
    "image_pipeline",
    "jpeg_codec",
    "jpeg_roundtrip",
    "jpeg_stage",
    "parse_crf_levels",
    "parse_crf_spec",
    "parse_levels",
    "parse_quality_spec",
    "sample_quality",
]
