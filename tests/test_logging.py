"""Logging: W&B never stops training; offline runs stay syncable; gradient accumulation steps."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY

BASE = [arg for pair in zip(TINY[::2], TINY[1::2]) if pair[0] != "--wandb" for arg in pair]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_wandb_failure_does_not_stop_training(image_folder, tmp_path, run_cli, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def broken_init(*args, **kwargs):
        raise RuntimeError("W&B is unreachable")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B disabled for this run: W&B is unreachable"):
        status, _, err = run_cli("train", "--data", image_folder, *BASE, "--wandb", "online", "--max_steps", "2",
                                 "--out", tmp_path / "run")
    assert status == 0, err
    assert any("train/loss" in record for record in _records(tmp_path / "run"))


def test_wandb_offline_without_api_key(image_folder, tmp_path, run_cli, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    status, _, err = run_cli("train", "--data", image_folder, *BASE, "--wandb", "online", "--max_steps", "2",
                             "--log_every", "1", "--out", tmp_path / "run")
    assert status == 0, err
    offline_runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list((tmp_path / "run").rglob("*"))[:20]


def test_gradient_accumulation_counts_optimizer_steps(image_folder, tmp_path, run_cli):
    # 24 train images, batch 4: 6 micro-batches per epoch, 3 optimizer steps with grad_accum 2
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--batch_size", "4", "--grad_accum", "2",
                             "--epochs", "2", "--log_every", "1", "--out", tmp_path / "run")
    assert status == 0, err
    steps = [record["step"] for record in _records(tmp_path / "run") if "train/loss" in record]
    assert steps == [1, 2, 3, 4, 5, 6]
