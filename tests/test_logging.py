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


def test_train_layers_freezes_the_rest(image_folder, tmp_path, run_cli):
    from safetensors.torch import load_file

    first = tmp_path / "first"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--max_steps", "1", "--out", first)
    assert status == 0, err
    second = tmp_path / "second"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--max_steps", "2", "--lr", "0.1",
                             "--pretrained", first / "model.safetensors", "--train_layers", "classifier",
                             "--out", second)
    assert status == 0, err
    before, after = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    changed = {key for key in before if before[key].is_floating_point() and not key.startswith("bn")
               and "running" not in key and not (before[key] == after[key]).all()}
    assert changed == {"classifier.weight", "classifier.bias"}
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--train_layers", "decoder",
                             "--out", tmp_path / "third")
    assert status == 2 and "no parameter of the model starts with 'decoder'" in err
