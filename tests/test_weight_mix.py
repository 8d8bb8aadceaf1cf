"""`--retrain_mix` / `--retrain_mix_split` (WiSE-FT): the mixed weights against a hand computation, the rule
that chooses the mix, the errors, and an experiment that chooses its mix on a calibration split."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from codecloop.trainers.weight_mix import choose_mix, mix_weights
from tests.conftest import TINY
from tests.datasets import write_image_folder


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    net[1].running_mean.normal_()
    net[1].num_batches_tracked.fill_(seed)
    return net


def test_mixed_weights_are_the_interpolation_of_both():
    original, tuned = _net(0), _net(1)
    mixed = mix_weights(original, tuned, 0.3)
    assert torch.allclose(mixed[0].weight, 0.7 * original[0].weight + 0.3 * tuned[0].weight)
    assert torch.allclose(mixed[1].running_mean, 0.7 * original[1].running_mean + 0.3 * tuned[1].running_mean)
    assert mixed[1].num_batches_tracked.item() == 1  # integer buffers: the fine-tuned one's
    assert torch.equal(mix_weights(original, tuned, 0.0)[0].weight, original[0].weight)
    assert torch.equal(mix_weights(original, tuned, 1.0)[0].weight, tuned[0].weight)
    assert not torch.equal(original[0].weight, mixed[0].weight)  # neither input is changed
    assert torch.equal(_net(1)[0].weight, tuned[0].weight)
    with pytest.raises(ValueError, match="different weights"):
        mix_weights(original, torch.nn.Sequential(torch.nn.Linear(3, 4)), 0.5)


def test_the_largest_mix_that_keeps_the_clean_metric_is_chosen():
    accuracy = {0.0: 0.90, 1.0: 0.88, 0.9: 0.89, 0.8: 0.90, 0.7: 0.91}
    mix, tried = choose_mix(lambda mix: accuracy[round(mix, 1)], higher_is_better=True)
    assert mix == 0.8 and [row["mix"] for row in tried] == [0.0, 1.0, 0.9, 0.8]
    error = {0.0: 0.20, 1.0: 0.19}  # an error metric: lower is at least as good
    assert choose_mix(lambda mix: error[round(mix, 1)], higher_is_better=False)[0] == 1.0
    worse = choose_mix(lambda mix: 0.5 if mix else 0.9, higher_is_better=True)
    assert worse[0] == 0.0 and len(worse[1]) == 11  # no mix keeps it: the original


def test_mix_settings_are_checked_before_any_work(image_folder, tmp_path, run_cli):
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_mix", "0.5",
                             "--retrain_mix_split", "calib", "--out", tmp_path / "a")
    assert status != 0 and "'retrain_mix' and 'retrain_mix_split' both set" in err
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_mix_split", "val",
                             "--out", tmp_path / "b")
    assert status != 0 and "config key 'retrain_mix_split'" in err and "not 'val'" in err
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_mix", "1.5",
                             "--out", tmp_path / "c")
    assert status != 0 and "config key 'retrain_mix'" in err
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_mix_split", "calib",
                             "--epochs", "1", "--out", tmp_path / "d")
    assert status != 0 and "the dataset has no split 'calib'" in err
    assert not (tmp_path / "d" / "baseline").exists()


def test_experiment_chooses_its_mix_on_the_calibration_split(tmp_path, run_cli):
    data = write_image_folder(tmp_path / "data", {"train": 8, "val": 5, "calib": 4})
    out = tmp_path / "run"
    status, _, err = run_cli("experiment", "--data", data, *TINY, "--batch_size", "6", "--epochs", "1",
                             "--levels", "10", "--retrain_max_steps", "3", "--retrain_lr", "0.05",
                             "--retrain_mix_split", "calib", "--bootstrap", "0", "--out", out)
    assert status == 0, err
    with (out / "mix.csv").open() as handle:
        tried = list(csv.DictReader(handle))
    chosen = [float(row["mix"]) for row in tried if row["chosen"] == "True"]
    assert len(chosen) == 1 and tried[0]["mix"] == "0.0"
    reference = float(tried[0]["metric"])
    assert all(float(row["metric"]) < reference for row in tried[1:-1])  # every larger mix tried lost on calib
    mix = chosen[0]
    assert mix == 0.0 or float(tried[-1]["metric"]) >= reference
    before, tuned = load_file(out / "baseline" / "model.safetensors"), load_file(out / "retrain" / "model.safetensors")
    mixed = load_file(out / "mixed" / "model.safetensors")
    for name, value in mixed.items():
        if value.is_floating_point():
            assert torch.allclose(value, before[name] + mix * (tuned[name] - before[name]), atol=1e-6), name
    assert f"Weights: original + {mix:g} x (fine-tuned - original), the largest mix" in (out / "report.md").read_text()
