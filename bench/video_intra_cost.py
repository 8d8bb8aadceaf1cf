"""What one intra frame costs per image with each ladder codec: encode + decode on one thread.

Decides which of HEVC and AV1 also runs online on single images, as H.264 intra does (a host codec):
the rule is a cost within about 3x of H.264's. Real photos (scikit-image's astronaut and coffee), at
500x375 (a typical ImageNet / VOC photo) and 224x224, each codec at three CRFs of its own scale.

    python bench/video_intra_cost.py --out bench/results/video_intra_cost.md
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image
from skimage import data as skdata

from codecloop.dali_pipes.fidelity import cpu_model
from codecloop.dali_pipes.video_codecs import ENCODERS, intra_decode, intra_encode

CRFS = {"h264": (18, 28, 40), "hevc": (18, 28, 40), "av1": (27, 40, 55)}
SIZES = ((500, 375), (224, 224))
RULE = ("\nRule: a codec whose intra frame costs within about 3x of H.264's runs online on single images (a host "
        "codec). AV1 (SVT-AV1) does, at 0.6-2.1x; HEVC (libx265) costs 9-18x, most of it x265's per-encoder set-up, "
        "so HEVC stays on ladders.\n")


def photos(width: int, height: int) -> list[np.ndarray]:
    """The two packaged photos resized to `width` x `height`."""
    return [np.asarray(Image.fromarray(load()).resize((width, height), Image.BICUBIC))
            for load in (skdata.astronaut, skdata.coffee)]


def cost_ms(name: str, images: list[np.ndarray], crf: int, repeats: int) -> tuple[float, float]:
    """Median ms per image of encode + decode, and mean bits per pixel."""
    encoder = ENCODERS[name]
    intra_decode(encoder, intra_encode(encoder, images[0], crf), *images[0].shape[:2])  # warm up
    times, bits = [], []
    for _ in range(repeats):
        for image in images:
            start = time.perf_counter()
            data = intra_encode(encoder, image, crf)
            intra_decode(encoder, data, *image.shape[:2])
            times.append(time.perf_counter() - start)
            bits.append(8 * len(data) / (image.shape[0] * image.shape[1]))
    return 1000 * float(np.median(times)), float(np.mean(bits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = ["| codec | size | CRF | ms / image | bits per pixel | x H.264 (same size, middle CRF) |",
            "| --- | --- | --- | --- | --- | --- |"]
    for width, height in SIZES:
        images = photos(width, height)
        base = cost_ms("h264", images, CRFS["h264"][1], args.repeats)[0]
        for name, crfs in CRFS.items():
            for crf in crfs:
                ms, bpp = cost_ms(name, images, crf, args.repeats)
                rows.append(f"| {ENCODERS[name].title} | {width}x{height} | {crf} | {ms:.1f} | {bpp:.3f} | "
                            f"{ms / base:.1f} |")
    text = (f"# Intra-frame cost per image, one thread\n\n{cpu_model()}, Python {platform.python_version()}, "
            f"PyAV {av.__version__} (libx264, libx265, SVT-AV1 {'preset 10'}, dav1d as bundled), preset veryfast. "
            f"Encode + decode of one keyframe, median over {args.repeats} x 2 photos.\n\n" + "\n".join(rows) + "\n"
            + RULE)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
