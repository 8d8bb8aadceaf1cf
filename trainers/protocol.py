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
| ``progress.json``| sweep, experiment | levels and stages finished, for ``--resume``          |
| ``wandb/``      | sweep, experiment | the command's W&B run (``--wandb`` online / offline)   |

A sweep or experiment is one W&B run: its training stages log into it under their stage name,
and it ends with the sweep and recovery tables, their line plots, the report files and the
stages' final weights as artifacts.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from codecloop.dali_pipes.codecs import codec_axis, codec_names, codec_title, get_codec
from codecloop.dali_pipes.levels import CLEAN_LEVEL
from codecloop.tasks import Task, get_task_class
from codecloop.trainers.checkpoint import WEIGHTS_NAMES, ensure_fresh, load_model_weights
from codecloop.trainers.config import (Config, check_task_keys, config_codec, eval_spec, given_keys, level_spec,
                                      load_yaml, retrain_changes, sweep_levels, training_spec)
from codecloop.trainers.config import check_codec_list, check_one_codec
from codecloop.trainers.logger import MetricsLogger, command_run
from codecloop.trainers.loop import (Evaluation, Trainer, build_batches, channels_last, evaluate, pipeline_runtime,
                           uses_channels_last)
from codecloop.trainers.progress import RunProgress, level_key
from codecloop.trainers.report import CLEAN, markdown_table, plot_levels, read_csv, recovery_rows, write_csv, write_text

BASELINE, RETRAINED = "baseline", "retrained"
RETRAIN_STAGE = "retrain"
REPORT_FILES = ("report.md", "sweep.csv", "recovery.csv", "sweep.png", "experiment.png", "config.yaml")


def task_options(config: Config, task_class: type[Task]) -> dict[str, Any]:
    """The values of `task_class`'s config section; unset (None) keys are dropped, so the task's own
    defaults apply."""
    values = config.to_dict()
    return {key: values[key] for key in task_class.config_keys if values[key] is not None}


def make_task(config: Config) -> Task:
    """The task named by ``config.task``, built from its own config section. A key of another task's
    section set to other than its default is an error naming the key and the task."""
    if not config.data:
        raise ValueError("config key 'data': a dataset root is required (--data DIR)")
    task_class = get_task_class(config.task)
    check_task_keys(config.task, given_keys(config))
    ladder = bool(config.ladder)
    for codec in check_codec_list(config):
        if not codec.serves(task_class.media, ladder):
            where = "clips from a ladder" if task_class.media == "clips" or ladder else "single images"
            able = [name for name in codec_names() if get_codec(name).serves(task_class.media, ladder)]
            raise ValueError(f"config key 'codec': task {config.task!r} compresses {where}, which codec "
                             f"{codec.name!r} cannot (it runs: {', '.join(codec.runs)}); codecs that can: "
                             f"{', '.join(able)}")
    return task_class(**task_options(config, task_class))


def load_model(config: Config, task: Task) -> torch.nn.Module:
    """The task's model, with ``config.checkpoint`` loaded when given (errors name the file)."""
    model = task.create_model()
    if config.checkpoint:
        load_model_weights(model, config.checkpoint, task=config.task)
    return model


def train(config: Config, task: Task, run_dir: Path, accelerator: Accelerator, model=None) -> torch.nn.Module:
    """Train with the config's codec spec into `run_dir`; returns the trained model."""
    trainer = Trainer(config, task, run_dir, accelerator, training_spec(config), eval_spec(config), model=model)
    return trainer.run()


def train_stage(config: Config, task: Task, stage_dir: Path, accelerator: Accelerator, progress: RunProgress,
                model: torch.nn.Module | None = None) -> torch.nn.Module:
    """Train one experiment stage into `stage_dir`; a stage that `progress` records as finished is not
    trained again (a resumed experiment): its final weights are loaded instead."""
    if progress.stage_finished(stage_dir.name):
        model = model if model is not None else task.create_model()
        load_model_weights(model, stage_dir)
        accelerator.print(f"{stage_dir.name}: finished before, weights loaded from {stage_dir}")
        return model
    model = train(config, task, stage_dir, accelerator, model=model)
    progress.finish_stage(stage_dir.name)
    return model


def sweep(
    config: Config, task: Task, model: torch.nn.Module, accelerator: Accelerator, label: str = BASELINE,
    progress: RunProgress | None = None,
) -> list[dict[str, Any]]:
    """Evaluate `model` on the val split clean and at every level of the codec's sweep.

    With `progress`, levels it holds are not evaluated again and each level evaluated is recorded
    in it, so a resumed sweep starts at the first level it had not finished. The one-pass JPEG
    sweep evaluates its levels together: a pass is finished as a whole or redone.
    """
    levels: list[int | None] = [None, *sweep_levels(config)]
    finished = progress.finished_levels(label) if progress is not None else {}
    results = {level: finished[level_key(level)] for level in levels if level_key(level) in finished}
    missing = [level for level in levels if level not in results]
    if missing:
        index = task.sample_index("val")
        model = model.to(accelerator.device)
        memory_last = uses_channels_last(config, task)
        if memory_last:
            model = model.to(memory_format=torch.channels_last)
        compressed = [level for level in missing if level is not None]
        one_pass = None
        codec = config_codec(config)
        if compressed and config.one_pass_sweep and codec.graph_stage is not None:
            one_pass = task.sweep_batches(index, compressed, codec, pipeline_runtime(config, task, accelerator, False))
        if one_pass is not None:
            passed = sweep_one_pass(model, task, one_pass, accelerator, memory_last, config.progress, label)
            for level in missing:
                results[level] = passed[level]
                if progress is not None:
                    progress.add_level(label, level, results[level])
        else:
            for level in tqdm(missing, desc=f"sweep {label}",
                              disable=not (accelerator.is_main_process and config.progress)):
                batches = build_batches(config, task, index, accelerator, False, level_spec(config, level))
                results[level] = evaluate(model, task, batches, accelerator, memory_last)
                if progress is not None:
                    progress.add_level(label, level, results[level])
    return [{"codec": "none" if level is None else config.codec, "level": CLEAN if level is None else level,
             "model": label, **results[level]} for level in levels]


@torch.no_grad()
def sweep_one_pass(model: torch.nn.Module, task: Task, batches, accelerator: Accelerator, memory_last: bool,
                   progress: bool, label: str) -> dict[int | None, dict[str, float]]:
    """Metrics per level of an in-graph codec from batches holding every level's view (`SweepBatches`)."""
    model.eval()
    evaluations = {level: Evaluation(task) for level in batches.levels}
    for batch in tqdm(batches, desc=f"sweep {label} (one pass)", disable=not (accelerator.is_main_process and progress)):
        views = batch.pop("views")
        if len(batch["index"]) == 0:
            continue
        for level, image in views.items():
            view = {**batch, "image": image,
                    "codec_level": torch.full_like(batch["index"], CLEAN_LEVEL if level is None else level)}
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
    write_text(run_dir / "report.md", f"# {codec_title(codec)} sweep\n\n{markdown_table(rows)}\n\n![sweep](sweep.png)\n")


def run_sweep(config: Config, task: Task, run_dir: Path, accelerator: Accelerator,
              model: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """`codecloop sweep`: one model (`model`, else the config's) over the levels; files written by the main
    process."""
    check_one_codec(config)
    progress = RunProgress.open(run_dir, config, accelerator)
    with command_run(run_dir, config.to_dict(), accelerator.is_main_process, config.wandb, config.wandb_project,
                     progress.wandb_run_id) as logger:
        progress.wandb_run_id = logger.wandb_run_id
        rows = sweep(config, task, model if model is not None else load_model(config, task), accelerator, BASELINE,
                     progress)
        if accelerator.is_main_process:
            write_sweep(rows, run_dir, task.primary_metric)
            log_results(logger, run_dir, rows, [], task.primary_metric)
    return rows


def run_experiment(config: Config, task: Task, run_dir: Path, accelerator: Accelerator,
                   model: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """`codecloop experiment`: baseline -> sweep -> retrain on compressed -> sweep -> recovery; the
    baseline is `model` (else the config's checkpoint) when given.

    With ``--resume`` it continues where it stopped: finished training stages are loaded, not
    trained again; an unfinished one resumes from its last checkpoint; finished sweep levels are
    not evaluated again.
    """
    check_one_codec(config)
    baseline_dir, retrain_dir = run_dir / BASELINE, run_dir / RETRAIN_STAGE
    for stage_dir in (baseline_dir, retrain_dir):
        ensure_fresh(stage_dir, config.resume)
    progress = RunProgress.open(run_dir, config, accelerator)
    with command_run(run_dir, config.to_dict(), accelerator.is_main_process, config.wandb, config.wandb_project,
                     progress.wandb_run_id) as logger:
        progress.wandb_run_id = logger.wandb_run_id
        if config.checkpoint or config.epochs == 0:
            baseline = model if model is not None else load_model(config, task)
        else:
            baseline = train_stage(config.replace(level="none", clean_prob=0.0), task, baseline_dir,
                                   accelerator, progress)
        baseline_rows = sweep(config, task, baseline, accelerator, BASELINE, progress)
        retrain_config = config.replace(
            **retrain_changes(config),
            epochs=config.retrain_epochs if config.retrain_epochs is not None else max(1, config.epochs),
            max_steps=config.retrain_max_steps if config.retrain_max_steps is not None else config.max_steps,
            lr=config.retrain_lr if config.retrain_lr is not None else config.lr / 10,
        )
        retrained = train_stage(retrain_config, task, retrain_dir, accelerator, progress, model=copy.deepcopy(baseline))
        retrained_rows = sweep(config, task, retrained, accelerator, RETRAINED, progress)
        recovery = recovery_rows(baseline_rows, retrained_rows, task.primary_metric)
        if accelerator.is_main_process:
            write_experiment(run_dir, baseline_rows, retrained_rows, recovery, task.primary_metric, retrain_config)
            log_results(logger, run_dir, baseline_rows + retrained_rows, recovery, task.primary_metric)
    return recovery


def log_results(logger: MetricsLogger, run_dir: Path, rows: list[dict[str, Any]], recovery: list[dict[str, Any]],
                metric: str) -> None:
    """The command's W&B record (nothing without W&B): the sweep table and its line plot per model,
    the recovery table and plot, summary numbers a W&B sweep can rank runs by (``recovery/mean_pct``,
    ``sweep/<model>/<metric>_clean`` and ``_mean`` over the compressed levels), the report files and
    the training stages' final weights as artifacts."""
    axis = codec_axis(codec_of(rows))
    logger.log_table("sweep", rows, x="level", y=metric, stroke="model", title=f"{metric} against {axis}")
    summary: dict[str, Any] = {}
    for label in dict.fromkeys(str(row["model"]) for row in rows):
        mine = [row for row in rows if str(row["model"]) == label]
        compressed = [float(row[metric]) for row in mine if str(row["level"]) != CLEAN]
        clean = next(float(row[metric]) for row in mine if str(row["level"]) == CLEAN)
        summary[f"sweep/{label}/{metric}_clean"] = clean
        summary[f"sweep/{label}/{metric}_mean"] = sum(compressed) / len(compressed) if compressed else None
    if recovery:
        logger.log_table("recovery", recovery, x="level", y="recovery_pct", title=f"recovery (%) against {axis}")
        defined = [float(row["recovery_pct"]) for row in recovery if row["recovery_pct"] is not None]
        summary["recovery/mean_pct"] = sum(defined) / len(defined) if defined else None
    logger.log_summary(summary)
    logger.log_artifact("report", "report", [run_dir / name for name in REPORT_FILES], run_dir)
    weights = [run_dir / stage / name for stage in (BASELINE, RETRAIN_STAGE) for name in WEIGHTS_NAMES]
    logger.log_artifact("model", "model", weights, run_dir, copy=False)


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
        level_name = config_codec(retrain_config).level_name
        how = (f"Retrained on {codec_title(codec)} {level_name} `{retrain_config.level}` with clean "
               f"share {retrain_config.clean_prob:g}, lr {retrain_config.lr:g}.")
    return "\n\n".join([
        f"# {codec_title(codec)} codec experiment",
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
