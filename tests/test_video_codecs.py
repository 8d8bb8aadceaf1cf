"""HEVC and AV1 on the ladder: transcode on a real clip, what the rungs hold, training's (codec, CRF) draws."""

from __future__ import annotations

import csv
import json
import shutil

import av
import numpy as np
import pytest

from codecloop.dali_pipes import ImageBatches, ImageGeometry
from codecloop.dali_pipes.codecs import get_codec
from codecloop.dali_pipes.h264_intra import h264_intra_encode, h264_intra_roundtrip
from codecloop.dali_pipes.ladder import MANIFEST, MANIFEST_COLUMNS, SETTINGS, load_ladder, transcode
from codecloop.dali_pipes.levels import CLEAN_LEVEL
from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.video import ClipSampling, VideoBatches, VideoGeometry, decode_frames
from codecloop.dali_pipes.video_codecs import ENCODERS, av1_intra_encode, hevc_intra_encode, intra_decode
from codecloop.demo.packaged_data import packaged_clip
from codecloop.trainers.config import Config
from codecloop.trainers.logger import codec_metrics
from codecloop.trainers.protocol import make_task
from tests.videos import write_video

CRFS = {"h264": (0, 23, 40), "hevc": (0, 23, 40), "av1": (0, 30, 55)}
FRAMES = 40  # of the packaged carphone clip: keyframes at 0, 15, 30


def carphone_frames(count: int = FRAMES) -> list[np.ndarray]:
    with av.open(str(packaged_clip("carphone"))) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                return frames
    return frames


@pytest.fixture(scope="module")
def codec_ladder(tmp_path_factory):
    """The first 40 frames of the real carphone clip (lossless FFV1 copy), at three CRFs of each codec."""
    src = tmp_path_factory.mktemp("src")
    write_video(src / "carphone.mkv", carphone_frames(), codec="ffv1", pix_fmt="yuv420p")
    dst = tmp_path_factory.mktemp("ladder")
    for codec, crfs in CRFS.items():
        report = transcode(src, dst, crfs=crfs, codecs=codec, workers=1, progress=False)
        assert report.failed == {} and report.written == len(crfs)
    return dst


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(divide="ignore"):  # identical frames: infinite
        return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_every_codec_rate_and_quality_fall_as_crf_rises(codec_ladder):
    with (codec_ladder / MANIFEST).open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == MANIFEST_COLUMNS and len(rows) == 9
    for codec, crfs in CRFS.items():
        mine = sorted((row for row in rows if row["codec"] == codec), key=lambda row: int(row["crf"]))
        assert [int(row["crf"]) for row in mine] == list(crfs)
        bpp, quality = [float(row["bits_per_pixel"]) for row in mine], [float(row["psnr"]) for row in mine]
        assert bpp == sorted(bpp, reverse=True) and len(set(bpp)) == 3, (codec, bpp)
        assert quality == sorted(quality, reverse=True) and quality[-1] < quality[0] - 10, (codec, quality)
        assert quality[0] > 45, (codec, quality)  # the clean rung: QP 1, near-lossless
        assert mine[1]["path"] == f"carphone/{ENCODERS[codec].prefix}crf{crfs[1]}.mp4"
    ladder = load_ladder(codec_ladder)
    assert ladder.codecs() == ["h264", "hevc", "av1"] and ladder.crfs("av1") == [0, 30, 55]
    assert ladder.rung("carphone", 55, "av1").codec == "av1" and ladder.path("carphone", 23, "hevc").is_file()
    with pytest.raises(KeyError, match="no hevc rung at CRF 55"):
        ladder.rung("carphone", 55, "hevc")
    settings = json.loads((codec_ladder / SETTINGS).read_text())
    assert settings["codecs"] == {codec: list(crfs) for codec, crfs in CRFS.items()}
    assert "--codecs h264,hevc --crfs 0,23,40" in settings["command"] and "--codecs av1 --crfs 0,30,55" in settings[
        "command"]


@pytest.mark.parametrize(("codec", "name", "profile"), [("hevc", "hevc", "Main"), ("av1", "libdav1d", "Main")])
def test_rungs_are_what_nvdec_wants(codec_ladder, codec, name, profile):
    ladder = load_ladder(codec_ladder)
    for crf in CRFS[codec]:
        with av.open(str(ladder.path("carphone", crf, codec))) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.name, stream.codec_context.pix_fmt) == (name, "yuv420p")
            assert stream.codec_context.profile == profile
            frames = list(container.decode(stream))
        keys = [position for position, frame in enumerate(frames) if frame.key_frame]
        assert len(frames) == FRAMES and keys == [0, 15, 30], (codec, crf, keys)


@pytest.mark.parametrize("codec", ["hevc", "av1"])
def test_pyav_decodes_rungs_close_to_the_source_and_seeks_to_exact_frames(codec_ladder, codec):
    """The manifest's PSNR against an independent one (the source file's frames, decoded by PyAV); frames read by
    seeking (`decode_frames`) are the very frames of a decode from the start."""
    ladder = load_ladder(codec_ladder)
    with av.open(str(ladder.rung("carphone", 0, codec).source)) as container:
        source = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    for crf in CRFS[codec]:
        rung = ladder.rung("carphone", crf, codec)
        with av.open(str(codec_ladder / rung.path)) as container:
            decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        errors = [np.mean((a.astype(np.float64) - b) ** 2) for a, b in zip(decoded, source)]
        assert rung.psnr == pytest.approx(10 * np.log10(255.0**2 / np.mean(errors)), abs=0.01)
        assert min(psnr(a, b) for a, b in zip(decoded, source)) > (40 if crf == 0 else 22)
        picked = [37, 3, 16, 29, 15, 14]
        assert np.array_equal(decode_frames(codec_ladder / rung.path, picked, rung.fps),
                              np.stack([decoded[i] for i in picked]))


def test_old_manifest_without_codec_loads_as_h264_and_grows_other_codecs(codec_ladder, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(codec_ladder, old)
    with (old / MANIFEST).open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["codec"] == "h264"]
    columns = [column for column in MANIFEST_COLUMNS if column != "codec"]
    with (old / MANIFEST).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    settings = json.loads((old / SETTINGS).read_text())
    settings["crfs"] = settings.pop("codecs")["h264"]
    (old / SETTINGS).write_text(json.dumps(settings))
    ladder = load_ladder(old)
    assert ladder.codecs() == ["h264"] and ladder.rung("carphone", 23).codec == "h264"
    assert ladder.crfs() == [0, 23, 40] and ladder.crfs("hevc") == []
    for path in [*old.rglob("hevc-*.json"), *old.rglob("av1-*.json")]:  # the ladder from before: H.264 only
        path.unlink()
    report = transcode(settings["src"], old, crfs=(40,), codecs="hevc", workers=1, progress=False)
    assert report.written == 1
    assert json.loads((old / SETTINGS).read_text())["codecs"] == {"h264": [0, 23, 40], "hevc": [40]}
    assert load_ladder(old).codecs() == ["h264", "hevc"]


def test_a_crf_outside_a_codecs_range_names_the_codec_and_range(tmp_path):
    write_video(tmp_path / "src" / "clip.mp4", carphone_frames(4))
    with pytest.raises(ValueError, match=r"AV1 CRF 64 is outside 0\.\.63"):
        transcode(tmp_path / "src", tmp_path / "ladder", crfs=(30, 64), codecs="av1")
    with pytest.raises(ValueError, match=r"HEVC CRF 52 is outside 0\.\.51"):
        transcode(tmp_path / "src", tmp_path / "ladder", crfs=(52,), codecs="hevc")
    with pytest.raises(ValueError, match="codec 'vp9' has no ladder encoder; ladder codecs: h264, hevc, av1"):
        transcode(tmp_path / "src", tmp_path / "ladder", codecs="h264,vp9")
    assert not (tmp_path / "ladder").exists()
    with pytest.raises(ValueError, match=r"HEVC CRF spec '52': CRF 52 is outside 0\.\.51"):
        get_codec("hevc").parse_spec("52")
    assert get_codec("av1").parse_spec("20-63").levels[-1] == 63


def test_a_missing_encoder_is_reported_before_any_work(tmp_path, monkeypatch):
    write_video(tmp_path / "src" / "clip.mp4", carphone_frames(4))
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libsvtav1"})
    with pytest.raises(ValueError, match=r"cannot transcode AV1: PyAV .* has no libsvtav1 .*pip install -U av"):
        transcode(tmp_path / "src", tmp_path / "ladder", codecs="h264,av1")
    assert not (tmp_path / "ladder").exists()
    with pytest.raises(ValueError, match=r"config key 'codec': codec 'av1' cannot run: .*libsvtav1.*pip install"):
        Config(codec="av1", ladder=str(tmp_path)).validate()
    assert get_codec("hevc").missing() is None


# An independent implementation of the sample plan's draw law (splitmix64 on Python integers).
MASK, GOLDEN = 2**64 - 1, 0x9E3779B97F4A7C15


def _mix(value: int) -> int:
    value = (value + GOLDEN) & MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK
    return value ^ (value >> 31)


def uniform(seed: int, epoch: int, sample: int, column: int) -> float:
    row = _mix(_mix(_mix(seed) ^ epoch) ^ sample)
    return (_mix(row ^ ((column * GOLDEN) & MASK)) >> 11) / 2.0**53


CODEC_COLUMN, CLEAN_COLUMN, CHOICE_COLUMN = 46, 0, 1  # after 6 columns and 10 crop tries x 4


def expected_rung(seed: int, epoch: int, sample: int, spec: range, clean_prob: float) -> tuple[int, int]:
    """(codec index into h264, hevc, av1; level) by the documented law, snapped to this ladder's rungs."""
    codec = min(int(uniform(seed, epoch, sample, CODEC_COLUMN) * 3), 2)
    if uniform(seed, epoch, sample, CLEAN_COLUMN) < clean_prob:
        return codec, CLEAN_LEVEL
    level = spec[min(int(uniform(seed, epoch, sample, CHOICE_COLUMN) * len(spec)), len(spec) - 1)]
    rungs = CRFS[("h264", "hevc", "av1")[codec]]
    return codec, min(rungs, key=lambda rung: (abs(rung - level), rung))


def test_mixed_codec_training_draws_every_codec_by_the_plans_law(codec_ladder):
    """Clips (`VideoBatches`) and ladder frames (`ImageBatches`) draw (codec, CRF) by the plan's law."""
    ladder = load_ladder(codec_ladder)
    codecs = [get_codec(name) for name in ("h264", "hevc", "av1")]
    clips, seed = ["carphone"] * 6, 11

    def draws(epoch: int) -> dict[int, tuple[int, int]]:
        runtime = PipelineRuntime(batch_size=3, num_threads=1, seed=seed)
        batches = VideoBatches(ladder, clips, runtime=runtime, training=True, codec=codecs,
                               spec=codecs[0].parse_spec("20-45", 0.2), sampling=ClipSampling(2, 1, 1),
                               geometry=VideoGeometry(32, 40), checkpoint=f'{{"epoch": {epoch}, "batch": 0}}')
        return {index: (codec, level) for batch in batches for index, codec, level in
                zip(batch["index"].tolist(), batch["codec_index"].tolist(), batch["codec_level"].tolist())}

    for epoch in (0, 1):
        drawn = draws(epoch)
        assert drawn == {sample: expected_rung(seed, epoch, sample, range(20, 46), 0.2) for sample in drawn}
        assert drawn == draws(epoch)  # reproducible per (seed, epoch, sample)
    frames = [("carphone", frame) for frame in (0, 7, 15, 22, 30, 39)]  # a classification ladder's frames
    images = ImageBatches(frames, runtime=PipelineRuntime(batch_size=3, num_threads=1, seed=seed), ladder=ladder,
                          training=True, spec=codecs[0].parse_spec("20-45", 0.2), codec=codecs,
                          geometry=ImageGeometry(32, 40))
    drawn = {index: (codec, level) for batch in images for index, codec, level in
             zip(batch["index"].tolist(), batch["codec_index"].tolist(), batch["codec_level"].tolist())}
    assert drawn == {sample: expected_rung(seed, 0, sample, range(20, 46), 0.2) for sample in drawn}
    shares = np.bincount([expected_rung(seed, 0, sample, range(20, 46), 0.2)[0] for sample in range(3000)],
                         minlength=3) / 3000
    assert np.abs(shares - 1 / 3).max() < 0.03


def test_a_codec_list_is_for_ladders_only_and_every_codec_must_serve_the_task(codec_ladder, tmp_path):
    with pytest.raises(ValueError, match="config key 'codec': 'h264,hevc' lists 2 codecs, which only a ladder"):
        Config(codec="h264,hevc").validate()
    Config(codec="h264,hevc,av1", ladder=str(codec_ladder), level="20-45").validate()
    with pytest.raises(ValueError, match=r"config key 'level': HEVC CRF spec '52-60': CRF 52 is outside 0\.\.51"):
        Config(codec="av1,hevc", ladder=str(codec_ladder), level="52-60").validate()
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match="config key 'codec': .* which codec 'jpeg' cannot"):
        make_task(Config(task="action", data=str(tmp_path / "data"), codec="h264,jpeg", ladder=str(codec_ladder)))


def test_mixed_codec_metrics_are_per_codec():
    levels, indices = np.array([23, 40, -1, 30, 55, 55]), np.array([0, 0, 1, 2, 2, 2])
    metrics = codec_metrics(levels, get_codec("av1").scale, indices, ["h264", "hevc", "av1"])
    assert metrics["codec/h264/frac"] == pytest.approx(2 / 6) and metrics["codec/hevc/level_mean"] == 0.0
    assert metrics["codec/av1/level_mean"] == pytest.approx(140 / 3)
    assert metrics["codec/clean_frac"] == pytest.approx(1 / 6)
    assert sum(metrics["codec/level_hist"]) == 5


def test_intra_encoders_return_one_keyframe_whose_decode_is_the_roundtrip():
    image = carphone_frames(1)[0][:101, :77]  # odd sizes: padded for 4:2:0, cropped back
    for name, encode, crfs in (("h264", h264_intra_encode, (18, 40)), ("hevc", hevc_intra_encode, (18, 40)),
                               ("av1", av1_intra_encode, (25, 55))):
        sizes = []
        for crf in crfs:
            data = encode(image, crf)
            decoded = intra_decode(ENCODERS[name], data, 101, 77)
            assert decoded.shape == image.shape and psnr(decoded, image) > (34 if crf == crfs[0] else 24), name
            sizes.append(len(data))
        assert sizes[0] > sizes[1], (name, sizes)
    data = h264_intra_encode(image, 30)
    assert np.array_equal(h264_intra_roundtrip(image, 30), intra_decode(ENCODERS["h264"], data, 101, 77))
    data = av1_intra_encode(image, 40)
    assert np.array_equal(get_codec("av1").roundtrip(image, 40), intra_decode(ENCODERS["av1"], data, 101, 77))
    assert get_codec("hevc").runs == ("ladder",) and get_codec("av1").runs == ("host", "ladder")
