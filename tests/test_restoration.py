"""`--retrain_loss features`: the loss against a hand computation, what trains and what stays, the errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from codecloop.trainers.restoration import FeatureRestoration
from tests.conftest import TINY


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(5 * 6 * 6, 2))


def test_loss_is_the_normalized_error_of_the_layer_output():
    reference, student = _net(), _net()
    with torch.no_grad():
        student[0].weight.add_(0.1)
    clean, compressed = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    objective = FeatureRestoration(reference, "2")
    loss = objective(student, {"image": compressed, "clean_image": clean})["loss"]
    target = reference[2](reference[1](reference[0](clean)))
    restored = student[2](student[1](student[0](compressed)))
    expected = ((restored - target) ** 2).mean() / (target ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert objective(reference, {"image": clean, "clean_image": clean})["loss"].item() == pytest.approx(0, abs=1e-12)
    assert not student[2]._forward_hooks and not reference[2]._forward_hooks


def test_only_the_front_end_trains():
    model = _net()
    objective = FeatureRestoration(model, "2")
    assert objective.front_end(model) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    objective.prepare(model)
    assert [name for name, p in model.named_parameters() if p.requires_grad] == objective.front_end(model)
    model.train()
    objective.fixed_in_eval()
    assert [module.training for module in model] == [True, True, True, False, False]
    objective(model, {"image": torch.rand(2, 3, 6, 6), "clean_image": torch.rand(2, 3, 6, 6)})["loss"].backward()
    assert model[0].weight.grad is not None and model[4].weight.grad is None


def test_unknown_layer_is_named():
    with pytest.raises(ValueError, match=r"retrain_layer.*no module 'blocks\.9'.*top-level modules: 0, 1, 2"):
        FeatureRestoration(_net(), "blocks.9")
    with pytest.raises(ValueError, match="module '1' has no parameter"):
        FeatureRestoration(_net(), "1").front_end(_net())


def test_experiment_restores_features(image_folder, tmp_path, run_cli):
    out = tmp_path / "run"
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--batch_size", "6", "--epochs", "1",
                             "--levels", "10", "--retrain_max_steps", "3", "--retrain_lr", "0.05", "--retrain_loss",
                             "features", "--retrain_layer", "blocks.0", "--bootstrap", "0", "--out", out)
    assert status == 0, err
    before, after = load_file(out / "baseline" / "model.safetensors"), load_file(out / "retrain" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("conv_stem", "bn1", "blocks.0")) for name in changed), changed
    assert "restoring the original network's `blocks.0` output" in (out / "report.md").read_text()
    with (out / "recovery.csv").open() as handle:
        assert [row["level"] for row in csv.DictReader(handle)] == ["10"]


def test_features_need_a_layer_and_a_clean_view(image_folder, tmp_path, run_cli):
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_loss", "features",
                             "--out", tmp_path / "a")
    assert status != 0 and "config key 'retrain_layer'" in err
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_loss", "features",
                             "--retrain_layer", "head", "--out", tmp_path / "b")
    assert status != 0 and "no module 'head'" in err
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--retrain_layer", "blocks.0",
                             "--out", tmp_path / "c")
    assert status != 0 and "only --retrain_loss features restores" in err


def test_features_refused_for_a_task_without_clean_view(tmp_path):
    from codecloop.trainers.protocol import run_experiment
    from codecloop.trainers.config import Config

    class NoClean:
        name, clean_view = "segmentation", False

    config = Config(retrain_loss="features", retrain_layer="x", wandb="disabled")
    with pytest.raises(ValueError, match="'retrain_loss': features needs the clean copy.*segmentation"):
        run_experiment(config, NoClean(), Path(tmp_path), None)
