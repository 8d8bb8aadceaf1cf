"""`codecloop bench`: each CPU mode, image and video, runs a few iterations and appends well-formed
CSV and JSON rows (no speed assertions)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dali_pipes.ladder import transcode
from tests.videos import moving_frames, write_video

FAST = ["--images", "12", "--batch_size", "4", "--crop", "48", "--iterations", "2", "--warmup", "1", "--repeats",
        "2", "--threads", "1", "--workers", "1", "--model", "test_efficientnet"]
COLUMNS = ["mode", "codec", "device", "precision", "torch", "torchvision", "dali", "cuda", "batch_size", "crop",
           "frames", "samples", "levels", "model", "iterations", "repeats", "time", "contender", "unit",
           "samples_per_sec", "min", "max", "ratio"]


def test_bench_modes_append_rows(tmp_path, run_cli):
    expected = {"data": ["codecloop", "dali-bare", "torch-dataloader"], "model": ["test_efficientnet"],
                "train": ["codecloop", "codecloop-clean"], "sweep": ["one-pass", "pass-per-level"]}
    for mode, contenders in expected.items():
        status, out, err = run_cli("bench", "--mode", mode, *FAST, "--out", tmp_path)
        assert status == 0, err
        assert "| contender | images/s (median) |" in out
    assert "skipped torchvision-nvjpeg: needs CUDA" in run_cli("bench", *FAST, "--out", tmp_path / "again")[1]
    (csv_path,) = tmp_path.glob("bench-*-fp32-torch*-dali*-cuda*.csv")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS
    assert [(row["mode"], row["contender"]) for row in rows] == [
        (mode, name) for mode, names in expected.items() for name in names]
    for row in rows:
        assert float(row["min"]) <= float(row["samples_per_sec"]) <= float(row["max"]) and float(row["min"]) > 0
        assert (row["codec"], row["unit"], row["frames"]) == ("jpeg", "images", "")
    assert [row["ratio"] for row in rows if row["mode"] == "data"][0] == "1.0"
    train = [row for row in rows if row["mode"] == "train"]
    assert train[1]["ratio"] == "1.0" and 0 < float(train[0]["ratio"])  # codec / clean
    assert rows[-1]["ratio"] == "1.0" and rows[-1]["levels"] == "5,10,15,20,30,50,75,90,95"
    records = json.loads(csv_path.with_suffix(".json").read_text())
    assert [{key: str(value) for key, value in record.items()} for record in records] == rows


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    """Two short clips at CRFs 0, 28 and 51."""
    src = tmp_path_factory.mktemp("videos")
    for index, count in enumerate([12, 9]):
        write_video(src / f"clip{index}.mp4", moving_frames(count, 64, 48, seed=index))
    dst = tmp_path_factory.mktemp("ladder")
    transcode(src, dst, crfs=(0, 28, 51), workers=2, progress=False)
    return dst


def test_video_bench_modes_append_rows(ladder, tmp_path, run_cli):
    video = ["--codec", "h264", "--data", ladder, "--crop", "32", "--frames", "4", "--model", "r3d_18"]
    expected = {"data": ["codecloop", "dali-bare", "torch-dataloader"], "model": ["r3d_18"],
                "train": ["codecloop", "codecloop-clean"]}
    for mode in expected:
        status, out, err = run_cli("bench", "--mode", mode, *FAST, *video, "--out", tmp_path)
        assert status == 0, err
        assert "| contender | clips/s (median) |" in out and "4x32x32, CRF 18-51" in out
    (csv_path,) = tmp_path.glob("bench-*.csv")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["contender"]) for row in rows] == [
        (mode, name) for mode, names in expected.items() for name in names]
    assert {(row["codec"], row["unit"], row["frames"], row["levels"]) for row in rows} == {("h264", "clips", "4", "18-51")}
    assert all(float(row["samples_per_sec"]) > 0 for row in rows)
    assert run_cli("bench", "--mode", "sweep", *FAST, *video, "--out", tmp_path)[2].count("JPEG sweeps") == 1


def test_video_bench_without_a_clean_rung_skips_bare_dali(tmp_path, run_cli):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "clip.mp4", moving_frames(8, 64, 48))
    transcode(src, tmp_path / "ladder", crfs=(28, 51), workers=1, progress=False)
    status, out, _ = run_cli("bench", *FAST, "--codec", "h264", "--data", tmp_path / "ladder", "--crop", "32",
                             "--frames", "4", "--contenders", "codecloop,dali-bare", "--out", tmp_path / "out")
    assert status == 0 and "skipped dali-bare: the ladder" in out and "has no clean CRF-0 rung" in out


@pytest.mark.parametrize("arguments, message", [
    (["--contenders", "pillow-simd"], "unknown contender 'pillow-simd'"),
    (["--quality", "0-50"], "quality 0 is outside 1..100"),
    (["--codec", "h264", "--crf", "60"], "CRF 60"),
    (["--contenders", "torchvision-nvjpeg"], "no contender could run: skipped torchvision-nvjpeg: needs CUDA"),
])
def test_bench_bad_input(arguments, message, tmp_path, run_cli):
    status, _, err = run_cli("bench", *FAST, *arguments, "--out", tmp_path)
    assert status == 2 and message in err
