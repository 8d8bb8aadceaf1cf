"""A run's record stays true: `train --checkpoint` starts from those weights or is refused, a resume with
other settings is refused naming them, a refused command writes nothing, numeric keys have ranges."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory, run_cli_module):
    out = tmp_path_factory.mktemp("record") / "run"
    status, _, err = run_cli_module("train", "--data", image_folder, *TINY, "--max_steps", "2", "--out", out)
    assert status == 0, err
    return out


def _refused(run_cli, *args: str, message: str) -> None:
    status, _, err = run_cli(*args)
    assert status == 2, err
    assert message in err, err


def test_train_starts_from_its_checkpoint(trained, image_folder, tmp_path, run_cli):
    """With no step to take, the saved model is the checkpoint's weights, tensor for tensor."""
    out = tmp_path / "from_checkpoint"
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--epochs", "0", "--checkpoint", trained,
                             "--out", out)
    assert status == 0, err
    expected, saved = load_file(trained / "model.safetensors"), load_file(out / "model.safetensors")
    assert saved.keys() == expected.keys() and all(torch.equal(saved[key], expected[key]) for key in saved)
    fresh = tmp_path / "fresh"
    assert run_cli("train", "--data", image_folder, *TINY, "--epochs", "0", "--out", fresh)[0] == 0
    scratch = load_file(fresh / "model.safetensors")
    assert any(not torch.equal(scratch[key], expected[key]) for key in scratch if key.endswith("weight"))


@pytest.mark.parametrize("kind", ["missing", "text", "other model", "other task"])
def test_train_checkpoint_that_cannot_serve_is_refused_before_anything_is_written(kind, trained, image_folder,
                                                                                  tmp_path, run_cli):
    checkpoint, message = tmp_path / "nowhere.safetensors", "does not exist"
    if kind == "text":
        checkpoint.write_text("not weights\n")
        message = str(checkpoint)
    elif kind == "other model":
        checkpoint = trained
        message = "keys"
    elif kind == "other task":
        checkpoint = tmp_path / "seg"
        checkpoint.mkdir()
        (checkpoint / "config.yaml").write_text(yaml.safe_dump({"task": "segmentation"}))
        (checkpoint / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes())
        message = "comes from a segmentation run"
    out = tmp_path / "run"
    model = ["--model", "resnet18"] if kind == "other model" else []
    _refused(run_cli, "train", "--data", image_folder, *TINY, *model, "--checkpoint", checkpoint, "--out", out,
             message=message)
    assert not out.exists()


def test_resume_with_a_changed_hyper_parameter_is_refused_and_the_record_kept(trained, image_folder, run_cli):
    record = (trained / "config.yaml").read_bytes()
    _refused(run_cli, "train", "--data", image_folder, *TINY, "--max_steps", "2", "--lr", "0.5", "--out", trained,
             "--resume", message="--resume with changed config key(s) lr")
    _refused(run_cli, "experiment", "--data", image_folder, *TINY, "--max_steps", "2", "--lr", "0.5", "--out",
             trained, "--resume", message="--resume with changed config key(s) lr")
    assert (trained / "config.yaml").read_bytes() == record


def test_a_new_run_refused_over_an_old_one_leaves_its_record(trained, image_folder, run_cli):
    record = (trained / "config.yaml").read_bytes()
    _refused(run_cli, "train", "--data", image_folder, *TINY, "--model", "resnet18", "--out", trained,
             message="already holds a training run")
    assert (trained / "config.yaml").read_bytes() == record


@pytest.mark.parametrize(("flag", "value", "range_text"), [
    ("log_every", "0", ">= 1"), ("lr", "-1.0", "> 0"), ("num_threads", "0", ">= 1"),
    ("checkpoint_every", "-3", ">= 0"), ("keep_checkpoints", "-1", ">= 1"), ("momentum", "1.5", "0..1"),
    ("batch_size", "0", ">= 1"), ("min_scale", "0.0", "> 0, <= 1"), ("max_image_pixels", "0", ">= 1"),
])
def test_numeric_keys_have_ranges(flag, value, range_text, image_folder, tmp_path, run_cli):
    out = tmp_path / "run"
    _refused(run_cli, "train", "--data", image_folder, *TINY, f"--{flag}", value, "--out", out,
             message=f"config key '{flag}': {value} is outside its range ({range_text})")
    assert not out.exists()


def test_a_boolean_is_not_a_number(image_folder, tmp_path, run_cli):
    config = tmp_path / "run.yaml"
    config.write_text("batch_size: true\n")
    _refused(run_cli, "train", "--data", image_folder, "--config", config, *TINY, "--out", tmp_path / "run",
             message="config key 'batch_size': True is a boolean, not a number")
