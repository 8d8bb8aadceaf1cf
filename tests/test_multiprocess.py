"""Two processes with gloo on CPU: sharded training, and every eval sample counted exactly once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.multiprocess


def _torchrun(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "launch.cli", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def test_two_process_train_and_sweep(image_folder, tmp_path):
    train_dir, sweep_dir = tmp_path / "train", tmp_path / "sweep"
    tiny = [arg if arg != "2" else "1" for arg in TINY]  # one DALI thread per process on 2 cores
    result = _torchrun("train", "--data", image_folder, *tiny, "--batch_size", "4", "--epochs", "1",
                       "--quality", "10-90", "--out", train_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/n"] for r in records if "eval/n" in r] == [15]  # 15 val images over 2 ranks: 8 + 7
    state = json.loads(next((train_dir / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    assert state["world_size"] == 2 and state["step"] == 3  # 24 train images: 12 per rank, 3 batches of 4
    assert state["samples"] == 24
    result = _torchrun("sweep", "--data", image_folder, *tiny, "--batch_size", "4", "--checkpoint", train_dir,
                       "--levels", "20,80", "--out", sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    with (sweep_dir / "sweep.csv").open() as handle:
        assert [row["n"] for row in csv.DictReader(handle)] == ["15", "15", "15"]


def test_two_process_dense_sweep_counts_every_image_once(tmp_path, run_cli):
    """A confusion matrix gathered from 2 ranks over 5 images equals the one-process sweep."""
    from tasks.synthetic import make_synthetic

    data = make_synthetic("segmentation", tmp_path / "data", train=4, val=5, height=48, width=64)
    options = ["--task", "segmentation", "--model", "unet_test_efficientnet", "--data", data, "--input_size",
               "48x64", "--batch_size", "2", "--wandb", "disabled", "--progress", "false", "--num_threads", "1"]
    assert run_cli("train", *options, "--max_steps", "2", "--out", tmp_path / "train")[0] == 0
    sweeps = {}
    for processes in (1, 2):
        out = tmp_path / f"sweep{processes}"
        arguments = ["sweep", *options, "--checkpoint", tmp_path / "train", "--levels", "10", "--out", out]
        if processes == 1:
            assert run_cli(*arguments)[0] == 0
        else:
            result = _torchrun(*arguments)
            assert result.returncode == 0, result.stderr[-3000:]
        with (out / "sweep.csv").open() as handle:
            sweeps[processes] = list(csv.DictReader(handle))
    assert [row["n"] for row in sweeps[2]] == ["5", "5"]
    for one, two in zip(sweeps[1], sweeps[2]):
        assert abs(float(one["miou"]) - float(two["miou"])) < 1e-3
