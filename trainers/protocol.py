"""The paper protocol: train, sweep a model over codec levels, retrain on compressed data, recover.

Each command writes into one run directory:

| file            | written by        | holds                                                  |
| --------------- | ----------------- | ------------------------------------------------------ |
| ``config.yaml`` | every command     | the resolved configuration                             |
| ``metrics.jsonl``| train stages     | training / evaluation metrics per step                 |
| ``sweep.csv``   | sweep, experiment | codec, level, model, every metric and its interval, n  |
| ``sweep.png``   | sweep             | primary metric against the level, clean dashed          |
| ``recovery.csv``| experiment        | per level: clean, baseline, retrained, recovery (%)    |
| ``bootstrap.npz``| sweep, experiment| each level's metrics on every bootstrap resample       |
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
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from codecloop.dali_pipes.codecs import codec_axis, codec_names, codec_title, get_codec
from codecloop.dali_pipes.levels import CLEAN_LEVEL
from codecloop.dali_pipes.rates import Rate, levels_at_rates, measure_rates
from codecloop.tasks import Task, get_task_class
from codecloop.tasks.sample_index import SampleIndex
from codecloop.trainers.checkpoint import WEIGHTS_NAMES, ensure_fresh, load_model_weights, save_final_weights
from codecloop.trainers.config import (Config, bpp_list, bpp_range, check_codec_list, check_task_keys, config_codec,
                                      eval_spec, given_keys, level_spec, load_yaml, retrain_changes, retrain_spec_text,
                                      sweep_codec_names, sweep_levels, training_spec)
from codecloop.trainers.logger import MetricsLogger, command_run
from codecloop.trainers.loop import (Evaluation, Trainer, build_batches, channels_last, evaluate, pipeline_runtime,
                           uses_channels_last)
from codecloop.trainers.progress import RunProgress, load_replicates
from codecloop.trainers.restoration import FeatureRestoration
from codecloop.trainers.report import level_key
from codecloop.trainers.report import (CLEAN, equal_rate_rows, markdown_table, plot_levels, read_csv, recovery_rows,
                                      write_csv, write_text)
from codecloop.trainers.weight_mix import choose_mix, mix_weights

BASELINE, RETRAINED = "baseline", "retrained"
RETRAIN_STAGE = "retrain"
MIXED = "mixed"  # RUN/mixed: the weights of --retrain_mix / --retrain_mix_split
REPORT_FILES = ("report.md", "sweep.csv", "recovery.csv", "equal_rate.csv", "bootstrap.npz", "sweep.png",
                "experiment.png", "config.yaml")
DEFAULT_AT_BPP = (0.1, 0.25, 0.5, 1.0, 2.0)


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
    check_codec_list(config)
    for key, names in (("codec", config.codec.split(",")), ("codecs", sweep_codec_names(config))):
        for codec in map(get_codec, (name.strip() for name in names if name.strip())):
            if not codec.serves(task_class.media, ladder):
                where = "clips from a ladder" if task_class.media == "clips" or ladder else "single images"
                able = [name for name in codec_names() if get_codec(name).serves(task_class.media, ladder)]
                raise ValueError(f"config key {key!r}: task {config.task!r} compresses {where}, which codec "
                                 f"{codec.name!r} cannot (it runs: {', '.join(codec.runs)}); codecs that can: "
                                 f"{', '.join(able)}")
    return task_class(**task_options(config, task_class))


def load_model(config: Config, task: Task) -> torch.nn.Module:
    """The task's model, with ``config.checkpoint`` loaded when given (errors name the file)."""
    model = task.create_model()
    if config.checkpoint:
        load_model_weights(model, config.checkpoint, task=config.task)
    return model


def train(config: Config, task: Task, run_dir: Path, accelerator: Accelerator, model=None,
          objective: FeatureRestoration | None = None) -> torch.nn.Module:
    """Train with the config's codec spec into `run_dir` (on `objective`, else the task's loss); returns the
    trained model."""
    trainer = Trainer(config, task, run_dir, accelerator, training_spec(config), eval_spec(config), model=model,
                      objective=objective)
    return trainer.run()


def train_stage(config: Config, task: Task, stage_dir: Path, accelerator: Accelerator, progress: RunProgress,
                model: torch.nn.Module | None = None, objective: FeatureRestoration | None = None) -> torch.nn.Module:
    """Train one experiment stage into `stage_dir`; a stage that `progress` records as finished is not
    trained again (a resumed experiment): its final weights are loaded instead."""
    if progress.stage_finished(stage_dir.name):
        model = model if model is not None else task.create_model()
        load_model_weights(model, stage_dir)
        accelerator.print(f"{stage_dir.name}: finished before, weights loaded from {stage_dir}")
        return model
    model = train(config, task, stage_dir, accelerator, model=model, objective=objective)
    progress.finish_stage(stage_dir.name)
    return model


def sweep(
    config: Config, task: Task, model: torch.nn.Module, accelerator: Accelerator, label: str = BASELINE,
    progress: RunProgress | None = None, index: SampleIndex | None = None,
) -> list[dict[str, Any]]:
    """Evaluate `model` on the val split (`index`, else read) clean and at every level of each swept codec
    (``codecs``, else ``codec``).

    With `progress`, levels it holds are not evaluated again and each level evaluated is recorded
    in it, so a resumed sweep starts at the first level it had not finished. The one-pass JPEG
    sweep evaluates its levels together: a pass is finished as a whole or redone.
    """
    plan: list[tuple[str | None, int | None]] = [(None, None)] + [
        (name, level) for name in sweep_codec_names(config) for level in sweep_levels(config.replace(codec=name))]
    finished = progress.finished_levels(label) if progress is not None else {}
    results = {(name, level): finished[level_key(level, name)] for name, level in plan
               if level_key(level, name) in finished}
    groups: dict[str, list[int | None]] = {}
    for name, level in plan:
        if (name, level) not in results:
            groups.setdefault(name or config.codec, []).append(level)
    if groups:
        index = index if index is not None else task.sample_index("val")
        model = model.to(accelerator.device)
        memory_last = uses_channels_last(config, task)
        if memory_last:
            model = model.to(memory_format=torch.channels_last)
        for name, levels in groups.items():
            def record(level: int | None, metrics: dict[str, float], replicates: dict[str, np.ndarray],
                       name: str = name) -> None:
                results[(None if level is None else name, level)] = metrics
                if progress is not None:
                    progress.add_level(label, level, metrics, name, replicates)

            sweep_codec(config.replace(codec=name), task, model, index, levels, accelerator, memory_last, label, record)
    return [{"codec": name or "none", "level": CLEAN if level is None else level, "model": label,
             **results[(name, level)]} for name, level in plan]


def sweep_codec(config: Config, task: Task, model: torch.nn.Module, index: SampleIndex, levels: list[int | None],
                accelerator: Accelerator, memory_last: bool, label: str,
                record: Callable[[int | None, dict[str, float], dict[str, np.ndarray]], None]) -> None:
    """`record` the metrics of `model` and their bootstrap replicates (``bootstrap`` resamples) at each of
    `levels` (None: clean) of the config's codec as soon as they are known: in one pass for an in-graph codec
    with ``one_pass_sweep``, else one evaluation per level."""
    compressed = [level for level in levels if level is not None]
    codec = config_codec(config)
    if compressed and config.one_pass_sweep and codec.graph_stage is not None:
        one_pass = task.sweep_batches(index, compressed, codec, pipeline_runtime(config, task, accelerator, False))
        if one_pass is not None:
            passed = sweep_one_pass(model, task, one_pass, accelerator, memory_last, config.progress, label,
                                    config.bootstrap)
            for level in levels:
                record(level, passed[level].result(accelerator), passed[level].replicates)
            return
    for level in tqdm(levels, desc=f"sweep {label} {codec.name}",
                      disable=not (accelerator.is_main_process and config.progress)):
        batches = build_batches(config, task, index, accelerator, False, level_spec(config, level))
        evaluation = Evaluation(task, config.bootstrap)
        record(level, evaluate(model, task, batches, accelerator, memory_last, evaluation), evaluation.replicates)


def sweep_rates(config: Config, task: Task, index: SampleIndex, accelerator: Accelerator) -> dict[tuple[str, int], Rate]:
    """Bits per pixel of every swept codec level on `index` (`codecloop.dali_pipes.rates`; cached beside the
    data, measured by whichever rank comes first); a codec with no encoder for single images is left out,
    saying so."""
    source = task.rate_source(index)
    rates: dict[tuple[str, int], Rate] = {}
    for name in sweep_codec_names(config):
        codec = get_codec(name)
        if source.ladder is None and codec.encode is None:
            warnings.warn(f"codec {name!r} has no encoder for single images (Codec.encode): its sweep rows carry no "
                          f"bits per pixel", stacklevel=2)
            continue
        measured = measure_rates(source, codec, sweep_levels(config.replace(codec=name)),
                                 limit=config.rate_images or None, workers=config.num_threads,
                                 progress=accelerator.is_main_process and config.progress)
        rates.update({(name, level): rate for level, rate in measured.items()})
    return rates


def with_rates(rows: list[dict[str, Any]], rates: dict[tuple[str, int], Rate]) -> list[dict[str, Any]]:
    """`rows` with each level's ``bpp`` (mean bits per pixel), ``bpp_std`` and ``bpp_n`` (images or clips)
    after ``level``; empty for clean rows and codecs without a rate."""
    out = []
    for row in rows:
        rate = rates.get((str(row["codec"]), int(row["level"]))) if str(row["level"]) != CLEAN else None
        head = {key: row[key] for key in ("codec", "level")}
        columns = {"bpp": rate.bpp, "bpp_std": rate.bpp_std, "bpp_n": rate.count} if rate else dict.fromkeys(
            ("bpp", "bpp_std", "bpp_n"))
        out.append({**head, **columns, **{key: value for key, value in row.items() if key not in head}})
    return out


@torch.no_grad()
def sweep_one_pass(model: torch.nn.Module, task: Task, batches, accelerator: Accelerator, memory_last: bool,
                   progress: bool, label: str, resamples: int = 0) -> dict[int | None, Evaluation]:
    """The evaluation of each level of an in-graph codec from batches holding every level's view
    (`SweepBatches`)."""
    model.eval()
    evaluations = {level: Evaluation(task, resamples) for level in batches.levels}
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
    return evaluations


def report_targets(config_text: str | None, rows: Sequence[dict[str, Any]]) -> list[float]:
    """The bits per pixel the equal-rate table interpolates at: `config_text` (``at_bpp``), else
    `DEFAULT_AT_BPP` when the rows hold several codecs with rates, else none."""
    if config_text:
        return bpp_list(config_text)
    rated = {str(row["codec"]) for row in rows if str(row["level"]) != CLEAN and str(row.get("bpp") or "")}
    return list(DEFAULT_AT_BPP) if len(rated) > 1 else []


def equal_rate_section(rows: Sequence[dict[str, Any]], metric: str, higher_is_better: bool,
                       targets: Sequence[float], run_dir: Path) -> tuple[list[dict[str, Any]], str]:
    """The equal-rate table (written to ``equal_rate.csv``) and its report section; nothing without targets."""
    if not targets:
        return [], ""
    table = equal_rate_rows(rows, metric, targets, higher_is_better)
    write_csv(table, run_dir / "equal_rate.csv")
    better = "higher" if higher_is_better else "lower"
    return table, (f"## {metric} at equal bitrate\n\nEach codec's {metric} interpolated linearly in log bits per "
                   f"pixel between its two measured levels around the rate; empty outside the rates it was measured "
                   f"at. `best`: the codec with the {better} {metric} there.\n\n{markdown_table(table)}")


def write_sweep(rows: list[dict[str, Any]], run_dir: Path, metric: str, higher_is_better: bool = True,
                targets: Sequence[float] = ()) -> list[dict[str, Any]]:
    """``sweep.csv``, ``sweep.png``, ``equal_rate.csv`` (with `targets`) and ``report.md`` for one model's sweep;
    returns the equal-rate rows."""
    write_csv(rows, run_dir / "sweep.csv")
    plot_levels({rows[0]["model"]: rows}, metric, run_dir / "sweep.png")
    table, section = equal_rate_section(rows, metric, higher_is_better, targets, run_dir)
    write_text(run_dir / "report.md", "\n\n".join(part for part in [
        f"# {codecs_title(rows)} sweep", interval_note(rows), markdown_table(rows), section, "![sweep](sweep.png)"]
        if part) + "\n")
    return table


def run_sweep(config: Config, task: Task, run_dir: Path, accelerator: Accelerator,
              model: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """`codecloop sweep`: one model (`model`, else the config's) over the levels; files written by the main
    process."""
    progress = RunProgress.open(run_dir, config, accelerator)
    with command_run(run_dir, config.to_dict(), accelerator.is_main_process, config.wandb, config.wandb_project,
                     progress.wandb_run_id) as logger:
        progress.wandb_run_id = logger.wandb_run_id
        index = task.sample_index("val")
        rows = sweep(config, task, model if model is not None else load_model(config, task), accelerator, BASELINE,
                     progress, index)
        rows = with_rates(rows, sweep_rates(config, task, index, accelerator))
        if accelerator.is_main_process:
            table = write_sweep(rows, run_dir, task.primary_metric, task.higher_is_better,
                                report_targets(config.at_bpp, rows))
            log_results(logger, run_dir, rows, [], task.primary_metric, table)
    return rows


def run_experiment(config: Config, task: Task, run_dir: Path, accelerator: Accelerator,
                   model: torch.nn.Module | None = None) -> list[dict[str, Any]]:
    """`codecloop experiment`: baseline -> sweep -> retrain on compressed -> sweep -> recovery; the
    baseline is `model` (else the config's checkpoint) when given.

    With ``--resume`` it continues where it stopped: finished training stages are loaded, not
    trained again; an unfinished one resumes from its last checkpoint; finished sweep levels are
    not evaluated again.
    """
    baseline_dir, retrain_dir = run_dir / BASELINE, run_dir / RETRAIN_STAGE
    for stage_dir in (baseline_dir, retrain_dir):
        ensure_fresh(stage_dir, config.resume)
    if config.retrain_loss == "features" and not task.clean_view:
        raise ValueError(f"config key 'retrain_loss': features needs the clean copy of each training view, which "
                         f"the {task.name} task's pipeline does not give (classification does)")
    if config.retrain_mix_split is not None and not task.has_split(config.retrain_mix_split):
        raise ValueError(f"config key 'retrain_mix_split': the dataset has no split {config.retrain_mix_split!r} (for "
                         f"an image folder: a folder {config.retrain_mix_split}/ beside train/ and val/)")
    progress = RunProgress.open(run_dir, config, accelerator)
    with command_run(run_dir, config.to_dict(), accelerator.is_main_process, config.wandb, config.wandb_project,
                     progress.wandb_run_id) as logger:
        progress.wandb_run_id = logger.wandb_run_id
        if config.checkpoint or config.epochs == 0:
            baseline = model if model is not None else load_model(config, task)
        else:
            baseline = train_stage(config.replace(level="none", clean_prob=0.0), task, baseline_dir,
                                   accelerator, progress)
        objective = FeatureRestoration(baseline, config.retrain_layer) if config.retrain_loss == "features" else None
        index = task.sample_index("val")
        rates = sweep_rates(config, task, index, accelerator)
        baseline_rows = with_rates(sweep(config, task, baseline, accelerator, BASELINE, progress, index), rates)
        retrain_config = config.replace(
            **retrain_changes(config, retrain_level_text(config, task, index)),
            epochs=config.retrain_epochs if config.retrain_epochs is not None else max(1, config.epochs),
            max_steps=config.retrain_max_steps if config.retrain_max_steps is not None else config.max_steps,
            lr=config.retrain_lr if config.retrain_lr is not None else config.lr / 10,
        )
        retrained = train_stage(retrain_config, task, retrain_dir, accelerator, progress, model=copy.deepcopy(baseline),
                                objective=objective)
        retrained, mixed = apply_mix(config, task, baseline, retrained, accelerator, run_dir)
        retrained_rows = with_rates(sweep(config, task, retrained, accelerator, RETRAINED, progress, index), rates)
        recovery = recovery_rows(baseline_rows, retrained_rows, task.primary_metric, progress.replicates)
        if accelerator.is_main_process:
            table = write_experiment(run_dir, baseline_rows, retrained_rows, recovery, task.primary_metric,
                                     retrain_config, task.higher_is_better,
                                     report_targets(config.at_bpp, baseline_rows), mixed)
            log_results(logger, run_dir, baseline_rows + retrained_rows, recovery, task.primary_metric, table)
    return recovery


def apply_mix(config: Config, task: Task, baseline: torch.nn.Module, retrained: torch.nn.Module,
              accelerator: Accelerator, run_dir: Path) -> tuple[torch.nn.Module, str]:
    """`retrained` interpolated towards `baseline` (``retrain_mix``, or the mix chosen on ``retrain_mix_split``,
    whose tries go to ``mix.csv``), saved in ``RUN/mixed``; and the report's sentence on it ('' without a mix)."""
    if config.retrain_mix is None and config.retrain_mix_split is None:
        return retrained, ""
    metric = task.primary_metric
    if config.retrain_mix is not None:
        mix, chosen = config.retrain_mix, ""
    else:
        index = task.sample_index(config.retrain_mix_split)
        memory_last = uses_channels_last(config, task)

        def clean_metric(mix: float) -> float:
            model = mix_weights(baseline, retrained, mix).to(accelerator.device)
            if memory_last:
                model = model.to(memory_format=torch.channels_last)
            batches = build_batches(config, task, index, accelerator, False, level_spec(config, None))
            return evaluate(model, task, batches, accelerator, memory_last)[metric]

        mix, tried = choose_mix(clean_metric, task.higher_is_better)
        if accelerator.is_main_process:
            write_csv([{**row, "chosen": row["mix"] == mix} for row in tried], run_dir / "mix.csv")
        better = "at least" if task.higher_is_better else "at most"
        chosen = (f", the largest mix whose clean-input {metric} on split `{config.retrain_mix_split}` ({len(index)} "
                  f"samples) is {better} the original's, {tried[0]['metric']:.4f} (tried, `mix.csv`: "
                  + ", ".join(f"{row['mix']:g}: {row['metric']:.4f}" for row in tried[1:]) + ")")
    mixed = mix_weights(baseline, retrained, mix)
    save_final_weights(accelerator, mixed, run_dir / MIXED)
    accelerator.print(f"retrained weights mixed with the original's: mix {mix:g}")
    return mixed, f"Weights: original + {mix:g} x (fine-tuned - original){chosen}; saved in `{MIXED}/`."


def retrain_level_text(config: Config, task: Task, index: SampleIndex) -> str:
    """The fine-tuning level spec: from ``retrain_bpp`` through the codec's rate table on `index` when set,
    else ``retrain_level`` or the codec's default."""
    if config.retrain_bpp is None:
        return retrain_spec_text(config)
    low, high = bpp_range(config.retrain_bpp)
    try:
        return levels_at_rates(task.rate_source(index), config_codec(config), low, high,
                               limit=config.rate_images or None, workers=config.num_threads)
    except ValueError as error:
        raise ValueError(f"config key 'retrain_bpp': {error}") from error


def log_results(logger: MetricsLogger, run_dir: Path, rows: list[dict[str, Any]], recovery: list[dict[str, Any]],
                metric: str, equal_rate: list[dict[str, Any]] = ()) -> None:
    """The command's W&B record (nothing without W&B): the sweep table with line plots of the metric against
    the level and against bits per pixel (one line per model and codec), the recovery and equal-rate tables,
    summary numbers a W&B sweep can rank runs by (``recovery/mean_pct``, ``sweep/<model>/<metric>_clean`` and
    ``_mean`` over the compressed levels), the report files and the stages' final weights as artifacts."""
    single = len({str(row["codec"]) for row in rows} - {"none"}) <= 1
    axis = codec_axis(codec_of(rows)) if single else "level"
    curves, stroke = (rows, "model") if single else ([{**row, "curve": f"{row['model']} {row['codec']}"}
                                                      for row in rows], "curve")
    logger.log_table("sweep", curves, x="level", y=metric, stroke=stroke, title=f"{metric} against {axis}")
    logger.log_table("sweep_bpp", curves, x="bpp", y=metric, stroke=stroke, title=f"{metric} against bits per pixel")
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
    if equal_rate:
        logger.log_table("equal_rate", list(equal_rate))
    logger.log_summary(summary)
    logger.log_artifact("report", "report", [run_dir / name for name in REPORT_FILES], run_dir)
    weights = [run_dir / stage / name for stage in (BASELINE, RETRAIN_STAGE, MIXED) for name in WEIGHTS_NAMES]
    logger.log_artifact("model", "model", weights, run_dir, copy=False)


def write_experiment(
    run_dir: Path, baseline_rows: list, retrained_rows: list, recovery: list, metric: str,
    retrain_config: Config | None, higher_is_better: bool = True, targets: Sequence[float] = (), mixed: str = "",
) -> list[dict[str, Any]]:
    """``sweep.csv``, ``recovery.csv``, ``experiment.png``, ``equal_rate.csv`` (with `targets`) and ``report.md``
    of an experiment; returns the equal-rate rows."""
    write_csv(baseline_rows + retrained_rows, run_dir / "sweep.csv")
    write_csv(recovery, run_dir / "recovery.csv")
    plot_levels({BASELINE: baseline_rows, RETRAINED: retrained_rows}, metric, run_dir / "experiment.png")
    table, section = equal_rate_section(baseline_rows + retrained_rows, metric, higher_is_better, targets, run_dir)
    write_text(run_dir / "report.md", experiment_markdown(baseline_rows, retrained_rows, recovery, retrain_config,
                                                          section, mixed))
    return table


def experiment_markdown(baseline_rows: list, retrained_rows: list, recovery: list, retrain_config: Config | None,
                        equal_rate: str = "", mixed: str = "") -> str:
    """The experiment's ``report.md``: how it retrained (and `mixed` the weights), recovery table, both sweeps, the
    equal-rate table, the plot."""
    how = ""
    if retrain_config:
        codec = config_codec(retrain_config)
        chosen = f" (the levels whose mean rate is {retrain_config.retrain_bpp} bits per pixel)" \
            if retrain_config.retrain_bpp else ""
        loss = (f", restoring the original network's `{retrain_config.retrain_layer}` output on the clean view"
                if retrain_config.retrain_loss == "features" else "")
        how = (f"Retrained on {codec.title} {codec.level_name} `{retrain_config.level}`{chosen} with clean "
               f"share {retrain_config.clean_prob:g}, lr {retrain_config.lr:g}{loss}.")
    return "\n\n".join(part for part in [
        f"# {codecs_title(baseline_rows)} codec experiment",
        how,
        mixed,
        interval_note(baseline_rows),
        "## Recovery\n\nrecovery = (retrained - baseline) / (clean - baseline) x 100, "
        "clean = baseline model on uncompressed input; empty where the baseline lost nothing. Its interval comes "
        "from the same resamples of the clean, baseline and retrained evaluations; `not significant`: it holds 0.",
        markdown_table(recovery),
        "## Sweeps",
        markdown_table(baseline_rows + retrained_rows),
        equal_rate,
        "![experiment](experiment.png)",
    ] if part) + "\n"


def interval_note(rows: Sequence[dict[str, Any]]) -> str:
    """What the bracketed intervals of the tables are (nothing when the rows carry none)."""
    resamples = [row.get("ci_resamples") for row in rows if str(row.get("ci_resamples") or "")]
    if not resamples:
        return ""
    counts = sorted({int(float(count)) for count in resamples})
    samples = max(int(float(row["n"])) for row in rows if str(row.get("n") or ""))
    return (f"Brackets: 95% percentile-bootstrap interval over the {samples} evaluation samples "
            f"({' or '.join(map(str, counts))} resamples, the same at every level and for every model, so "
            f"differences pair).")


def codecs_title(rows: Sequence[dict[str, Any]]) -> str:
    """The display names of the codecs in `rows` (``JPEG, WebP and AVIF``)."""
    titles = [codec_title(name) for name in dict.fromkeys(str(row["codec"]) for row in rows) if name != "none"]
    titles = titles or [codec_title("jpeg")]
    return titles[0] if len(titles) == 1 else f"{', '.join(titles[:-1])} and {titles[-1]}"


def codec_of(rows: Sequence[dict[str, Any]]) -> str:
    """The codec a sweep's rows were compressed with (``jpeg`` when only clean rows exist)."""
    return next((str(row["codec"]) for row in rows if str(row["codec"]) != "none"), "jpeg")


def rebuild_report(run_dir: Path, metric: str | None = None, at_bpp: str | None = None) -> None:
    """`codecloop report`: tables and plots again from a run directory's ``sweep.csv``; the metric defaults
    to the primary metric of the task in its ``config.yaml``, the equal-rate targets to its ``at_bpp``."""
    run_dir = Path(run_dir)
    path = run_dir / "sweep.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `codecloop sweep` or `experiment` first")
    config_file = run_dir / "config.yaml"
    saved = load_yaml(config_file) if config_file.is_file() else {}
    task_class = get_task_class(saved.get("task", "classification"))
    metric = metric or task_class.primary_metric
    rows = read_csv(path)
    if rows and metric not in rows[0]:
        raise ValueError(f"metric {metric!r} is not a column of {path} (columns: {', '.join(rows[0])})")
    targets = report_targets(at_bpp or saved.get("at_bpp"), rows)
    if targets and rows and "bpp" not in rows[0]:
        raise ValueError(f"{path} has no bpp column (written by an older codecloop): sweep again to measure rates")
    higher = task_class.metric_higher_is_better(metric)
    by_model = {model: [row for row in rows if row["model"] == model] for model in dict.fromkeys(r["model"] for r in rows)}
    if set(by_model) >= {BASELINE, RETRAINED}:
        recovery = recovery_rows(by_model[BASELINE], by_model[RETRAINED], metric, load_replicates(run_dir))
        write_experiment(run_dir, by_model[BASELINE], by_model[RETRAINED], recovery, metric, None, higher, targets)
    else:
        write_sweep(rows, run_dir, metric, higher, targets)
