"""`codecloop transcode`: the CRF ladder on real clips, its manifest, resume, and bad sources."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from codecloop.dali_pipes.codecs import H264
from codecloop.dali_pipes.levels import CLEAN_LEVEL, snap
from codecloop.dali_pipes.ladder import MANIFEST_COLUMNS, SWSCALE_THREADS, find_clips, load_ladder, transcode
from codecloop.demo.packaged_data import packaged_clip
from tests.videos import moving_frames, write_empty_video, write_video

CRFS = (0, 18, 28, 40, 51)


@pytest.fixture(scope="module")
def real_ladder(tmp_path_factory):
    """The real H.264 carphone clip (176x144, 120 frames) plus a PNG image sequence, transcoded."""
    src = tmp_path_factory.mktemp("src")
    shutil.copy(packaged_clip("carphone"), src / "carphone.mp4")
    for index, frame in enumerate(moving_frames(12, 96, 64)):
        (src / "seq").mkdir(exist_ok=True)
        Image.fromarray(frame).save(src / "seq" / f"frame_{index}.png")
    dst = tmp_path_factory.mktemp("ladder")
    report = transcode(src, dst, crfs=CRFS, workers=2, progress=False)
    assert report.failed == {} and report.written == 2 * len(CRFS)
    return dst


def test_rate_and_quality_fall_as_crf_rises(real_ladder):
    ladder = load_ladder(real_ladder)
    assert ladder.crfs() == list(CRFS)
    for clip in ("carphone", "seq"):
        rungs = [ladder.rung(clip, crf) for crf in CRFS]
        bpp = [rung.bits_per_pixel for rung in rungs]
        psnr = [rung.psnr for rung in rungs]
        assert bpp == sorted(bpp, reverse=True) and len(set(bpp)) == len(bpp), bpp
        assert psnr == sorted(psnr, reverse=True), psnr
        assert psnr[-1] < psnr[0] - 10, psnr
    assert ladder.rung("carphone", 0).psnr > 45  # rung 0 of a 4:2:0 source: near-lossless (QP 1)
    chroma_only = float(np.mean([psnr_of(frame, yuv420_roundtrip(frame)) for frame in moving_frames(12, 96, 64)]))
    assert ladder.rung("seq", 0).psnr == pytest.approx(chroma_only, abs=0.5)  # RGB source: 4:2:0 is all it loses
    carphone = ladder.rung("carphone", 28)
    assert (carphone.frames, carphone.width, carphone.height) == (120, 176, 144)
    assert carphone.fps == pytest.approx(30000 / 1001)
    assert ladder.frame_files("seq") == [f"frame_{i}.png" for i in range(12)]
    assert ladder.frame_files("carphone") == []


def psnr_of(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b) ** 2)))


def yuv420_roundtrip(frame: np.ndarray) -> np.ndarray:
    yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p", threads=SWSCALE_THREADS)
    return yuv.to_ndarray(format="rgb24", threads=SWSCALE_THREADS)


def test_rungs_are_what_nvdec_wants(real_ladder):
    ladder = load_ladder(real_ladder)
    with av.open(str(ladder.path("carphone", 40))) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.codec_context.profile == "High"
        keyframes = [frame.key_frame for frame in container.decode(stream)]
    gaps = np.diff(np.flatnonzero(keyframes))
    assert len(keyframes) == 120 and gaps.max() <= 15
    with av.open(str(ladder.path("carphone", 0))) as container:
        assert container.streams.video[0].codec_context.profile == "High"  # not lossless High 4:4:4


def test_manifest_round_trip(real_ladder):
    with (real_ladder / "manifest.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == MANIFEST_COLUMNS and len(rows) == 2 * len(CRFS)
    ladder = load_ladder(real_ladder)
    for row in rows:
        rung = ladder.rung(row["clip"], int(row["crf"]), row["codec"])
        assert rung.bytes == (real_ladder / row["path"]).stat().st_size
        assert json.loads((real_ladder / row["path"]).with_suffix(".json").read_text())["bytes"] == rung.bytes
    settings = json.loads((real_ladder / "ladder.json").read_text())
    assert settings["codecs"] == {"h264": list(CRFS)} and settings["command"].startswith("codecloop transcode --src ")


def test_rerun_skips_finished_rungs(real_ladder, tmp_path):
    ladder = tmp_path / "ladder"
    shutil.copytree(real_ladder, ladder)
    before = {path: path.stat().st_mtime_ns for path in ladder.rglob("*.mp4")}
    (ladder / "carphone" / "crf28.json").unlink()  # an unfinished rung: file present, row missing
    (ladder / "carphone" / "crf28.mp4").write_bytes(b"half a rung")
    (ladder / "carphone" / ".crf40.mp4.tmp-999").write_bytes(b"stale temporary")
    src = json.loads((ladder / "ladder.json").read_text())["src"]
    report = transcode(src, ladder, crfs=CRFS, workers=1, progress=False)
    assert report.skipped_existing == 2 * len(CRFS) - 1
    assert report.written == 1
    changed = [path.name for path, mtime in before.items() if path.stat().st_mtime_ns != mtime]
    assert changed == ["crf28.mp4"]
    assert not list(ladder.rglob(".*tmp*"))
    assert load_ladder(ladder).rung("carphone", 28).frames == 120


def test_missing_rung_files_are_named_with_the_rebuild_command(real_ladder, tmp_path):
    ladder = tmp_path / "ladder"
    shutil.copytree(real_ladder, ladder)
    (ladder / "seq" / "crf18.mp4").unlink()
    with pytest.raises(FileNotFoundError, match=r"seq/crf18\.mp4.*codecloop transcode --src "):
        load_ladder(ladder)


def test_odd_sizes_pixel_formats_and_variable_rate(tmp_path):
    frames = moving_frames(20, 65, 49)
    write_video(tmp_path / "src" / "odd.avi", frames, codec="ffv1", pix_fmt="bgr0")
    write_video(tmp_path / "src" / "yuv422.mp4", [f[:48, :64] for f in frames], pix_fmt="yuv422p")
    write_video(tmp_path / "src" / "tenbit.mkv", [f[:48, :64] for f in frames], codec="ffv1",
                pix_fmt="yuv422p10le")
    write_video(tmp_path / "src" / "vfr.mkv", [f[:48, :64] for f in frames], pts=[i * i for i in range(20)])
    report = transcode(tmp_path / "src", tmp_path / "ladder", crfs=(23,), workers=2, progress=False)
    assert report.failed == {}
    ladder = load_ladder(tmp_path / "ladder")
    odd = ladder.rung("odd", 23)
    assert (odd.width, odd.height, odd.source_width, odd.source_height) == (64, 48, 65, 49)
    for clip in ("yuv422", "tenbit"):
        with av.open(str(ladder.path(clip, 23))) as container:
            assert container.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert ladder.rung(clip, 23).psnr > 30
    assert ladder.rung("tenbit", 23).source_pix_fmt == "yuv422p10le"
    assert ladder.rung("vfr", 23).retimed and not ladder.rung("yuv422", 23).retimed
    assert ladder.rung("vfr", 23).frames == 20


def test_unreadable_and_empty_sources_are_skipped_and_listed(tmp_path):
    write_video(tmp_path / "src" / "good.mp4", moving_frames(8, 64, 48))
    (tmp_path / "src" / "garbage.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(range(200)))
    write_empty_video(tmp_path / "src" / "empty.avi")
    report = transcode(tmp_path / "src", tmp_path / "ladder", crfs=(28,), workers=1, progress=False)
    assert report.failed["empty"] == (str(tmp_path / "src" / "empty.avi"), "ValueError: the source holds no video frames")
    assert report.failed["garbage"][0] == str(tmp_path / "src" / "garbage.mp4")
    ladder = load_ladder(tmp_path / "ladder")
    assert list(ladder.rungs) == ["good"] and sorted(ladder.failed) == ["empty", "garbage"]
    assert not list((tmp_path / "ladder").rglob("*.tmp-*"))


def _processes_tagged(tag: str) -> list[int]:
    """Live (not zombie) processes started with ``CODECLOOP_TEST_TAG=tag`` in their environment: a process
    and everything it started, fork server and pool workers included."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"CODECLOOP_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes() \
                    and ") Z " not in (entry / "stat").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_killed_transcode_reruns_to_a_whole_ladder(tmp_path):
    for index in range(6):
        write_video(tmp_path / "src" / f"clip{index}.mp4", moving_frames(60, 128, 96, seed=index))
    command = [sys.executable, "-m", "codecloop", "transcode", "--src", str(tmp_path / "src"),
               "--dst", str(tmp_path / "ladder"), "--crfs", "0,23,40", "--workers", "1"]
    tag = str(tmp_path)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "CODECLOOP_TEST_TAG": tag})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "ladder").rglob("crf*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list((tmp_path / "ladder").rglob("crf*.json")))
    assert 0 < done < 18, "the kill should land half-way"
    assert _processes_tagged(tag), "its fork server and worker are found while they wind down"
    deadline = time.monotonic() + 10  # neither its fork server nor its encoding worker outlives it
    while _processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_tagged(tag)
    assert subprocess.run(command, capture_output=True).returncode == 0
    ladder = load_ladder(tmp_path / "ladder")
    assert sorted(ladder.rungs) == [f"clip{i}" for i in range(6)] and ladder.crfs() == [0, 23, 40]
    for rung in ladder.all_rungs():
        with av.open(str(ladder.root / rung.path)) as container:
            assert sum(1 for _ in container.decode(video=0)) == rung.frames == 60


def test_clip_discovery_and_bad_settings(tmp_path):
    write_video(tmp_path / "src" / "a" / "x.mp4", moving_frames(4, 32, 32))
    write_video(tmp_path / "src" / "a" / "x.avi", moving_frames(4, 32, 32), codec="mpeg4")
    with pytest.raises(ValueError, match=r"clip 'a/x' has several sources: .*x\.avi, .*x\.mp4"):
        find_clips(tmp_path / "src")
    with pytest.raises(ValueError, match="CRF 52 is outside 0..51"):
        transcode(tmp_path / "src", tmp_path / "ladder", crfs=(23, 52))
    with pytest.raises(ValueError, match="keyint 30 must be in 1..15"):
        transcode(tmp_path / "src", tmp_path / "ladder", keyint=30)
    with pytest.raises(FileNotFoundError, match="source folder .*nowhere does not exist"):
        transcode(tmp_path / "nowhere", tmp_path / "ladder")


@pytest.mark.parametrize(("text", "levels", "is_range"),
                         [("28", (28,), False), ("18-51", tuple(range(18, 52)), True),
                          ("40,18, 28", (18, 28, 40), False)])
def test_crf_spec_forms(text, levels, is_range):
    spec = H264.parse_spec(text)
    assert (spec.levels, spec.is_range) == (levels, is_range)


@pytest.mark.parametrize(("text", "culprit"), [("52", "CRF 52"), ("x", "'x'"), ("40-18", "range start 40"),
                                               ("18,-1", "'-1'")])
def test_bad_crf_specs_name_the_value(text, culprit):
    with pytest.raises(ValueError, match=culprit):
        H264.parse_spec(text)


def test_crf_draws_snap_to_rungs_and_honour_clean_prob():
    rungs = [0, 18, 28, 40, 51]
    rng = np.random.default_rng(0)
    spec = H264.parse_spec("20-45", clean_prob=0.25)
    draws = np.array([spec.draw(rng, rungs) for _ in range(4000)])
    assert set(draws.tolist()) == {CLEAN_LEVEL, 18, 28, 40}
    assert abs((draws == CLEAN_LEVEL).mean() - 0.25) < 0.03
    assert snap(34, rungs) == 28 and snap(23, rungs) == 18 and snap(46, rungs) == 51
    online = np.array([H264.parse_spec("30-33", 0.5).draw(rng) for _ in range(2000)])
    assert set(online.tolist()) == {-1, 30, 31, 32, 33}
    with pytest.raises(ValueError, match="CRF 23 is not a rung"):
        H264.parse_spec("18,23").check_ladder(rungs, H264.ladder_clean_rung)
    with pytest.raises(ValueError, match=r"no clean rung \(CRF 0"):
        H264.parse_spec("28", clean_prob=0.1).check_ladder([18, 28], H264.ladder_clean_rung)
