"""A sweep interrupted between levels resumes at the next level; a resumed experiment trains no
finished stage again; both end with the files of an uninterrupted run."""

from __future__ import annotations

import json

import pytest

import codecloop.trainers.protocol as protocol
from tests.conftest import TINY

LEVELS = ["--levels", "10,50,90"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 3-class test model's weights file to sweep."""
    import timm
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "model.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=3).state_dict(), path)
    return path


def counting_evaluate(monkeypatch, interrupt_at: int | None = None) -> list[int]:
    """Patch the sweep's `evaluate` to count its calls, raising KeyboardInterrupt on call `interrupt_at`."""
    calls: list[int] = []
    evaluate = protocol.evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(protocol, "evaluate", counted)
    return calls


def test_interrupted_sweep_resumes_at_the_next_level(image_folder, weights, tmp_path, run_cli, monkeypatch):
    command = ["sweep", "--data", image_folder, *TINY, "--checkpoint", weights, *LEVELS, "--one_pass_sweep", "false"]
    assert run_cli(*command, "--out", tmp_path / "whole")[0] == 0
    calls = counting_evaluate(monkeypatch, interrupt_at=3)  # clean and 10 finish, 50 is interrupted
    with pytest.raises(KeyboardInterrupt):
        run_cli(*command, "--out", tmp_path / "cut")
    finished = json.loads((tmp_path / "cut" / "progress.json").read_text())["sweeps"]["baseline"]
    assert list(finished) == ["clean", "jpeg 10"]
    calls.clear()
    status, _, err = run_cli(*command, "--out", tmp_path / "cut", "--resume", "true")
    assert status == 0, err
    assert len(calls) == 2  # 50 and 90 only
    assert (tmp_path / "cut" / "sweep.csv").read_text() == (tmp_path / "whole" / "sweep.csv").read_text()


def test_finished_one_pass_sweep_is_not_redone(image_folder, weights, tmp_path, run_cli, monkeypatch):
    command = ["sweep", "--data", image_folder, *TINY, "--checkpoint", weights, *LEVELS, "--out", tmp_path / "run"]
    assert run_cli(*command)[0] == 0
    first = (tmp_path / "run" / "sweep.csv").read_text()
    passes = []
    monkeypatch.setattr(protocol, "sweep_one_pass", lambda *args, **kwargs: passes.append(1))
    assert run_cli(*command, "--resume", "true")[0] == 0
    assert passes == []
    assert (tmp_path / "run" / "sweep.csv").read_text() == first


def test_resume_with_changed_settings_is_refused(image_folder, weights, tmp_path, run_cli, monkeypatch):
    command = ["sweep", "--data", image_folder, *TINY, "--checkpoint", weights, *LEVELS, "--one_pass_sweep", "false",
               "--out", tmp_path / "run"]
    counting_evaluate(monkeypatch, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_cli(*command)
    record = (tmp_path / "run" / "config.yaml").read_bytes()
    status, _, err = run_cli(*command, "--resume", "true", "--crop_size", "48")
    assert status == 2
    assert "config.yaml: --resume with changed config key(s) crop_size" in err
    assert (tmp_path / "run" / "config.yaml").read_bytes() == record


def test_resumed_experiment_skips_finished_stages_and_levels(image_folder, tmp_path, run_cli, monkeypatch):
    command = ["experiment", "--data", image_folder, *TINY, "--batch_size", "6", "--levels", "10,50",
               "--retrain_max_steps", "2", "--one_pass_sweep", "false"]
    assert run_cli(*command, "--out", tmp_path / "whole")[0] == 0
    calls = counting_evaluate(monkeypatch, interrupt_at=5)  # baseline: clean, 10, 50; retrained: clean, then 10
    with pytest.raises(KeyboardInterrupt):
        run_cli(*command, "--out", tmp_path / "cut")
    progress = json.loads((tmp_path / "cut" / "progress.json").read_text())
    assert progress["stages"] == ["baseline", "retrain"]
    assert list(progress["sweeps"]["retrained"]) == ["clean"]
    trained = []
    monkeypatch.setattr(protocol, "train", lambda *args, **kwargs: trained.append(args))
    calls.clear()
    status, _, err = run_cli(*command, "--out", tmp_path / "cut", "--resume", "true")
    assert status == 0, err
    assert trained == [] and len(calls) == 2  # no training; retrained 10 and 50 only
    for name in ("sweep.csv", "recovery.csv"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "whole" / name).read_text(), name
