"""`--resume` continues from the last checkpoint, mid-epoch, without repeating or skipping samples."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY

ARGS = [*TINY, "--batch_size", "4", "--epochs", "2", "--level", "5-95", "--clean_prob", "0.2",
        "--checkpoint_every", "2", "--keep_checkpoints", "10", "--log_every", "1", "--warmup_steps", "2"]


@pytest.fixture(scope="module")
def uninterrupted(image_folder, tmp_path_factory):
    from codecloop.launch.cli import main

    out = tmp_path_factory.mktemp("resume") / "full"
    assert main(["train", "--data", str(image_folder), *ARGS, "--out", str(out)]) == 0
    return out


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["train/loss"] for record in map(json.loads, lines) if "train/loss" in record}


@pytest.mark.parametrize("resume_step", [4, 6])  # 6 steps per epoch: mid-epoch and at the epoch's end
def test_resume_matches_uninterrupted(uninterrupted, image_folder, tmp_path, run_cli, resume_step):
    resumed = tmp_path / "resumed"
    source = uninterrupted / "checkpoints" / f"step_{resume_step:08d}"
    shutil.copytree(source, resumed / "checkpoints" / source.name)
    status, _, err = run_cli("train", "--data", image_folder, *ARGS, "--out", resumed, "--resume")
    assert status == 0, err
    full_losses, resumed_losses = _losses(uninterrupted), _losses(resumed)
    assert min(resumed_losses) == resume_step + 1
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_losses[step], rel=1e-5, abs=1e-6), step
    expected, actual = load_file(uninterrupted / "model.safetensors"), load_file(resumed / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def test_resume_without_checkpoint_starts_fresh(image_folder, tmp_path, run_cli):
    out = tmp_path / "fresh"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--max_steps", "1", "--out", out, "--resume")
    assert status == 0, err
    assert (out / "checkpoints" / "step_00000001").is_dir()


def test_new_run_over_an_old_one_is_refused(uninterrupted, image_folder, run_cli):
    status, _, err = run_cli("train", "--data", image_folder, *ARGS, "--out", uninterrupted)
    assert status == 2
    assert f"run directory {uninterrupted} already holds a training run" in err


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_resume_matches_uninterrupted(uninterrupted, image_folder, tmp_path, run_cli,
                                                            monkeypatch, signal_number):
    """A signal during step 3 (of 12) stops the run after that step with a checkpoint and exit
    status 128 + signal; rerunning with --resume ends where the uninterrupted run ends."""
    from codecloop.tasks.classification import ClassificationTask

    calls = {"forward": 0}
    forward = ClassificationTask.forward

    def forward_then_signal(self, model, batch):
        calls["forward"] += 1
        if calls["forward"] == 3:
            os.kill(os.getpid(), signal_number)
        return forward(self, model, batch)

    out = tmp_path / "preempted"
    monkeypatch.setattr(ClassificationTask, "forward", forward_then_signal)
    with pytest.raises(SystemExit) as stopped:
        run_cli("train", "--data", image_folder, *ARGS, "--out", out)
    assert stopped.value.code == 128 + signal_number
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(ClassificationTask, "forward", forward)
    status, _, err = run_cli("train", "--data", image_folder, *ARGS, "--out", out, "--resume")
    assert status == 0, err
    full_losses, resumed_losses = _losses(uninterrupted), _losses(out)
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_losses[step], rel=1e-5, abs=1e-6), step
    expected, actual = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)


def _nan_at(monkeypatch, call: int) -> None:
    """Make the classification loss NaN on the `call`-th forward pass."""
    from codecloop.tasks.classification import ClassificationTask

    forward, calls = ClassificationTask.forward, {"n": 0}

    def forward_with_nan(self, model, batch):
        calls["n"] += 1
        out = forward(self, model, batch)
        return {**out, "loss": out["loss"] * float("nan")} if calls["n"] == call else out

    monkeypatch.setattr(ClassificationTask, "forward", forward_with_nan)


def test_nonfinite_loss_stops_naming_the_last_good_checkpoint(image_folder, tmp_path, run_cli, monkeypatch):
    _nan_at(monkeypatch, 5)
    out = tmp_path / "nan"
    status, _, err = run_cli("train", "--data", image_folder, *ARGS, "--log_every", "3", "--out", out)
    assert status == 2
    assert "non-finite training loss between steps 4 and 6" in err and "step_00000004" in err
    assert sorted(path.name for path in (out / "checkpoints").iterdir()) == ["step_00000002", "step_00000004"]


def test_skip_nonfinite_skips_and_counts(image_folder, tmp_path, run_cli, monkeypatch):
    _nan_at(monkeypatch, 5)
    out = tmp_path / "skip"
    status, stdout, err = run_cli("train", "--data", image_folder, *ARGS, "--skip_nonfinite", "true", "--out", out)
    assert status == 0, err
    assert "skipped a non-finite loss at step 5 (1 so far)" in stdout
    state = json.loads(sorted((out / "checkpoints").glob("step_*"))[-1].joinpath("trainer_state.json").read_text())
    assert state["skipped_nonfinite"] == 1 and state["step"] == 11  # 12 batches, one skipped
    assert all(torch.isfinite(value).all() for value in load_file(out / "model.safetensors").values())


GRID = [*TINY, "--batch_size", "5", "--epochs", "2", "--level", "5-95", "--checkpoint_every", "1",
        "--keep_checkpoints", "100", "--log_every", "1"]


def _epochs(run_dir) -> dict[int, int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {record["step"]: record["epoch"] for record in map(json.loads, lines) if "epoch" in record}


@pytest.mark.parametrize("grad_accum", [1, 2, 3])
def test_resume_from_every_checkpoint_is_bit_equal(grad_accum, image_folder, tmp_path, run_cli):
    """24 images in batches of 5: 5 micro-batches an epoch, so with grad_accum 2 or 3 an epoch's last
    optimizer step takes fewer micro-batches. Resumed from any checkpoint, mid-epoch or at an epoch's
    end, the final weights are bit-equal to the uninterrupted run's and epochs end at the same steps."""
    args = [*GRID, "--grad_accum", str(grad_accum)]
    full = tmp_path / "full"
    status, _, err = run_cli("train", "--data", image_folder, *args, "--out", full)
    assert status == 0, err
    expected, epochs = load_file(full / "model.safetensors"), _epochs(full)
    checkpoints = sorted((full / "checkpoints").glob("step_*"))[:-1]
    assert len(checkpoints) == 2 * -(-5 // grad_accum) - 1
    for source in checkpoints:
        resumed = tmp_path / f"resumed_{source.name}"
        shutil.copytree(source, resumed / "checkpoints" / source.name)
        status, _, err = run_cli("train", "--data", image_folder, *args, "--out", resumed, "--resume")
        assert status == 0, err
        actual = load_file(resumed / "model.safetensors")
        different = [key for key in expected if not torch.equal(actual[key], expected[key])]
        assert not different, f"resumed from {source.name}: {len(different)} tensors differ, e.g. {different[0]}"
        step = int(source.name.split("_")[1])
        assert {s: e for s, e in _epochs(resumed).items() if s > step} == {s: e for s, e in epochs.items() if s > step}
