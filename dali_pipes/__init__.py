"""DALI building blocks: the codec registry and level specs, codec stages, image, dense and video pipelines."""

from codecloop.dali_pipes.codec import graph_codec, jpeg_roundtrip, jpeg_stage, sample_level
from codecloop.dali_pipes.codecs import Codec, codec_names, get_codec, register_codec, unregister_codec
from codecloop.dali_pipes.feeder import Batches, default_num_threads
from codecloop.dali_pipes.images import ImageBatches, SweepBatches
from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelScale, LevelSpec
from codecloop.dali_pipes.pipelines import IMAGENET_MEAN, IMAGENET_STD, ImageGeometry
from codecloop.dali_pipes.runtime import PipelineRuntime

__all__ = [
    "Batches",
    "CLEAN_LEVEL",
    "Codec",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageBatches",
    "ImageGeometry",
    "LevelScale",
    "LevelSpec",
    "PipelineRuntime",
    "SweepBatches",
    "codec_names",
    "default_num_threads",
    "get_codec",
    "graph_codec",
    "jpeg_roundtrip",
    "jpeg_stage",
    "register_codec",
    "sample_level",
    "unregister_codec",
]
