"""The paper protocol: train, sweep a model over codec levels, retrain on compressed data, recover.

Each command writes into one run directory:

| file            | written by        | holds                                                  |
| --------------- | ----------------- | ------------------------------------------------------ |
| ``config.yaml`` | every command     | the resolved configuration                             |
| ``metrics.jsonl``| train stages     | training / evaluation metrics per step                 |
| ``sweep.csv``   | sweep, experiment | codec, level, model, every metric, sample count        |
| ``sweep.png``   | sweep             | primary metric against the level, clean dashed          |
| ``recovery.csv``| experiment        | per level: clean, baseline, retrained, recovery (%)    |
| ``experiment.png`` | experiment     | baseline and retrained curves on one plot              |
| ``report.md``   | sweep, experiment | the tables above in Markdown                           |
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from tasks import get_task_class
from trainers.checkpoint import ensure_fresh, load_model_weights
from trainers.config import Config, eval_spec, load_yaml, level_spec, retrain_changes, sweep_levels, training_spec
from trainers.loop import (Evaluation, Trainer, build_batches, channels_last, evaluate, pipeline_runtime,
                           uses_channels_last)
from trainers.report import CLEAN, markdown_table, plot_levels, read_csv, recovery_rows, write_csv, write_text

BASELINE, RETRAINED = "baseline", "retrained"
CODEC_NAMES = {"jpeg": "JPEG", "h264": "H.264"}


def task_options(config: Config, task_class: type) -> dict[str, Any]:
    """The config keys `task_class`'s constructor takes, with their values; unset (None) keys and the
    rest are dropped, so the task's own defaults apply."""
    accepted = inspect.signature(task_class.__init__).parameters
    values = config.to_dict()
    return {key: values[key] for key in accepted if values.get(key) is not None}


def make_task(config: Config):
    """The task named by ``config.task``, built from the config keys it takes."""
    if not config.data:
        raise ValueError("config key 'data': a dataset root is required (--data DIR)")
    task_class = get_task_class(config.task)
    if config.codec not in task_class.codecs:
        raise ValueError(f"config key 'codec': task {config.task!r} takes {' or '.join(task_class.codecs)}, "
                         f"not {config.codec}")
    return task_class(**task_options(config, task_class))


def load_model(config: Config, task) -> torch.nn.Module:
    """The task's model, with ``config.checkpoint`` loaded when given (errors name the file)."""
    model = task.create_model()
    if config.checkpoint:
        load_model_weights(model, config.checkpoint)
    return model


def train(config: Config, task, run_dir: Path, accelerator: Accelerator, model=None) -> torch.nn.Module:
    """Train with the config's codec spec into `run_dir`; returns the trained model."""
    trainer = Trainer(config, task, run_dir, accelerator, training_spec(config), eval_spec(config), model=model)
    return trainer.run()


def sweep(
    config: Config, task, model: torch.nn.Module, accelerator: Accelerator, label: str = BASELINE
) -> list[dict[str, Any]]:
    """Evaluate `model` on the val split clean and at every level of the codec's sweep."""
    index = task.sample_index("val")
    model = model.to(accelerator.device)
    memory_last = uses_channels_last(config, task)
    if memory_last:
        model = model.to(memory_format=torch.channels_last)
    levels: Sequence[int | None] = [None, *sweep_levels(config)]
    one_pass = None
    if config.one_pass_sweep and config.codec == "jpeg" and hasattr(task, "sweep_batches"):
        one_pass = task.sweep_batches(index, list(levels[1:]), pipeline_runtime(config, accelerator, False))
    if one_pass is not None:
        results = sweep_one_pass(model, task, one_pass, accelerator, memory_last, config.progress, label)
    else:
        results = {}
        for level in tqdm(levels, desc=f"sweep {label}",
                          disable=not (accelerator.is_main_process and config.progress)):
            batches = build_batches(config, task, index, accelerator, False, level_spec(config, level))
            results[level] = evaluate(model, task, batches, accelerator, memory_last)
    return [{"codec": "none" if level is None else config.codec, "level": CLEAN if level is None else level,
             "model": label, **results[level]} for level in levels]


@torch.no_grad()
def sweep_one_pass(model: torch.nn.Module, task, batches, accelerator: Accelerator, memory_last: bool,
                   progress: bool, label: str) -> dict[int | None, dict[str, float]]:
    """Metrics per JPEG level from batches holding every level's view (`SweepBatches`)."""
    model.eval()
    evaluations = {level: Evaluation(task) for level in batches.levels}
    for batch in tqdm(batches, desc=f"sweep {label} (one pass)", disable=not (accelerator.is_main_process and progress)):
        views = batch.pop("views")
        if len(batch["index"]) == 0:
            continue
        for level, image in views.items():
            view = {**batch, "image": image, "jpeg_quality": torch.full_like(batch["index"], level or 0)}
            if memory_last:
                view = channels_last(view)
            with accelerator.autocast():
                evaluations[level].add(task.predict(model, view), view)
    return {level: evaluation.result(accelerator) for level, evaluation in evaluations.items()}


def write_sweep(rows: list[dict[str, Any]], run_dir: Path, metric: str) -> None:
    """``sweep.csv``, ``sweep.png`` and ``report.md`` for one model's sweep."""
    write_csv(rows, run_dir / "sweep.csv")
    codec = codec_of(rows)
    plot_levels({rows[0]["model"]: rows}, metric, run_dir / "sweep.png", codec)
    write_text(run_dir / "report.md", f"# {CODEC_NAMES[codec]} sweep\n\n{markdown_table(rows)}\n\n![sweep](sweep.png)\n")


def run_sweep(config: Config, task, run_dir: Path, accelerator: Accelerator) -> list[dict[str, Any]]:
    """`codecloop sweep`: one model over the levels; files written by the main process."""
    rows = sweep(config, task, load_model(config, task), accelerator)
    if accelerator.is_main_process:
        write_sweep(rows, run_dir, task.primary_metric)
    return rows


def run_experiment(config: Config, task, run_dir: Path, accelerator: Accelerator) -> list[dict[str, Any]]:
    """`codecloop experiment`: baseline -> sweep -> retrain on compressed -> sweep -> recovery."""
    baseline_dir, retrain_dir = run_dir / BASELINE, run_dir / "retrain"
    for stage_dir in (baseline_dir, retrain_dir):
        ensure_fresh(stage_dir, config.resume)
    if config.checkpoint or config.epochs == 0:
        baseline = load_model(config, task)
    else:
        baseline = train(config.replace(quality="none", crf="none", clean_prob=0.0), task, baseline_dir, accelerator)
    baseline_rows = sweep(config, task, baseline, accelerator, BASELINE)
    retrain_config = config.replace(
        **retrain_changes(config),
        epochs=config.retrain_epochs if config.retrain_epochs is not None else max(1, config.epochs),
        max_steps=config.retrain_max_steps if config.retrain_max_steps is not None else config.max_steps,
        lr=config.retrain_lr if config.retrain_lr is not None else config.lr / 10,
    )
    retrained = train(retrain_config, task, retrain_dir, accelerator, model=copy.deepcopy(baseline))
    retrained_rows = sweep(config, task, retrained, accelerator, RETRAINED)
    recovery = recovery_rows(baseline_rows, retrained_rows, task.primary_metric)
    if accelerator.is_main_process:
        write_experiment(run_dir, baseline_rows, retrained_rows, recovery, task.primary_metric, retrain_config)
    return recovery


def write_experiment(
    run_dir: Path, baseline_rows: list, retrained_rows: list, recovery: list, metric: str,
    retrain_config: Config | None,
) -> None:
    """``sweep.csv``, ``recovery.csv``, ``experiment.png`` and ``report.md`` of an experiment."""
    write_csv(baseline_rows + retrained_rows, run_dir / "sweep.csv")
    write_csv(recovery, run_dir / "recovery.csv")
    plot_levels({BASELINE: baseline_rows, RETRAINED: retrained_rows}, metric, run_dir / "experiment.png",
                codec_of(baseline_rows))
    write_text(run_dir / "report.md", experiment_markdown(baseline_rows, retrained_rows, recovery, retrain_config))


def experiment_markdown(baseline_rows: list, retrained_rows: list, recovery: list, retrain_config: Config | None) -> str:
    """The experiment's ``report.md``: how it retrained, recovery table, both sweeps, the plot."""
    codec = codec_of(baseline_rows)
    how = ""
    if retrain_config:
        spec = retrain_config.crf if codec == "h264" else retrain_config.quality
        how = (f"Retrained on {CODEC_NAMES[codec]} {'CRF' if codec == 'h264' else 'quality'} `{spec}` with clean "
               f"share {retrain_config.clean_prob:g}, lr {retrain_config.lr:g}.")
    return "\n\n".join([
        f"# {CODEC_NAMES[codec]} codec experiment",
        how,
        "## Recovery\n\nrecovery = (retrained - baseline) / (clean - baseline) x 100, "
        "clean = baseline model on uncompressed input; empty where the baseline lost nothing.",
        markdown_table(recovery),
        "## Sweeps",
        markdown_table(baseline_rows + retrained_rows),
        "![experiment](experiment.png)",
    ]) + "\n"


def codec_of(rows: Sequence[dict[str, Any]]) -> str:
    """The codec a sweep's rows were compressed with (``jpeg`` when only clean rows exist)."""
    return next((str(row["codec"]) for row in rows if str(row["codec"]) != "none"), "jpeg")


def rebuild_report(run_dir: Path, metric: str | None = None) -> None:
    """`codecloop report`: tables and plots again from a run directory's ``sweep.csv``; the metric
    defaults to the primary metric of the task in its ``config.yaml``."""
    path = Path(run_dir) / "sweep.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `codecloop sweep` or `experiment` first")
    if metric is None:
        config_file = Path(run_dir) / "config.yaml"
        task_name = load_yaml(config_file).get("task", "classification") if config_file.is_file() else "classification"
        metric = get_task_class(task_name).primary_metric
    rows = read_csv(path)
    if rows and metric not in rows[0]:
        raise ValueError(f"metric {metric!r} is not a column of {path} (columns: {', '.join(rows[0])})")
    by_model = {model: [row for row in rows if row["model"] == model] for model in dict.fromkeys(r["model"] for r in rows)}
    if set(by_model) >= {BASELINE, RETRAINED}:
        recovery = recovery_rows(by_model[BASELINE], by_model[RETRAINED], metric)
        write_experiment(Path(run_dir), by_model[BASELINE], by_model[RETRAINED], recovery, metric, None)
    else:
        write_sweep(rows, Path(run_dir), metric)
