"""Action recognition end to end on real video files: transcode -> train -> sweep over CRFs, and its bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml
import torch

from codecloop.tasks.action import ActionTask
from tests.videos import write_video_dataset

VIDEO_ARGS = ["--task", "action", "--codec", "h264", "--model", "mc3_18", "--frames", "4", "--frame_stride", "2",
              "--eval_clips", "2", "--crop_size", "32", "--resize_size", "40", "--batch_size", "4",
              "--wandb", "disabled", "--progress", "false", "--num_threads", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory, run_cli_module):
    """A train/val video folder dataset (3 classes; 4 train, 2 val videos each) and its ladder at 4 CRFs."""
    root = write_video_dataset(tmp_path_factory.mktemp("videos"), {"train": 4, "val": 2})
    ladder = tmp_path_factory.mktemp("ladder")
    status, out, err = run_cli_module("transcode", "--src", root, "--dst", ladder, "--crfs", "0,23,40,51",
                                      "--workers", "2")
    assert status == 0, err
    assert "18 clips: 72 rungs written" in out
    return root, ladder


def test_train_then_sweep_three_crfs(videos, tmp_path, run_cli):
    root, ladder = videos
    train_dir, sweep_dir = tmp_path / "train", tmp_path / "sweep"
    status, _, err = run_cli("train", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--level", "23-51",
                             "--clean_prob", "0.25", "--epochs", "2", "--log_every", "1", "--out", train_dir)
    assert status == 0, err
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # 12 train videos, batch 4: 3 steps per epoch
    assert all(set(r) >= {"codec/level_mean", "codec/level_hist", "codec/clean_frac"} for r in steps)
    assert all(23 <= r["codec/level_mean"] <= 51 for r in steps if r["codec/clean_frac"] < 1)
    evals = [r for r in records if "eval/top1" in r]
    assert [r["eval/n"] for r in evals] == [6, 6]
    assert set(evals[0]) >= {"eval/top1", "eval/top5", "eval/clip_top1", "eval/clip_top5"}
    status, _, err = run_cli("sweep", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--checkpoint", train_dir,
                             "--levels", "23,40,51", "--out", sweep_dir)
    assert status == 0, err
    with (sweep_dir / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["codec"], row["level"]) for row in rows] == [("none", "clean"), ("h264", "23"), ("h264", "40"),
                                                             ("h264", "51")]
    assert all(row["n"] == "6" for row in rows) and "clip_top1" in rows[0]
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    assert "# H.264 sweep" in (sweep_dir / "report.md").read_text()


def test_training_draws_a_codec_per_clip_from_a_mixed_ladder(videos, tmp_path, run_cli):
    root, ladder = videos
    mixed = tmp_path / "ladder"
    shutil.copytree(ladder, mixed)
    status, out, err = run_cli("transcode", "--src", root, "--dst", mixed, "--codecs", "hevc,av1", "--crfs", "0,40",
                               "--workers", "2")
    assert status == 0 and "18 clips: 72 rungs written" in out, err
    args = ["--data", root, "--ladder", mixed, *VIDEO_ARGS, "--codec", "h264,hevc,av1", "--level", "23-45",
            "--clean_prob", "0.2"]
    status, _, err = run_cli("train", *args, "--epochs", "2", "--log_every", "3", "--out", tmp_path / "train")
    assert status == 0, err
    steps = [record for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in (record := json.loads(line))]
    assert len(steps) == 2
    for record in steps:  # 12 clips per log line, each codec's share and mean CRF on its own rungs
        shares = [record[f"codec/{name}/frac"] for name in ("h264", "hevc", "av1")]
        assert sum(shares) == pytest.approx(1.0) and all(0 < share < 1 for share in shares), shares
        assert record["codec/hevc/level_mean"] in (0.0, 40.0) and record["codec/av1/level_mean"] in (0.0, 40.0)
    status, _, err = run_cli("sweep", *args, "--checkpoint", tmp_path / "train", "--levels", "40",
                             "--out", tmp_path / "sweep")
    assert status == 0, err  # each codec of the mix swept on its own rungs, rated by the rungs' manifest rows
    rows = list(csv.DictReader((tmp_path / "sweep" / "sweep.csv").open()))
    assert [(row["codec"], row["level"]) for row in rows] == [("none", "clean"), ("h264", "40"), ("hevc", "40"),
                                                             ("av1", "40")]
    manifest = list(csv.DictReader((mixed / "manifest.csv").open()))
    val = set(ActionTask(root, ladder=mixed, model="mc3_18").sample_index("val").files)
    for row in rows[1:]:
        listed = [float(m["bits_per_pixel"]) for m in manifest
                  if m["codec"] == row["codec"] and m["crf"] == "40" and m["clip"] in val]
        assert row["bpp_n"] == "6" and float(row["bpp"]) == pytest.approx(sum(listed) / len(listed))
    equal_rate = list(csv.DictReader((tmp_path / "sweep" / "equal_rate.csv").open()))
    assert {"h264_top1", "hevc_top1", "av1_top1", "best"} <= set(equal_rate[0])


def test_ucf101_split_files(tmp_path, run_cli):
    root = write_video_dataset(tmp_path / "ucf", {"train": 2, "val": 1}, ucf_splits=True)
    ladder = tmp_path / "ladder"
    assert run_cli("transcode", "--src", root, "--dst", ladder, "--crfs", "0,40", "--workers", "2")[0] == 0
    task = ActionTask(root, ladder=ladder, model="mc3_18", splits=root / "splits", frames=4, crop_size=32)
    assert task.classes == ["astronaut", "chelsea", "coffee"]
    train, val = task.sample_index("train"), task.sample_index("val")
    assert len(train) == 6 and len(val) == 3
    assert train.files[0] == "astronaut/v_astronaut_g00_c00"
    assert torch.equal(val.targets["label"], torch.tensor([0, 1, 2]))


def test_video_level_metrics_average_clips():
    task = ActionTask.__new__(ActionTask)
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 1.0, 0.0]],    # one clip right, video right
                           [[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]])   # one clip right, video wrong
    metrics = task.sample_metrics(logits, {"label": torch.tensor([0, 2])})
    assert metrics["clip_top1"].tolist() == [0.5, 0.5]
    assert metrics["top1"].tolist() == [1.0, 0.0]


def test_bad_video_inputs(videos, tmp_path, run_cli):
    root, ladder = videos
    status, _, err = run_cli("train", "--data", root, *VIDEO_ARGS, "--out", tmp_path / "a")
    assert status == 2 and "config key 'ladder'" in err and "codecloop transcode --src" in err
    status, _, err = run_cli("train", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--model", "resnet50",
                             "--out", tmp_path / "b")
    assert status == 2 and "model 'resnet50' is not a video model" in err
    status, _, err = run_cli("train", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--codec", "jpeg",
                             "--out", tmp_path / "c")
    assert status == 2 and "config key 'codec'" in err
    status, _, err = run_cli("train", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--level", "28",
                             "--out", tmp_path / "d")
    assert status == 2 and "CRF 28 is not a rung" in err
    status, _, err = run_cli("train", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--model", "mvit_v2_s",
                             "--out", tmp_path / "e")
    assert status == 2 and "--frames 16 --crop_size 224" in err


def test_missing_rung_files_stop_with_the_rebuild_command(videos, tmp_path, run_cli):
    root, ladder = videos
    broken = tmp_path / "ladder"
    shutil.copytree(ladder, broken)
    next(broken.rglob("crf40.mp4")).unlink()
    status, _, err = run_cli("train", "--data", root, "--ladder", broken, *VIDEO_ARGS, "--out", tmp_path / "run")
    assert status == 2 and "missing or changed" in err and "codecloop transcode --src" in err


def test_experiment_with_h264(videos, tmp_path, run_cli):
    root, ladder = videos
    out = tmp_path / "experiment"
    status, _, err = run_cli("experiment", "--data", root, "--ladder", ladder, *VIDEO_ARGS, "--epochs", "1",
                             "--levels", "23,51", "--retrain_level", "23-51", "--retrain_max_steps", "2", "--out", out)
    assert status == 0, err
    with (out / "recovery.csv").open() as handle:
        assert [(row["codec"], row["level"]) for row in csv.DictReader(handle)] == [("h264", "23"), ("h264", "51")]
    retrain = yaml.safe_load((out / "config.yaml").read_text())
    assert retrain["retrain_level"] == "23-51" and retrain["codec"] == "h264"
    records = [json.loads(line) for line in (out / "retrain" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["codec/level_mean"] >= 23 for r in records if r.get("codec/clean_frac", 1) < 1)
    assert "Retrained on H.264 CRF `23-51`" in (out / "report.md").read_text()
