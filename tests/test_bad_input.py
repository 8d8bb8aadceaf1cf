"""Bad input stops before any work, with a message naming the culprit."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY


def _assert_fails(run_cli, out, *args, message):
    status, _, err = run_cli(*args, "--out", out)
    assert status == 2, err
    assert message in err, err
    assert not (out / "metrics.jsonl").exists()


def test_missing_dataset_path(run_cli, tmp_path):
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", tmp_path / "nowhere", *TINY,
                  message=f"dataset path {tmp_path / 'nowhere'} does not exist")


def test_empty_split(run_cli, tmp_path, image_folder):
    root = tmp_path / "data"
    shutil.copytree(image_folder / "train", root / "train")
    (root / "val").mkdir()
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", root, *TINY,
                  message=f"dataset split {root / 'val'} has no class folders")


def test_empty_class_folder(run_cli, tmp_path, image_folder):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "train" / "empty_class").mkdir()
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", root, *TINY,
                  message=f"class folder {root / 'train' / 'empty_class'} holds no image files")


def test_checkpoint_from_another_model(run_cli, tmp_path, image_folder):
    weights = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 8), "fc.bias": torch.zeros(3)}, str(weights))
    _assert_fails(run_cli, tmp_path / "run", "sweep", "--data", image_folder, *TINY, "--checkpoint", weights,
                  message=f"{weights}: checkpoint from another model")


def test_unknown_config_key_in_yaml(run_cli, tmp_path, image_folder):
    config = tmp_path / "run.yaml"
    config.write_text("level: 30\nlearning_rate: 0.1\n")
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", image_folder, "--config", config,
                  message="unknown key 'learning_rate'")


def test_unknown_flag_is_named(tmp_path, image_folder):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "codecloop", "train", "--data", str(image_folder),
                             "--learning_rate=0.1"], capture_output=True, text=True)
    assert result.returncode == 2 and "--learning_rate=0.1" in result.stderr


@pytest.mark.parametrize(("codec", "key", "value"), [
    ("jpeg", "level", "0"), ("jpeg", "level", "101"), ("jpeg", "eval_level", "5-250"), ("jpeg", "retrain_level", "0,5"),
    ("jpeg", "levels", "5,0"), ("h264", "level", "60"), ("h264", "levels", "18,52")])
def test_level_outside_the_codecs_range(run_cli, tmp_path, image_folder, codec, key, value):
    bad = value.split(",")[-1] if key == "levels" else value.split("-")[-1].split(",")[0]
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", image_folder, *TINY, "--codec", codec,
                  f"--{key}={value}", message=f"config key '{key}'")
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--codec", codec, f"--{key}={value}")
    scale = {"jpeg": "JPEG quality", "h264": "H.264 CRF"}[codec]
    assert f"{scale} " in err and f"{scale.split()[1]} {bad} is outside" in err, err


def test_unknown_codec_lists_the_registered_ones(run_cli, tmp_path, image_folder):
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", image_folder, *TINY, "--codec", "heic",
                  message="config key 'codec': unknown codec 'heic'; known codecs: jpeg, h264, hevc, av1, webp, avif")


def test_bad_typed_value(run_cli, tmp_path, image_folder):
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", image_folder, *TINY, "--batch_size", "many",
                  message="config key 'batch_size'")


def test_unknown_model(run_cli, tmp_path, image_folder):
    _assert_fails(run_cli, tmp_path / "run", "train", "--data", image_folder, *TINY, "--model", "resnet9000",
                  message="model 'resnet9000'")
