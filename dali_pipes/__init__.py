"""DALI building blocks: the codec registry and level specs, codec stages, image, dense and video pipelines."""

from codecloop.dali_pipes.codec import graph_codec, jpeg_roundtrip, jpeg_stage, sample_level
from codecloop.dali_pipes.codecs import Codec, codec_names, get_codec, register_codec, unregister_codec
from codecloop.dali_pipes.iterator import ImageBatches, default_num_threads
from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelScale, LevelSpec
from codecloop.dali_pipes.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageGeometry, image_pipeline
from codecloop.dali_pipes.runtime import PipelineRuntime

__all__ = [
    "CLEAN_LEVEL",
    "Codec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBatches",
    "ImageGeometry",
    "LevelScale",
    "LevelSpec",
    "PipelineRuntime",
    "codec_names",
    "default_num_threads",
    "get_codec",
    "graph_codec",
    "image_pipeline",
    "jpeg_roundtrip",
    "jpeg_stage",
    "register_codec",
    "sample_level",
    "unregister_codec",
]
