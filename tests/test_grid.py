"""`codecloop experiment --grid`: expansion and names, the combined report, skip / resume, bad cells."""

from __future__ import annotations

import csv
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import timm
import yaml

from codecloop.dali_pipes.codecs import get_codec
from codecloop.tasks import get_task_class
from codecloop.tasks.dense_models import check_model_name
from codecloop.trainers.grid import cell_config, cell_name, expand, load_grid

GRIDS = sorted((Path(__file__).parents[1] / "launch" / "grids").glob("*.yaml"))
TINY_BASE = {"model": "test_efficientnet", "crop_size": 32, "resize_size": 40, "wandb": "disabled", "progress": False,
             "num_threads": 2, "epochs": 0, "retrain_max_steps": 1, "levels": "10,50", "batch_size": 8}
CELLS = ["retrain_level=5-95", "retrain_level=10"]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _write_grid(path: Path, **parts) -> Path:
    path.write_text(yaml.safe_dump(parts, sort_keys=False))
    return path


def test_expand_crosses_every_cells_entry_with_every_grid_point():
    grid = {"model": ["a", "b"], "codec": ["jpeg", "h264"]}
    assert expand(grid, []) == [{"model": "a", "codec": "jpeg"}, {"model": "a", "codec": "h264"},
                                {"model": "b", "codec": "jpeg"}, {"model": "b", "codec": "h264"}]
    assert expand({"codec": ["jpeg", "h264"]}, [{"model": "a"}, {"model": "b", "lr": 0.1}]) == [
        {"model": "a", "codec": "jpeg"}, {"model": "a", "codec": "h264"},
        {"model": "b", "lr": 0.1, "codec": "jpeg"}, {"model": "b", "lr": 0.1, "codec": "h264"}]
    assert expand({}, [{"model": "a"}]) == [{"model": "a"}]


def test_cell_names_are_stable_and_filesystem_safe():
    assert cell_name({"model": "unet_resnet18", "codec": "jpeg"}) == "model=unet_resnet18,codec=jpeg"
    assert cell_name({"data": "/data/my voc", "freeze_bn": True, "levels": [5, 10]}) == \
        "data=_data_my_voc,freeze_bn=true,levels=5+10"
    assert cell_name({}) == "base"
    long = {"data": "x" * 300}
    assert cell_name(long) == cell_name(dict(long)) and len(cell_name(long)) == 120
    assert cell_name(long) != cell_name({"data": "x" * 299})


def test_load_grid_layers_config_base_cells_and_flags(tmp_path):
    (tmp_path / "base.yaml").write_text("task: segmentation\nepochs: 7\nlr: 0.01\n")
    path = _write_grid(tmp_path / "g.yaml", config="base.yaml", base={"epochs": 3, "batch_size": 4},
                       cells=[{"model": "unet_resnet18", "family": "encoder-decoder"}, {"model": "fcn_resnet50"}],
                       grid={"codec": ["jpeg", "h264"]})
    grid = load_grid(path, flags={"lr": 0.5})
    assert [cell.name for cell in grid.cells] == ["model=unet_resnet18,codec=jpeg", "model=unet_resnet18,codec=h264",
                                                  "model=fcn_resnet50,codec=jpeg", "model=fcn_resnet50,codec=h264"]
    assert [cell.name for cell in load_grid(path, flags={"lr": 0.5}).cells] == [cell.name for cell in grid.cells]
    assert [cell.family for cell in grid.cells] == ["encoder-decoder", "encoder-decoder", None, None]
    config = cell_config(grid.cells[1], tmp_path / "out")
    assert (config.task, config.model, config.codec, config.epochs, config.batch_size, config.lr) == \
        ("segmentation", "unet_resnet18", "h264", 3, 4, 0.5)
    assert config.out == str(tmp_path / "out" / "model=unet_resnet18,codec=h264") and config.resume


def test_a_cell_setting_another_task_s_key_is_refused_naming_both(tmp_path):
    path = _write_grid(tmp_path / "g.yaml", base={"task": "segmentation"},
                       cells=[{"model": "unet_resnet18"}, {"model": "unet_resnet18", "normalize": "imagenet"}])
    grid = load_grid(path)
    assert cell_config(grid.cells[0], tmp_path).task == "segmentation"
    with pytest.raises(ValueError, match="config key 'normalize' is not taken by task 'segmentation'"):
        cell_config(grid.cells[1], tmp_path)


@pytest.mark.parametrize("parts, flags, message", [
    ({"grid": {"lr": [0.1]}, "modle": "x"}, None, "unknown key 'modle'"),
    ({"base": {"epoch": 1}, "grid": {"lr": [0.1]}}, None, "base: unknown config key 'epoch'"),
    ({"grid": {"lr": 0.1}}, None, "grid key 'lr' needs a non-empty list"),
    ({"grid": {"lr": [0.1]}, "cells": [{"lr": 0.2}]}, None, "cells[0] sets 'lr', which `grid` varies"),
    ({"grid": {"lr": [0.1, 0.2]}}, {"lr": 0.3}, "--lr is varied by grid file"),
    ({"grid": {"lr": [0.1, 0.1]}}, None, "2 cells get the name 'lr=0.1'"),
    ({"base": {"out": "x"}, "grid": {"lr": [0.1]}}, None, "'out' is set by the grid"),
    ({"base": {"lr": 0.1}}, None, "no cells"),
])
def test_grid_file_errors_name_the_key(tmp_path, parts, flags, message):
    with pytest.raises(ValueError, match="grid file|--lr") as error:
        load_grid(_write_grid(tmp_path / "g.yaml", **parts), flags=flags)
    assert message in str(error.value)


@pytest.mark.parametrize("path", GRIDS, ids=[path.name for path in GRIDS])
def test_shipped_grids_expand_to_valid_configs(path, tmp_path):
    assert "codecloop experiment --grid launch/grids/" + path.name in path.read_text()
    grid = load_grid(path)
    assert len(grid.cells) >= 2
    for cell in grid.cells:
        config = cell_config(cell, tmp_path)
        task_class = get_task_class(config.task)
        assert get_codec(config.codec).serves(task_class.media, bool(config.ladder)), cell.name
        config.validate()
        if config.task == "classification":
            assert timm.is_model(config.model), cell.name
        else:
            check_model_name(config.task, config.model)


@pytest.fixture(scope="module")
def finished_grid(image_folder, tmp_path_factory, run_cli_module) -> tuple[Path, str]:
    """Two tiny cells (retraining quality 5-95 and 10) run in this process; returns OUT and stdout."""
    root = tmp_path_factory.mktemp("grid")
    path = _write_grid(root / "tiny.yaml", base=TINY_BASE, cells=[{"family": "tiny-cnn"}],
                       grid={"retrain_level": ["5-95", "10"]})
    status, out, err = run_cli_module("experiment", "--grid", path, "--data", image_folder, "--out", root / "out")
    assert status == 0, err
    return root / "out", out


def test_grid_writes_combined_tables(finished_grid):
    out, stdout = finished_grid
    assert "running cell 1/2: retrain_level=5-95" in stdout and "running cell 2/2: retrain_level=10" in stdout
    rows = _rows(out / "grid.csv")
    assert list(rows[0]) == ["cell", "family", "retrain_level", "task", "codec", "stage", "level", "metric", "value",
                             "kept_pct", "recovery_pct"]
    levels = ("clean", "10", "50")
    assert [(row["cell"], row["stage"], row["level"]) for row in rows] == [
        (cell, stage, level) for cell in CELLS for stage in ("baseline", "retrained") for level in levels]
    assert all(row["family"] == "tiny-cnn" and row["metric"] == "top1" for row in rows)
    recovery = _rows(out / "grid_recovery.csv")
    assert [(row["cell"], row["level"]) for row in recovery] == [
        (cell, level) for cell in CELLS for level in levels[1:]]
    for cell in CELLS:
        config = yaml.safe_load((out / cell / "config.yaml").read_text())
        assert config["retrain_level"] == cell.split("=")[1] and config["model"] == "test_efficientnet"
        sweep = _rows(out / cell / "sweep.csv")
        assert [float(row["value"]) for row in rows if row["cell"] == cell] == [float(row["top1"]) for row in sweep]
        clean = float(sweep[0]["top1"])
        assert [float(row["kept_pct"]) for row in rows if row["cell"] == cell] == pytest.approx(
            [float(row["top1"]) / clean * 100 for row in sweep])
        own = _rows(out / cell / "recovery.csv")
        mine = [row for row in recovery if row["cell"] == cell]
        assert [row["recovery_pct"] for row in mine] == [row["recovery_pct"] for row in own]
        assert [float(row["baseline"]) for row in mine] == [float(row["baseline_top1"]) for row in own]
    report = (out / "grid.md").read_text()
    assert "## classification, JPEG (top1)" in report and "Most resilient first" in report
    assert report.count("| retrain_level=") == 2 and "| tiny-cnn | 2 |" in report
    assert (out / "grid.png").stat().st_size > 1000
    assert not (out / "grid_failures.csv").exists()


def test_rerun_skips_finished_cells(finished_grid, image_folder, run_cli, monkeypatch):
    out, _ = finished_grid
    monkeypatch.setattr("codecloop.trainers.grid.run_command", pytest.fail)
    before = {cell: (out / cell / "recovery.csv").stat().st_mtime_ns for cell in CELLS}
    status, stdout, err = run_cli("experiment", "--grid", out.parent / "tiny.yaml", "--data", image_folder,
                                  "--out", out)
    assert status == 0, err
    for cell in CELLS:
        assert f"skipping cell {cell}: finished" in stdout
        assert (out / cell / "recovery.csv").stat().st_mtime_ns == before[cell]
    assert len(_rows(out / "grid.csv")) == 12


def test_changed_settings_are_not_mixed_with_finished_cells(finished_grid, image_folder, tmp_path, run_cli,
                                                           monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(finished_grid[0], out)
    monkeypatch.setattr("codecloop.trainers.grid.run_command", pytest.fail)
    status, _, err = run_cli("experiment", "--grid", finished_grid[0].parent / "tiny.yaml", "--data", image_folder,
                             "--lr", "0.5", "--out", out)
    assert status == 2
    assert f"cell {CELLS[0]}: error:" in err and "lr: 0.001 -> 0.5" in err
    assert [row["cell"] for row in _rows(out / "grid_failures.csv")] == CELLS
    assert not (out / "grid.csv").exists() and "## Failed cells" in (out / "grid.md").read_text()


def test_interrupted_cell_resumes(finished_grid, image_folder, tmp_path, run_cli):
    out = tmp_path / "out"
    shutil.copytree(finished_grid[0], out)
    (out / CELLS[1] / "recovery.csv").unlink()  # as if stopped after retraining: without resume it is refused
    status, stdout, err = run_cli("experiment", "--grid", finished_grid[0].parent / "tiny.yaml", "--data",
                                  image_folder, "--out", out)
    assert status == 0, err
    assert f"skipping cell {CELLS[0]}" in stdout and f"resuming cell 1/1: {CELLS[1]}" in stdout
    assert _rows(out / CELLS[1] / "recovery.csv") == _rows(finished_grid[0] / CELLS[1] / "recovery.csv")


def test_invalid_cells_are_reported_and_the_others_run(image_folder, tmp_path, run_cli):
    missing = str(tmp_path / "missing")
    path = _write_grid(tmp_path / "bad.yaml", base={**TINY_BASE, "data": str(image_folder)}, cells=[
        {"model": "no_such_model"}, {"model": "test_efficientnet", "epoch": 2},
        {"model": "test_efficientnet", "data": missing},
        {"model": "test_efficientnet", "retrain_level": "0-200"}, {"model": "test_efficientnet"}])
    status, stdout, err = run_cli("experiment", "--grid", path, "--out", tmp_path / "out")
    assert status == 2
    assert "cell model=no_such_model: error: model 'no_such_model'" in err
    assert "cell model=test_efficientnet,epoch=2: error: unknown config key 'epoch'" in err
    assert "dataset path" in err and "config key 'retrain_level'" in err
    assert "running cell 1/1: model=test_efficientnet" in stdout
    assert (tmp_path / "out" / "model=test_efficientnet" / "recovery.csv").is_file()
    failures = _rows(tmp_path / "out" / "grid_failures.csv")
    assert [row["cell"] for row in failures] == [
        "model=no_such_model", "model=test_efficientnet,epoch=2",
        cell_name({"model": "test_efficientnet", "data": missing}),
        "model=test_efficientnet,retrain_level=0-200"]
    assert {row["cell"] for row in _rows(tmp_path / "out" / "grid.csv")} == {"model=test_efficientnet"}
    assert "## Failed cells" in (tmp_path / "out" / "grid.md").read_text()


def test_unknown_grid_file_key_stops_before_any_cell(tmp_path, run_cli):
    path = _write_grid(tmp_path / "g.yaml", base=TINY_BASE, grid={"lr": [0.1]}, celss=[{"lr": 0.2}])
    status, stdout, err = run_cli("experiment", "--grid", path, "--out", tmp_path / "out")
    assert status == 2 and "unknown key 'celss'" in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_experiment_help_explains_grid(capsys):
    from codecloop.launch.cli import main

    with pytest.raises(SystemExit):
        main(["experiment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--grid FILE.yaml" in text and "--launcher" in text and "OUT/<cell name>/" in text


@pytest.mark.multiprocess
def test_launcher_runs_each_cell_as_a_process(image_folder, tmp_path, run_cli):
    path = _write_grid(tmp_path / "one.yaml", base=TINY_BASE, grid={"retrain_level": ["10"]},
                       launcher=shlex.quote(sys.executable))
    status, stdout, err = run_cli("experiment", "--grid", path, "--data", image_folder, "--out", tmp_path / "out")
    assert status == 0, err
    cell = tmp_path / "out" / "retrain_level=10"
    assert "-m codecloop experiment --config" in stdout
    assert yaml.safe_load((cell / "config-in.yaml").read_text())["resume"] is True
    assert (cell / "recovery.csv").is_file() and len(_rows(tmp_path / "out" / "grid.csv")) == 6
