"""The paper protocol: train, sweep a model over JPEG levels, retrain on compressed data, recover.

Each command writes into one run directory:

| file            | written by        | holds                                                  |
| --------------- | ----------------- | ------------------------------------------------------ |
| ``config.yaml`` | every command     | the resolved configuration                             |
| ``metrics.jsonl``| train stages     | training / evaluation metrics per step                 |
| ``sweep.csv``   | sweep, experiment | codec, level, model, every metric, sample count        |
| ``sweep.png``   | sweep             | primary metric against quality, clean as a dashed line |
| ``recovery.csv``| experiment        | per level: clean, baseline, retrained, recovery (%)    |
| ``experiment.png`` | experiment     | baseline and retrained curves on one plot              |
| ``report.md``   | sweep, experiment | the tables above in Markdown                           |
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from dali_pipes import parse_levels, parse_quality_spec
from tasks import get_task_class
from trainers.checkpoint import ensure_fresh, load_model_weights
from trainers.config import Config
from trainers.loop import Trainer, build_batches, evaluate
from trainers.report import CLEAN, markdown_table, plot_levels, read_csv, recovery_rows, write_csv, write_text

BASELINE, RETRAINED = "baseline", "retrained"


def make_task(config: Config):
    """The task object named by ``config.task``, built from the config's data and model keys."""
    if not config.data:
        raise ValueError("config key 'data': a dataset root is required (--data DIR)")
    return get_task_class(config.task)(
        data=config.data, model=config.model, pretrained=config.pretrained,
        num_classes=config.num_classes, label_smoothing=config.label_smoothing, strict=config.strict,
    )


def load_model(config: Config, task) -> torch.nn.Module:
    """The task's model, with ``config.checkpoint`` loaded when given (errors name the file)."""
    model = task.create_model()
    if config.checkpoint:
        load_model_weights(model, config.checkpoint)
    return model


def train(config: Config, task, run_dir: Path, accelerator: Accelerator, model=None) -> torch.nn.Module:
    """Train with the config's quality spec into `run_dir`; returns the trained model."""
    spec = parse_quality_spec(config.quality, config.clean_prob)
    trainer = Trainer(config, task, run_dir, accelerator, spec, parse_quality_spec(config.eval_quality), model=model)
    return trainer.run()


def sweep(
    config: Config, task, model: torch.nn.Module, accelerator: Accelerator, label: str = BASELINE
) -> list[dict[str, Any]]:
    """Evaluate `model` on the val split clean and at every level of ``config.levels``."""
    index = task.sample_index("val")
    model = model.to(accelerator.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    levels: Sequence[int | None] = [None, *parse_levels(config.levels)]
    rows = []
    for level in tqdm(levels, desc=f"sweep {label}", disable=not (accelerator.is_main_process and config.progress)):
        spec = parse_quality_spec("none" if level is None else level)
        batches = build_batches(config, index, accelerator, False, spec)
        metrics = evaluate(model, task, batches, accelerator, config.channels_last)
        rows.append({"codec": "none" if level is None else "jpeg", "level": CLEAN if level is None else level,
                     "model": label, **metrics})
    return rows


def write_sweep(rows: list[dict[str, Any]], run_dir: Path, metric: str) -> None:
    """``sweep.csv``, ``sweep.png`` and ``report.md`` for one model's sweep."""
    write_csv(rows, run_dir / "sweep.csv")
    plot_levels({rows[0]["model"]: rows}, metric, run_dir / "sweep.png")
    write_text(run_dir / "report.md", f"# JPEG sweep\n\n{markdown_table(rows)}\n\n![sweep](sweep.png)\n")


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
        baseline = train(config.replace(quality="none", clean_prob=0.0), task, baseline_dir, accelerator)
    baseline_rows = sweep(config, task, baseline, accelerator, BASELINE)
    retrain_config = config.replace(
        quality=config.retrain_quality,
        clean_prob=config.retrain_clean_prob,
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
    plot_levels({BASELINE: baseline_rows, RETRAINED: retrained_rows}, metric, run_dir / "experiment.png")
    write_text(run_dir / "report.md", experiment_markdown(baseline_rows, retrained_rows, recovery, retrain_config))


def experiment_markdown(baseline_rows: list, retrained_rows: list, recovery: list, retrain_config: Config | None) -> str:
    """The experiment's ``report.md``: how it retrained, recovery table, both sweeps, the plot."""
    how = (f"Retrained on JPEG quality `{retrain_config.quality}` with clean share "
           f"{retrain_config.clean_prob:g}, lr {retrain_config.lr:g}." if retrain_config else "")
    return "\n\n".join([
        "# JPEG codec experiment",
        how,
        "## Recovery\n\nrecovery = (retrained - baseline) / (clean - baseline) x 100, "
        "clean = baseline model on uncompressed input; empty where the baseline lost nothing.",
        markdown_table(recovery),
        "## Sweeps",
        markdown_table(baseline_rows + retrained_rows),
        "![experiment](experiment.png)",
    ]) + "\n"


def rebuild_report(run_dir: Path, metric: str = "top1") -> None:
    """`codecloop report`: tables and plots again from a run directory's ``sweep.csv``."""
    path = Path(run_dir) / "sweep.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `codecloop sweep` or `experiment` first")
    rows = read_csv(path)
    if rows and metric not in rows[0]:
        raise ValueError(f"metric {metric!r} is not a column of {path} (columns: {', '.join(rows[0])})")
    by_model = {model: [row for row in rows if row["model"] == model] for model in dict.fromkeys(r["model"] for r in rows)}
    if set(by_model) >= {BASELINE, RETRAINED}:
        recovery = recovery_rows(by_model[BASELINE], by_model[RETRAINED], metric)
        write_experiment(Path(run_dir), by_model[BASELINE], by_model[RETRAINED], recovery, metric, None)
    else:
        write_sweep(rows, Path(run_dir), metric)
