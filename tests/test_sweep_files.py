"""W&B sweep files: every parameter of every shipped file is a codecloop config key whose every value
the real CLI parser accepts, as the W&B agent would pass it; a bad file fails naming the culprit."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from codecloop.launch.cli import build_parser, config_from_args
from codecloop.launch.sweep_files import check_sweep_file, main
from codecloop.trainers.config import coerce

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((ROOT / "launch" / "sweeps").glob("*.yaml"))
STUDY_TASKS = {"classification", "detection", "segmentation", "pose", "action", "depth"}


@pytest.fixture
def at_root(monkeypatch):
    """The repository root as working directory, where the agent is started (configs by relative path)."""
    monkeypatch.chdir(ROOT)


def agent_command(sweep: dict, point: dict) -> list[str]:
    """The command a W&B agent runs for one set of parameter values, built with wandb's own
    helpers as `wandb agent` does (``${args}`` -> ``--key=value``, ``${envvar:NAME}`` substituted)."""
    utils = pytest.importorskip("wandb.sdk.launch.sweeps.utils")
    variables = utils.create_sweep_command_args({"args": {key: {"value": value} for key, value in point.items()}})
    variables.update(program=[sweep["program"]], env=["/usr/bin/env"])
    command = []
    for word in map(str, utils.create_sweep_command(list(sweep["command"]))):
        command += (variables.get(word[2:-1]) or []) if word.startswith("${") and word.endswith("}") else [word]
    return command


def test_the_study_grids_are_shipped():
    commands = [yaml.safe_load(path.read_text())["command"] for path in SWEEP_FILES]
    tasks = {Path(command[command.index("--config") + 1]).stem for command in commands}
    assert tasks == STUDY_TASKS
    parameters = {key for path in SWEEP_FILES for key in yaml.safe_load(path.read_text())["parameters"]}
    assert parameters >= {"retrain_level", "retrain_level", "model"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda path: path.stem)
def test_every_grid_point_runs_codecloop(path, at_root, monkeypatch, tmp_path):
    sweep = yaml.safe_load(path.read_text())
    checked = check_sweep_file(path)
    parameters = sweep["parameters"]
    assert len(checked) == 1 + sum(len(spec["values"]) for spec in parameters.values())
    paths = {name: str(tmp_path / name.lower()) for name in ("CODECLOOP_DATA", "CODECLOOP_LADDER", "CODECLOOP_SPLITS")}
    for name, value in paths.items():
        monkeypatch.setenv(name, value)
    assert sweep["method"] == "grid"
    for values in itertools.product(*(spec["values"] for spec in parameters.values())):
        point = dict(zip(parameters, values))
        command = agent_command(sweep, point)
        assert command[:3] == ["/usr/bin/env", "codecloop", "experiment"]
        config = config_from_args(build_parser().parse_args(command[2:]))
        assert config.data == paths["CODECLOOP_DATA"]
        if config.task == "action":
            assert (config.ladder, config.splits) == (paths["CODECLOOP_LADDER"], paths["CODECLOOP_SPLITS"])
        for key, value in point.items():
            assert getattr(config, key) == coerce(key, value), key
        check_model(config.task, config.model)


def check_model(task: str, model: str) -> None:
    """Raise unless `model` is a model name `task` builds (the Config itself does not know models)."""
    if task == "classification":
        import timm

        assert timm.is_model(model), model
    elif task == "action":
        from codecloop.tasks.action import VIDEO_MODELS

        assert model in VIDEO_MODELS, model
    else:
        from codecloop.tasks.dense_models import check_model_name

        check_model_name(task, model)


def write_sweep(tmp_path: Path, parameters: dict, **changes) -> Path:
    sweep = {"program": "codecloop", "method": "grid", "parameters": parameters,
             "command": ["${env}", "${program}", "experiment", "--config", "launch/configs/classification.yaml",
                         "--data=${envvar:CODECLOOP_DATA}", "${args}"], **changes}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_unknown_parameter_is_named(tmp_path, at_root):
    path = write_sweep(tmp_path, {"retrain_level": {"values": ["5-95"]}, "retrain_levl": {"values": ["5-50"]}})
    with pytest.raises(ValueError, match=r"sweep\.yaml: parameter 'retrain_levl' is not a codecloop config key "
                                         r"\(did you mean 'retrain_level'\?\)"):
        check_sweep_file(path)
    path = write_sweep(tmp_path, {"learning_rate": {"min": 0.001, "max": 0.1}})
    with pytest.raises(ValueError, match="parameter 'learning_rate' is not a codecloop config key"):
        check_sweep_file(path)


def test_bad_value_is_named_with_the_parameter(tmp_path, at_root):
    path = write_sweep(tmp_path, {"retrain_level": {"values": ["5-95", "5-200"]}})
    with pytest.raises(ValueError, match=r"parameter 'retrain_level' value '5-200': config key 'retrain_level'"):
        check_sweep_file(path)
    path = write_sweep(tmp_path, {"optimizer": {"values": ["adamw", "lamb"]}})
    with pytest.raises(ValueError, match=r"parameter 'optimizer' value 'lamb': .*invalid choice: 'lamb'"):
        check_sweep_file(path)
    path = write_sweep(tmp_path, {"epochs": {"min": -1, "max": 3}})
    with pytest.raises(ValueError,
                       match=r"parameter 'epochs' value -1: config key 'epochs': -1 is outside its range \(>= 0\)"):
        check_sweep_file(path)


@pytest.mark.parametrize("changes, message", [
    ({"program": "train.py"}, "`program` must be codecloop"),
    ({"command": ["${env}", "${program}", "experiment", "${args_no_hyphens}"]}, r"must be a list holding \$\{args\}"),
    ({"command": ["${env}", "python", "${program}", "${args}"]}, "must run codecloop"),
    ({"command": ["${program}", "demo", "${args}"]}, "must name a subcommand"),
    ({"command": ["${program}", "experiment", "--config", "no/such.yaml", "${args}"]}, "no/such.yaml does not exist"),
])
def test_bad_command_is_explained(tmp_path, at_root, changes, message):
    with pytest.raises(ValueError, match=message):
        check_sweep_file(write_sweep(tmp_path, {"lr": {"values": [0.1]}}, **changes))


def test_module_entry_point(tmp_path, at_root, capsys):
    assert main([str(SWEEP_FILES[0])]) == 0
    assert "ok (" in capsys.readouterr().out
    assert main([str(write_sweep(tmp_path, {"batch": {"values": [8]}}))]) == 2
    assert "parameter 'batch' is not a codecloop config key" in capsys.readouterr().err
