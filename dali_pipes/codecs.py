"""The codec registry: every codec codecloop can put in the loop, as one object each.

A `Codec` says what its level is called and its range, which direction of the level is better,
its default sweep levels and retraining spec, and how it runs:

| runs       | how                                                                      | images | clips |
| ---------- | ------------------------------------------------------------------------ | ------ | ----- |
| graph      | `graph_stage(images, level)`: DALI nodes, inside the pipeline (JPEG)     | yes    | no    |
| host       | `roundtrip(image, level)`: HxWx3 uint8 in and out, on CPU threads (H.264  | yes    | no    |
|            | intra, WebP, AVIF through Pillow)                                        |        |       |
| ladder     | clips encoded ahead at each level (`codecloop transcode`), a rung drawn  | frames | yes   |
|            | (H.264, HEVC, AV1)                                                       |        |       |

`encode(image, level)` returns the bitstream of one image, for its bits per pixel (`codecloop.dali_pipes.rates`);
a ladder's rungs are their own bitstreams. `missing` says why this machine cannot run the codec (an encoder its
libraries lack, with the install hint), checked before any work. `graph_tile` says the graph stage works on
tiles fixed to the image's origin (JPEG: 16x16 for 4:2:0), so that CPU training may compress only a tile-aligned
window around the crop. A codec may
run in several ways (H.264 runs on the host for images and as a ladder for clips). Every codec reports a
clean sample as `CLEAN_LEVEL`. Adding a codec is one module that builds a `Codec` and passes it to `register_codec`;
nothing on the train and sweep path names codecs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from codecloop.dali_pipes.codec import JPEG_QUALITY, jpeg_stage
from codecloop.dali_pipes.crf import CRF_SCALE, DEFAULT_CRF_LEVELS, LOSSLESS_CRF
from codecloop.dali_pipes.h264_intra import h264_intra_encode, h264_intra_roundtrip
from codecloop.dali_pipes.levels import LevelScale, LevelSpec
from codecloop.dali_pipes.pillow_codecs import (avif_encode, avif_roundtrip, jpeg_encode, missing as pillow_missing,
                                                webp_encode, webp_roundtrip)
from codecloop.dali_pipes.video_codecs import ENCODERS, av1_intra_encode, av1_intra_roundtrip

Roundtrip = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Codec:
    """One codec: its level scale, defaults, and how it runs (see the module's table)."""

    name: str
    title: str
    scale: LevelScale
    higher_is_better: bool
    default_levels: tuple[int, ...]
    retrain_spec: str
    graph_stage: Callable | None = None
    graph_tile: int | None = None
    roundtrip: Roundtrip | None = None
    ladder_clean_rung: int | None = None
    missing: Callable[[], str | None] | None = None
    encode: Callable[[np.ndarray, int], bytes] | None = None

    def __post_init__(self) -> None:
        if not (self.graph_stage or self.roundtrip or self.ladder_clean_rung is not None):
            raise ValueError(f"codec {self.name!r} runs nowhere: give a graph_stage, a roundtrip or a ladder rung")
        self.scale.parse_levels(list(self.default_levels))
        self.scale.parse_spec(self.retrain_spec)

    @property
    def level_name(self) -> str:
        """What a level of this codec is called (``quality``, ``CRF``)."""
        return self.scale.name

    @property
    def runs(self) -> tuple[str, ...]:
        """How this codec runs: some of ``graph``, ``host``, ``ladder``."""
        return tuple(name for name, present in (("graph", self.graph_stage is not None),
                                                 ("host", self.roundtrip is not None),
                                                 ("ladder", self.ladder_clean_rung is not None)) if present)

    @property
    def on_images(self) -> bool:
        """Whether the codec can compress single images online (in the graph or on the host)."""
        return self.graph_stage is not None or self.roundtrip is not None

    def serves(self, media: str, ladder: bool = False) -> bool:
        """Whether this codec can compress `media` (``images`` or ``clips``) in the loop; `ladder`: the images
        are frames of a ladder."""
        if media == "clips" or ladder:
            return self.ladder_clean_rung is not None
        return self.on_images

    @property
    def axis_label(self) -> str:
        """A plot axis for this codec's levels, saying which way is more compressed."""
        worse = "lower" if self.higher_is_better else "higher"
        return f"{self.title} {self.level_name} ({worse}: more compressed)"

    def parse_spec(self, spec: str | int | LevelSpec | None, clean_prob: float = 0.0) -> LevelSpec:
        """A training / evaluation spec of this codec's levels (see `codecloop.dali_pipes.levels`)."""
        return self.scale.parse_spec(spec, clean_prob)

    def parse_levels(self, text: str | Sequence) -> list[int]:
        """A sweep's level list on this codec's scale."""
        return self.scale.parse_levels(text)

    def worst_first(self, levels: Sequence[int]) -> list[int]:
        """`levels` from the most to the least compressed."""
        return sorted(levels, reverse=not self.higher_is_better)


_CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """File `codec` under its name; a name registered twice is an error naming both."""
    if codec.name in _CODECS:
        raise ValueError(f"codec {codec.name!r} is already registered ({_CODECS[codec.name].title})")
    _CODECS[codec.name] = codec
    return codec


def unregister_codec(name: str) -> None:
    """Remove a registered codec (a test's own codec, after the test)."""
    _CODECS.pop(name, None)


def get_codec(name: str) -> Codec:
    """The codec registered as `name`, or a ValueError listing the known ones."""
    if name not in _CODECS:
        raise ValueError(f"unknown codec {name!r}; known codecs: {', '.join(codec_names())}")
    return _CODECS[name]


def codec_names() -> list[str]:
    """Registered codec names, in registration order."""
    return list(_CODECS)


def codec_title(name: str) -> str:
    """A codec's display name (``H.264``); the name itself for a codec this process has not registered
    (a report rebuilt from another run's files)."""
    return _CODECS[name].title if name in _CODECS else name


def codec_scale(names: str | Sequence[str]) -> LevelScale:
    """One level scale spanning the codecs `names` (``h264,av1`` or a list): a single codec's own scale, or
    for a mix the union of their ranges (H.264 and AV1: CRF 0..63), for a histogram of mixed levels."""
    codecs = [get_codec(name.strip()) for name in (names.split(",") if isinstance(names, str) else names)]
    if len(codecs) == 1:
        return codecs[0].scale
    return LevelScale("/".join(codec.title for codec in codecs), "/".join(dict.fromkeys(c.level_name for c in codecs)),
                      min(codec.scale.low for codec in codecs), max(codec.scale.high for codec in codecs))


def codec_axis(name: str) -> str:
    """A plot axis for a codec's levels (see `Codec.axis_label`); ``<name> level`` when unregistered."""
    return _CODECS[name].axis_label if name in _CODECS else f"{name} level"


JPEG = register_codec(Codec(
    name="jpeg", title="JPEG", scale=JPEG_QUALITY, higher_is_better=True,
    default_levels=(5, 10, 15, 20, 30, 50, 75, 95), retrain_spec="5-95", graph_stage=jpeg_stage, graph_tile=16,
    encode=jpeg_encode,
))
H264 = register_codec(Codec(
    name="h264", title="H.264", scale=CRF_SCALE, higher_is_better=False, default_levels=DEFAULT_CRF_LEVELS,
    retrain_spec="18-51", roundtrip=h264_intra_roundtrip, ladder_clean_rung=LOSSLESS_CRF,
    encode=h264_intra_encode, missing=ENCODERS["h264"].missing,
))
# HEVC runs on ladders only: one libx265 intra frame costs 9-18x an x264 one per image (500x375 and 224x224,
# bench/results/video_intra_cost.md), too slow for the feeder's CPU threads. Its CRF-0 rung is constant QP 1.
HEVC = register_codec(Codec(
    name="hevc", title="HEVC", scale=LevelScale("HEVC", "CRF", 0, 51), higher_is_better=False,
    default_levels=DEFAULT_CRF_LEVELS, retrain_spec="18-51", ladder_clean_rung=0, missing=ENCODERS["hevc"].missing,
))
# AV1 (SVT-AV1, CRF 0..63) also runs on single images: an intra frame costs 0.6-2.1x an x264 one.
AV1 = register_codec(Codec(
    name="av1", title="AV1", scale=LevelScale("AV1", "CRF", 0, 63), higher_is_better=False,
    default_levels=(20, 27, 35, 40, 45, 50, 55, 59, 63), retrain_spec="20-63", roundtrip=av1_intra_roundtrip,
    encode=av1_intra_encode, ladder_clean_rung=0, missing=ENCODERS["av1"].missing,
))
WEBP = register_codec(Codec(
    name="webp", title="WebP", scale=LevelScale("WebP", "quality", 0, 100), higher_is_better=True,
    default_levels=(5, 10, 20, 30, 50, 75, 95), retrain_spec="5-95", roundtrip=webp_roundtrip,
    encode=webp_encode, missing=lambda: pillow_missing("webp"),
))
AVIF = register_codec(Codec(
    name="avif", title="AVIF", scale=LevelScale("AVIF", "quality", 0, 100), higher_is_better=True,
    default_levels=(5, 10, 20, 30, 50, 75, 95), retrain_spec="5-95", roundtrip=avif_roundtrip,
    encode=avif_encode, missing=lambda: pillow_missing("avif"),
))
