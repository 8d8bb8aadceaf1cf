"""NVDEC's RGB (DALI 2.4) against PyAV's rgb24 on the real CRF ladder: the evidence behind the bounds of
tests/test_gpu_video.py, measured on a CPU by emulating DALI's YUV -> RGB kernel (`nvdec_rgb`).

Both sides decode the same YUV (H.264 decoding is exact) and differ only in the colour conversion. On the
ladder the GPU tests build (carphone and bikes, default CRFs): (a) PSNR over the frames the NVDEC test reads,
per rung; (b) mean absolute difference of the normalized 112x112 eval views the H.264-image test compares
(PyAV side from ImageBatches on the CPU). Two other plausible conversions and three bugs the tests must
catch show where the bounds sit. Rerun when DALI changes its kernel, after updating `nvdec_rgb`.

    python bench/nvdec_colour.py --out bench/results/nvdec_colour.md
"""

from __future__ import annotations

import argparse
import ast
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
import nvidia.dali
from nvidia.dali import fn, pipeline_def

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes import ImageGeometry
from codecloop.dali_pipes.codecs import H264
from codecloop.dali_pipes.fidelity import cpu_model
from codecloop.dali_pipes.images import ImageBatches, image_view
from codecloop.dali_pipes.ladder import SWSCALE_THREADS, Ladder, load_ladder, transcode
from codecloop.dali_pipes.pipelines import normalize
from codecloop.dali_pipes.reference import psnr
from codecloop.demo.packaged_data import packaged_clip
from codecloop.trainers.report import write_text

F32 = np.float32
INV_255, LUMA_SCALE = np.uint32(0x3B808081).view(F32), np.uint32(0x3F950A85).view(F32)  # 1/255, 255/219
# (Cr->R, Cb->G, Cr->G, Cb->B), limited range; BT.601 bit for bit as in DALI 2.4's binary
BT601 = tuple(np.uint32(bits).view(F32) for bits in (0x3FCC4A9B, 0x3EC89511, 0x3F501EA6, 0x40011A55))
BT709 = tuple(F32(value) for value in (1.792741, 0.213249, 0.532909, 2.112402))
DALI = "DALI 2.4 (emulated)"
CONVERSIONS = {DALI: {}, "nearest chroma": {"chroma": "nearest"}, "BT.709 matrix": {"matrix": BT709}}
BUGS = ("one frame off", "R/B swapped", "black frame")
STAND_INS = (*CONVERSIONS, *BUGS)
CLIPS = ("carphone", "bikes")
VIEW_FRAMES, VIEW_CRF, VIEW_GEOMETRY = (0, 9, 30), 40, ImageGeometry(crop_size=112, resize_size=128)
TEST_FILE = Path(__file__).resolve().parents[1] / "tests" / "test_gpu_video.py"


def gpu_test_bounds() -> dict[str, float]:
    """NVDEC_MIN_PSNR and VIEWS_MAX_MEAN_DIFFERENCE as tests/test_gpu_video.py sets them (read from the
    file: tests/ is not importable from a bench script)."""
    names = ("NVDEC_MIN_PSNR", "VIEWS_MAX_MEAN_DIFFERENCE")
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(TEST_FILE.read_text()).body
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in names}


def upsampled(plane: np.ndarray, chroma: str) -> np.ndarray:
    """A 4:2:0 chroma plane at luma size in float32: "bilinear" (centre-sited, weights 3/4 and 1/4, border
    clamp) or "nearest" (each sample repeated)."""
    if chroma == "nearest":
        return np.repeat(np.repeat(plane.astype(F32), 2, 0), 2, 1)

    def taps(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.arange(2 * n, dtype=F32) / F32(2) - F32(0.25)
        first = np.floor(position).astype(np.int64)
        return np.clip(first, 0, n - 1), np.clip(first + 1, 0, n - 1), (position - first).astype(F32)

    (top, bottom, dy), (left, right, dx) = taps(plane.shape[0]), taps(plane.shape[1])
    c = plane.astype(F32)
    upper = c[top][:, left] * (F32(1) - dx) + c[top][:, right] * dx
    lower = c[bottom][:, left] * (F32(1) - dx) + c[bottom][:, right] * dx
    return upper + (lower - upper) * dy[:, None]


def nvdec_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, chroma: str = "bilinear",
              matrix: tuple = BT601) -> np.ndarray:
    """RGB uint8 from yuv420p planes as DALI 2.4's NVDEC path makes it (the defaults).

    From VideoColorSpaceConversionKernel in dali/operators/video/color_space.cu (commit db024f9), its
    constants checked against the sm_90 code of the shipped 2.4.0 libdali_operators.so: luma as is; chroma
    bilinear, centre-sited, kept in float; BT.601 limited range unless the stream is flagged full range (its
    matrix is never read), on 0..1 input with offsets 0.0625 (Y) and 0.5 (Cb, Cr); x255, rounded half to
    even, clamped to 0..255.
    """
    cb, cr = (upsampled(plane, chroma) * INV_255 - F32(0.5) for plane in (u, v))
    luma = (y.astype(F32) * INV_255 - F32(0.0625)) * LUMA_SCALE
    cr_r, cb_g, cr_g, cb_b = matrix
    rgb = np.stack([luma + cr_r * cr, luma - cb_g * cb - cr_g * cr, luma + cb_b * cb], -1) * F32(255)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decoded(path: Path, indices: list[int]) -> tuple[dict[int, np.ndarray], dict[int, list[np.ndarray]]]:
    """PyAV rgb24 and the (Y, U, V) planes of frames `indices`, each by frame index."""
    rgb, planes, wanted = {}, {}, set(indices)
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position in wanted:
                rgb[position] = frame.to_ndarray(format="rgb24", threads=SWSCALE_THREADS)
                planes[position] = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width].copy()
                                    for p in frame.planes]
            if position >= max(wanted):
                return rgb, planes
    raise ValueError(f"{path}: frame {max(wanted)} could not be decoded")


def stand_ins(planes: dict[int, list[np.ndarray]], frames: list[int], neighbours: list[int]) -> dict[str, list]:
    """NVDEC's frames as each conversion would make them, then as each bug would."""
    sides = {name: [nvdec_rgb(*planes[f], **options) for f in frames] for name, options in CONVERSIONS.items()}
    return {**sides, "one frame off": [nvdec_rgb(*planes[n]) for n in neighbours],
            "R/B swapped": [image[..., ::-1] for image in sides[DALI]],
            "black frame": [np.zeros_like(image) for image in sides[DALI]]}


def rung_psnrs(ladder: Ladder) -> dict[tuple[str, int], dict[str, float]]:
    """(a): PSNR against PyAV over frames 0, 7, n // 2, n - 1 of every rung, as the NVDEC test reads them."""
    rows = {}
    for clip in sorted(ladder.rungs):
        for crf in ladder.crfs():
            rung = ladder.rung(clip, crf)
            frames = [0, 7, rung.frames // 2, rung.frames - 1]
            neighbours = [f + 1 if f + 1 < rung.frames else f - 1 for f in frames]
            rgb, planes = decoded(ladder.path(clip, crf), frames + neighbours)
            pyav = np.stack([rgb[f] for f in frames])
            rows[clip, crf] = {name: psnr(pyav, np.stack(side))
                               for name, side in stand_ins(planes, frames, neighbours).items()}
    return rows


@pipeline_def(batch_size=len(CLIPS) * len(VIEW_FRAMES), num_threads=2, device_id=None, exec_async=False,
              exec_pipelined=False)
def eval_views():
    """The eval view of ImageBatches: shorter side 128 (antialiased), centre crop 112, normalized."""
    images = fn.external_source(name="images", layout="HWC")
    return normalize(image_view(images, None, None, VIEW_GEOMETRY), VIEW_GEOMETRY, center_crop=True)


def view_differences(ladder: Ladder, crf: int, pipe) -> dict[str, float]:
    """(b) at `crf`: mean |view(PyAV) - view(stand-in)| per stand-in; under "PyAV rgb24", this script's view
    of PyAV's frames against ImageBatches' (0 when the two view pipelines agree)."""
    samples = [(clip, frame) for clip in sorted(ladder.rungs) for frame in VIEW_FRAMES]
    batches = ImageBatches(samples, runtime=PipelineRuntime(batch_size=len(samples), device_id=None, num_threads=2),
                           ladder=ladder, training=False, spec=H264.parse_spec(str(crf)), codec=H264,
                           geometry=VIEW_GEOMETRY,)
    project = {i: image.numpy() for batch in batches for i, image in zip(batch["index"].tolist(), batch["image"])}
    pyav, sides = np.stack([project[i] for i in range(len(samples))]), {}
    for clip in sorted(ladder.rungs):
        rgb, planes = decoded(ladder.path(clip, crf), [*VIEW_FRAMES, *(f + 1 for f in VIEW_FRAMES)])
        for name, images in stand_ins(planes, list(VIEW_FRAMES), [f + 1 for f in VIEW_FRAMES]).items():
            sides.setdefault(name, []).extend(images)
        sides.setdefault("PyAV rgb24", []).extend(rgb[f] for f in VIEW_FRAMES)

    def views(images: list[np.ndarray]) -> np.ndarray:
        pipe.feed_input("images", [np.ascontiguousarray(image) for image in images])
        return np.stack([np.array(view) for view in pipe.run()[0]])

    return {name: float(np.abs(pyav - views(images)).mean()) for name, images in sides.items()}


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    return [f"| {' | '.join(header)} |", "|" + " --- |" * len(header), *(f"| {' | '.join(row)} |" for row in rows)]


def report(psnrs: dict[tuple[str, int], dict[str, float]], views: dict[int, dict[str, float]]) -> list[str]:
    """The summary table, the bounds of tests/test_gpu_video.py against it, then (a) and (b) in full."""
    bounds = gpu_test_bounds()
    min_psnr, max_difference = bounds["NVDEC_MIN_PSNR"], bounds["VIEWS_MAX_MEAN_DIFFERENCE"]
    # worst case: the lowest PSNR / largest difference for a conversion, the highest / smallest for a bug
    rung = {name: (min if name in CONVERSIONS else max)(psnrs, key=lambda r: psnrs[r][name]) for name in STAND_INS}
    view_crf = {name: (max if name in CONVERSIONS else min)(views, key=lambda c: views[c][name]) for name in STAND_INS}
    worst = {name: psnrs[rung[name]][name] for name in STAND_INS}
    failing = {name: sum(row[name] <= min_psnr for row in psnrs.values()) for name in STAND_INS}
    tested = views[VIEW_CRF]
    bug, view_bug = max(BUGS, key=worst.get), min(BUGS, key=tested.get)
    summary = [[name, "conversion" if name in CONVERSIONS else "bug", f"{worst[name]:.2f} ({rung[name][0]} CRF "
                f"{rung[name][1]})", f"{failing[name]}/{len(psnrs)}", f"{tested[name]:.4f}",
                f"{views[view_crf[name]][name]:.4f} (CRF {view_crf[name]})"] for name in STAND_INS]
    return [
        f"(a) PSNR in dB against PyAV over frames 0, 7, n/2, n-1 of each rung; (b) mean absolute difference of the "
        f"normalized 112x112 eval views of frames {', '.join(map(str, VIEW_FRAMES))} of both clips. Worst case: the "
        "lowest PSNR / largest difference for a conversion, the highest / smallest for a bug.", "",
        *table(["NVDEC stand-in", "kind", "(a) worst rung, dB", f"(a) rungs at or below {min_psnr:g} dB",
                f"(b) CRF {VIEW_CRF}", "(b) worst CRF"], summary), "",
        f"Bounds in tests/test_gpu_video.py: NVDEC_MIN_PSNR = {min_psnr:g} dB is {worst[DALI] - min_psnr:.2f} dB "
        f"below the DALI 2.4 kernel's worst rung and {min(worst[n] for n in CONVERSIONS) - min_psnr:.2f} dB below "
        f"the worst conversion's; the closest bug, {bug}, reaches {worst[bug]:.2f} dB but fails the bound on "
        f"{failing[bug]} of {len(psnrs)} rungs, and one is enough to fail the test. VIEWS_MAX_MEAN_DIFFERENCE = "
        f"{max_difference:g} is {max_difference / tested[DALI] - 1:.0%} above DALI 2.4 at CRF {VIEW_CRF} (the "
        f"test's rung), {max_difference / views[view_crf[DALI]][DALI] - 1:.0%} above it at its worst CRF and "
        f"{max_difference / max(views[view_crf[n]][n] for n in CONVERSIONS) - 1:.0%} above the worst conversion at any "
        f"CRF; the closest bug at CRF {VIEW_CRF}, {view_bug}, is {tested[view_bug] / max_difference:.1f}x the bound.",
        "", "## (a) PSNR against PyAV per rung, dB", "",
        *table(["clip", "CRF", *STAND_INS], [[clip, str(crf), *(f"{value:.2f}" for value in row.values())]
                                             for (clip, crf), row in psnrs.items()]), "",
        "## (b) Mean absolute difference of the normalized views per CRF", "",
        *table(["CRF", *STAND_INS], [[str(crf), *(f"{value:.4f}" for value in row.values())]
                                     for crf, row in views.items()]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        src, dst = Path(folder) / "clips", Path(folder) / "ladder"
        src.mkdir()
        for clip in CLIPS:
            shutil.copy(packaged_clip(clip), src / f"{clip}.mp4")
        transcode(src, dst, progress=False)
        ladder = load_ladder(dst)
        pipe = eval_views()
        pipe.build()
        psnrs, views = rung_psnrs(ladder), {crf: view_differences(ladder, crf, pipe) for crf in ladder.crfs()}
    view_check = max(differences.pop("PyAV rgb24") for differences in views.values())
    lines = [
        "# NVDEC (DALI 2.4) colour conversion against PyAV rgb24, emulated on the CPU", "",
        f"{cpu_model()}, DALI {nvidia.dali.__version__}, PyAV {av.__version__} (libswscale "
        f"{'.'.join(map(str, av.library_versions['libswscale']))}), numpy {np.__version__}; carphone and bikes at "
        f"CRFs {', '.join(map(str, ladder.crfs()))}; this script's view of PyAV's frames is ImageBatches' CPU "
        f"view to a mean difference of {view_check:.1g}", "",
        *report(psnrs, views),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
