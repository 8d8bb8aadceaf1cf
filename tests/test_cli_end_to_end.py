"""`codecloop train` -> `sweep` -> `experiment` -> `report` on real JPEG files, every output checked."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY

SWEEP_COLUMNS = ["codec", "level", "bpp", "bpp_std", "bpp_n", "model", "top1", "top1_lo", "top1_hi", "top5", "top5_lo",
                 "top5_hi", "loss", "loss_lo", "loss_hi", "n", "ci_resamples"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def dirty_folder(image_folder, tmp_path_factory) -> Path:
    """The image folder plus a corrupt JPEG, a truncated JPEG and a non-image file in train/."""
    root = tmp_path_factory.mktemp("dirty") / "data"
    shutil.copytree(image_folder, root)
    good = next((root / "train" / "coffee").glob("*.jpg")).read_bytes()
    (root / "train" / "coffee" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (root / "train" / "chelsea" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "astronaut" / "notes.png").write_text("this is not an image")
    return root


@pytest.fixture(scope="module")
def trained_run(dirty_folder, tmp_path_factory) -> Path:
    from codecloop.launch.cli import main

    out = tmp_path_factory.mktemp("runs") / "train"
    status = main(["train", "--data", str(dirty_folder), *TINY, "--batch_size", "4", "--epochs", "1",
                   "--level", "5-95", "--clean_prob", "0.25", "--log_every", "2", "--out", str(out)])
    assert status == 0
    return out


def test_train_writes_run_directory(trained_run):
    assert (trained_run / "model.safetensors").is_file()
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["level"] == "5-95" and config["out"] == str(trained_run)
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    step_records = [r for r in records if "train/loss" in r]
    assert step_records, records
    for key in ("train/loss", "codec/level_mean", "codec/level_hist", "throughput/samples_per_sec",
                "throughput/data_wait_frac"):
        assert key in step_records[0], key
    assert 0.0 <= step_records[0]["throughput/data_wait_frac"] <= 1.0
    epoch = [r for r in records if "eval/top1" in r][-1]
    assert epoch["eval/n"] == 15
    assert epoch["data/skipped_files"] == 3
    skipped = " ".join(epoch["data/skipped_paths"])
    for name in ("corrupt.jpg", "truncated.jpg", "notes.png"):
        assert name in skipped
    assert len(list((trained_run / "checkpoints").glob("step_*"))) == 1


def test_sweep_three_levels(trained_run, dirty_folder, tmp_path, run_cli):
    out = tmp_path / "sweep"
    status, stdout, _ = run_cli("sweep", "--data", dirty_folder, *TINY, "--checkpoint", trained_run,
                                "--levels", "10,50,90", "--out", out)
    assert status == 0, stdout
    rows = _rows(out / "sweep.csv")
    assert list(rows[0]) == SWEEP_COLUMNS
    assert [row["level"] for row in rows] == ["clean", "10", "50", "90"]
    assert all(row["n"] == "15" for row in rows)
    assert [row["bpp_n"] for row in rows] == ["", "15", "15", "15"]
    rates = [float(row["bpp"]) for row in rows[1:]]
    assert 0 < rates[0] < rates[1] < rates[2]
    assert (out / "sweep.png").stat().st_size > 1000
    assert "| clean |" in (out / "report.md").read_text()


def test_experiment_and_report(dirty_folder, tmp_path, run_cli):
    out = tmp_path / "experiment"
    status, stdout, err = run_cli("experiment", "--data", dirty_folder, *TINY, "--batch_size", "6", "--epochs", "1",
                                  "--levels", "10,50", "--retrain_max_steps", "2", "--out", out)
    assert status == 0, err
    for name in ("sweep.csv", "recovery.csv", "experiment.png", "report.md", "baseline/model.safetensors",
                 "retrain/model.safetensors", "retrain/metrics.jsonl"):
        assert (out / name).exists(), name
    recovery = _rows(out / "recovery.csv")
    assert list(recovery[0]) == ["codec", "level", "bpp", "clean_top1", "baseline_top1", "retrained_top1",
                                 "recovery_pct", "recovery_pct_lo", "recovery_pct_hi", "significance"]
    assert [row["level"] for row in recovery] == ["10", "50"]
    assert {row["model"] for row in _rows(out / "sweep.csv")} == {"baseline", "retrained"}
    (out / "report.md").unlink()
    assert run_cli("report", out)[0] == 0
    assert "## Recovery" in (out / "report.md").read_text()


def test_strict_stops_naming_the_file(dirty_folder, tmp_path, run_cli):
    status, _, err = run_cli("train", "--data", dirty_folder, *TINY, "--strict", "--out", tmp_path / "strict")
    assert status == 2
    assert "corrupt.jpg" in err or "truncated.jpg" in err or "notes.png" in err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "codecloop", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in ("--level", "--clean_prob", "--grad_accum", "--wandb", "--resume", "--checkpoint_every"):
        assert flag in result.stdout
