"""The ladder's video encoders (libx264, libx265, SVT-AV1 through PyAV) and HEVC / AV1 intra frames.

One `VideoEncoder` per ladder codec says which PyAV encoder and decoder it uses, its CRF range, how its rung
files are named, and its encoder options for a CRF. Every rung is written the way NVDEC wants it: ``yuv420p``
8-bit, closed GOPs, a keyframe at least every `keyint` frames, no scene-cut keyframes:

| codec | encoder   | CRF  | GOP options                                                    | clean rung (CRF 0)   |
| ----- | --------- | ---- | -------------------------------------------------------------- | -------------------- |
| h264  | libx264   | 0-51 | ``keyint``, ``min-keyint=1``, ``scenecut=0``, ``open-gop=0``   | constant QP 1 (High) |
| hevc  | libx265   | 0-51 | the same, as x265-params                                       | constant QP 1 (Main) |
| av1   | libsvtav1 | 0-63 | ``keyint``, ``irefresh-type=2`` (closed GOP), ``scd=0``        | constant QP 1 (Main) |

The clean rung is constant QP 1 for all three rather than each encoder's lossless mode: lossless H.264 needs
the High 4:4:4 Predictive profile, which NVDEC cannot decode, and QP 1 keeps all three on their plain Main /
High profile tools (x265's ``lossless=1`` and SVT-AV1's lossless coding tools are left out for the same
reason); it is near-lossless: 48.6 dB (AV1) to 52 dB (H.264, HEVC) against the packaged carphone clip.
SVT-AV1 takes x264's preset names mapped to its numeric presets (`SVT_PRESETS`). H.264 rungs keep their old
names (``crf23.mp4``) so ladders built before other codecs existed still load; the others carry the codec's
name (``hevc-crf23.mp4``). Decoded frames are re-typed before encoding (no source picture type is forced on
the encoder: a source B type crashes libx265).

HEVC and AV1 intra (`hevc_intra_encode`, `av1_intra_encode`) encode one image as one keyframe: they are here
for rate measurements and the cost comparison in ``bench/results/video_intra_cost.md``; see `codecs.py` for
which of them runs as an online host codec.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from codecloop.dali_pipes.crf import DEFAULT_LADDER

SWSCALE_THREADS = 1  # as `ladder.SWSCALE_THREADS` (ladder imports this module): one converter thread per caller
INSTALL_HINT = "pip install -U av (PyPI's PyAV wheels carry libx264, libx265, SVT-AV1 and dav1d)"
SVT_PRESETS = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 6, "slow": 4,
               "slower": 3, "veryslow": 2, "placebo": 1}
CLEAN_QP = 1
AV1_LADDER: tuple[int, ...] = (0, 20, 27, 35, 40, 45, 50, 55, 59, 63)


def _x26x_options(family: str, crf: int, keyint: int, threads: int, preset: str) -> dict[str, str]:
    rate = f"qp={CLEAN_QP}" if crf == 0 else f"crf={crf}"
    gop = f"keyint={keyint}:min-keyint=1:scenecut=0:open-gop=0"
    if family == "x264":
        return {"preset": preset, "x264-params": f"{rate}:{gop}:threads={threads}"}
    single = ":pools=1:frame-threads=1:wpp=0" if threads == 1 else ""
    return {"preset": preset, "x265-params": f"{rate}:{gop}:log-level=error{single}"}


def _svt_options(crf: int, keyint: int, threads: int, preset: str) -> dict[str, str]:
    if preset not in SVT_PRESETS:
        raise ValueError(f"preset {preset!r} has no SVT-AV1 equivalent; use one of {', '.join(SVT_PRESETS)}")
    rate = f"rc=0:qp={CLEAN_QP}" if crf == 0 else f"crf={crf}"
    single = ":lp=1" if threads == 1 else ""
    return {"preset": str(SVT_PRESETS[preset]), "svtav1-params": f"{rate}:keyint={keyint}:irefresh-type=2:scd=0"
            f"{single}"}


@dataclass(frozen=True)
class VideoEncoder:
    """A ladder codec's encoder: PyAV names, CRF range, rung file names and options (see the module table)."""

    name: str
    title: str
    encoder: str
    decoder: str
    max_crf: int
    prefix: str
    default_ladder: tuple[int, ...]
    options: Callable[[int, int, int, str], dict[str, str]]

    def stem(self, crf: int) -> str:
        """A rung file's name without suffix: ``crf23`` (H.264), ``hevc-crf23``, ``av1-crf23``."""
        return f"{self.prefix}crf{crf:02d}"

    def check_crfs(self, crfs: Sequence[int]) -> list[int]:
        """Sorted unique CRFs on this codec's scale; a ValueError names the codec, the CRF and the range."""
        if not crfs:
            raise ValueError(f"no CRF given for {self.title}")
        for crf in crfs:
            if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= self.max_crf:
                raise ValueError(f"{self.title} CRF {crf!r} is outside 0..{self.max_crf} ({self.title}'s CRF range)")
        return sorted({int(crf) for crf in crfs})

    def missing(self) -> str | None:
        """Why this PyAV cannot encode or decode this codec, with the install hint; None when it can."""
        import av
        lacking = [name for name in (self.encoder, self.decoder) if name not in av.codecs_available]
        if not lacking:
            return None
        return f"PyAV {av.__version__} here has no {' or '.join(lacking)} (needed for {self.title}): {INSTALL_HINT}"

    def codec_options(self, crf: int, keyint: int, threads: int, preset: str) -> dict[str, str]:
        """The encoder options of a rung at `crf` (`threads` 0: the encoder's own choice)."""
        if self.encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise
        return self.options(crf, keyint, threads, preset)


ENCODERS: dict[str, VideoEncoder] = {encoder.name: encoder for encoder in (
    VideoEncoder("h264", "H.264", "libx264", "h264", 51, "", DEFAULT_LADDER,
                 lambda crf, keyint, threads, preset: _x26x_options("x264", crf, keyint, threads, preset)),
    VideoEncoder("hevc", "HEVC", "libx265", "hevc", 51, "hevc-", DEFAULT_LADDER,
                 lambda crf, keyint, threads, preset: _x26x_options("x265", crf, keyint, threads, preset)),
    VideoEncoder("av1", "AV1", "libsvtav1", "libdav1d", 63, "av1-", AV1_LADDER, _svt_options),
)}


def video_encoder(name: str) -> VideoEncoder:
    """The ladder encoder of codec `name`; a ValueError lists the ladder codecs."""
    if name not in ENCODERS:
        raise ValueError(f"codec {name!r} has no ladder encoder; ladder codecs: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def parse_codecs(text: str | Sequence[str]) -> list[str]:
    """``h264,hevc,av1`` (or a list) as ladder codec names in the given order, duplicates dropped."""
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    if not names:
        raise ValueError("no codec given")
    for name in names:
        video_encoder(name)
    return list(dict.fromkeys(names))


def parse_crfs(text: str) -> list[int]:
    """``0,23,40`` as integers; each codec checks them on its own scale (`VideoEncoder.check_crfs`)."""
    tokens = [token.strip() for token in str(text).split(",") if token.strip()]
    bad = [token for token in tokens if not token.isdigit()]
    if bad or not tokens:
        raise ValueError(f"CRF list {text!r}: {bad[0]!r} is not an integer CRF" if bad
                         else f"CRF list {text!r} is empty")
    return [int(token) for token in tokens]


def intra_encode(encoder: VideoEncoder, image: np.ndarray, crf: int, preset: str = "veryfast") -> bytes:
    """One RGB uint8 HxWx3 image as one keyframe of `encoder` at `crf` (4:2:0, one thread): the bitstream.

    Odd sizes are edge-padded to even ones (4:2:0); `intra_decode` crops them back.
    """
    import av
    encoder.check_crfs([crf])
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    padded = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    context = av.CodecContext.create(encoder.encoder, "w")
    context.width, context.height, context.pix_fmt = padded.shape[1], padded.shape[0], "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = encoder.codec_options(crf, 1, 1, preset)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24")
    frame = frame.reformat(format="yuv420p", threads=SWSCALE_THREADS)
    return b"".join(bytes(packet) for packet in context.encode(frame) + context.encode(None))


def intra_decode(encoder: VideoEncoder, data: bytes, height: int, width: int) -> np.ndarray:
    """The one frame of `data` (from `intra_encode`) as RGB uint8, cropped to `height` x `width`."""
    import av
    context = av.CodecContext.create(encoder.decoder, "r")
    frames = list(context.decode(av.Packet(data))) + list(context.decode(None))
    if not frames:
        raise ValueError(f"{encoder.title} bitstream of {len(data)} bytes decodes to no frame")
    rgb = frames[0].to_ndarray(format="rgb24", threads=SWSCALE_THREADS)
    return np.ascontiguousarray(rgb[:height, :width])


def hevc_intra_encode(image: np.ndarray, level: int) -> bytes:
    """`image` as one HEVC keyframe (libx265, veryfast, one thread) at CRF `level`: the bitstream."""
    return intra_encode(ENCODERS["hevc"], image, level)


def av1_intra_encode(image: np.ndarray, level: int) -> bytes:
    """`image` as one AV1 keyframe (SVT-AV1 preset 10, one thread) at CRF `level`: the bitstream."""
    return intra_encode(ENCODERS["av1"], image, level)


def av1_intra_roundtrip(image: np.ndarray, level: int) -> np.ndarray:
    """`av1_intra_encode` decoded back (dav1d): the image the network sees."""
    return intra_decode(ENCODERS["av1"], av1_intra_encode(image, level), *np.shape(image)[:2])
