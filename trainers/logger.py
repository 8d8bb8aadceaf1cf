"""Metric logging: ``metrics.jsonl`` always, W&B when asked; only the main process writes.

| key                            | meaning                                                  |
| ------------------------------ | -------------------------------------------------------- |
| ``train/loss``                 | mean training loss over the logging interval             |
| ``train/lr``                   | learning rate at the logged step                         |
| ``codec/level_mean``           | mean codec level of the compressed samples seen          |
| ``codec/level_hist``           | their counts in 10 equal bins over the codec's range     |
| ``codec/clean_frac``           | share of samples that passed through clean               |
| ``codec/<name>/frac``          | with several codecs (a ladder mix): share of samples read through each |
| ``codec/<name>/level_mean``    | with several codecs: that codec's mean level (compressed samples)      |
| ``throughput/samples_per_sec`` | samples per second over all processes                    |
| ``throughput/data_wait_frac``  | share of step time spent waiting for the next batch      |
| ``eval/<metric>``              | evaluation metrics (``eval/top1``, ``eval/top5``, ...)   |
| ``data/skipped_files``         | unreadable files skipped in a split (paths listed too)   |

A sweep or an experiment is one W&B run (`command_run`): its training stages log into it under
their stage name, and it gets the sweep and recovery tables with line plots (`log_table`),
summary values (`log_summary`) and the report and weights as artifacts (`log_artifact`).

A W&B failure (import, login, network) is reported once and never stops training; an
unreachable server means an offline run, uploaded later with ``wandb sync``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codecloop.dali_pipes.codecs import codec_names, codec_scale
from codecloop.dali_pipes.levels import CLEAN_LEVEL, LevelScale
from codecloop.trainers.report import finite_number

INIT_TIMEOUT_S = 30  # seconds wandb.init may wait for the server before going offline
HISTOGRAM_BINS = 10
LEVEL_HISTOGRAM = "codec/level_hist"
_COMMAND_RUN: list = []  # the W&B run of the sweep or experiment in progress (`command_run`), if any


def level_edges(scale: LevelScale) -> np.ndarray:
    """The level histogram's bin edges: `HISTOGRAM_BINS` equal bins over `scale`'s range."""
    return np.linspace(scale.low - 0.5, scale.high + 0.5, HISTOGRAM_BINS + 1)


def codec_metrics(levels: np.ndarray, scale: LevelScale, codec_indices: np.ndarray | None = None,
                  names: Sequence[str] = ()) -> dict[str, Any]:
    """Mean, clean share and histogram (`level_edges`) of the batches' ``codec_level`` values; clean samples
    (`CLEAN_LEVEL`) are left out of the mean and the histogram. With several codec `names` (a ladder mix, each
    sample's position in `names` in `codec_indices`), also each codec's share of the samples and its mean level
    on its own scale (the overall mean mixes scales)."""
    compressed = levels[levels != CLEAN_LEVEL]
    metrics = {
        "codec/level_mean": float(compressed.mean()) if compressed.size else 0.0,
        "codec/clean_frac": float((levels == CLEAN_LEVEL).mean()) if levels.size else 0.0,
        LEVEL_HISTOGRAM: np.histogram(compressed, bins=level_edges(scale))[0].tolist(),
    }
    if len(names) > 1 and codec_indices is not None:
        for position, name in enumerate(names):
            mine = levels[codec_indices == position]
            kept = mine[mine != CLEAN_LEVEL]
            metrics[f"codec/{name}/frac"] = float(mine.size / levels.size) if levels.size else 0.0
            metrics[f"codec/{name}/level_mean"] = float(kept.mean()) if kept.size else 0.0
    return metrics


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def open_wandb_run(run_dir: Path, config: dict[str, Any], mode: str, project: str, run_id: str | None = None):
    """A W&B run in `run_dir` (``RUN/wandb/``), or None when W&B cannot be used.

    Online without an API key, or online with the server unreachable (``WANDB_INIT_TIMEOUT``
    seconds, default `INIT_TIMEOUT_S`), the run is opened offline instead, so nothing is lost:
    ``wandb sync RUN/wandb/offline-run-*`` uploads it later. Any other failure warns and returns None.
    """
    if mode == "online" and not _has_wandb_key():
        mode = "offline"
    try:
        import wandb
    except ImportError as error:
        warnings.warn(f"W&B disabled for this run: {error}", stacklevel=3)
        return None
    timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
    for attempt in (mode, "offline") if mode == "online" else (mode,):
        try:
            return wandb.init(project=project, dir=str(run_dir), config=config, mode=attempt, id=run_id,
                              resume="allow", reinit=True, settings=wandb.Settings(init_timeout=timeout))
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave training running
            if attempt == "online":
                warnings.warn(f"W&B online failed ({error}); logging offline, `wandb sync` uploads it later",
                              stacklevel=3)
            else:
                warnings.warn(f"W&B disabled for this run: {error}", stacklevel=3)
    return None


class MetricsLogger:
    """Appends one JSON line per `log` call and mirrors it to W&B if that works.

    Inside `command_run` (a sweep or an experiment) a logger does not open a W&B run of its own:
    it logs into the command's run under its run directory's name (``retrain/train/loss``
    against ``retrain/step``), so one command is one W&B run, as a sweep agent's run id expects.
    Every W&B call is guarded: the first failure warns and W&B is left alone from then on.
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        is_main: bool,
        wandb_mode: str = "disabled",
        project: str = "codecloop",
        run_id: str | None = None,
    ) -> None:
        self.is_main = is_main
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self._owns_run = True
        self._prefix = ""
        self.wandb_run_id = run_id
        codecs = str(config.get("codec")).split(",")
        known = all(name.strip() in codec_names() for name in codecs)
        self._level_edges = level_edges(codec_scale(codecs)) if known else None
        if not is_main or wandb_mode == "disabled":
            return
        if _COMMAND_RUN:
            self._wandb, self._owns_run, self._prefix = _COMMAND_RUN[-1], False, f"{Path(run_dir).name}/"
            self._guarded(lambda run: run.define_metric(f"{self._prefix}*", step_metric=f"{self._prefix}step"))
        else:
            self._wandb = open_wandb_run(Path(run_dir), config, wandb_mode, project, run_id)
        if self._wandb is not None:
            self.wandb_run_id = self._wandb.id

    @property
    def wandb_active(self) -> bool:
        """Whether this logger mirrors to a W&B run."""
        return self._wandb is not None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record `metrics` at optimizer step `step` (main process only)."""
        if not self.is_main:
            return
        record = {"step": step, **{key: _plain(value) for key, value in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._guarded(lambda run: self._log_wandb(run, metrics, step))

    def _log_wandb(self, run, metrics: dict[str, Any], step: int) -> None:
        import wandb

        payload = {}
        for key, value in metrics.items():
            if key == LEVEL_HISTOGRAM and self._level_edges is not None:
                payload[self._prefix + key] = wandb.Histogram(np_histogram=(np.asarray(value), self._level_edges))
            elif isinstance(value, (int, float)):
                payload[self._prefix + key] = value
        if self._owns_run:
            run.log(payload, step=step)
        else:
            run.log({**payload, f"{self._prefix}step": step})

    def log_table(self, name: str, rows: Sequence[dict[str, Any]], x: str | None = None, y: str | None = None,
                  stroke: str | None = None, title: str = "") -> None:
        """Log `rows` as the W&B table `name` and, with `x` and `y`, a line plot ``name_plot`` of `y`
        against `x`, one line per value of `stroke`; rows whose `x` or `y` is not a number (the clean
        row, an undefined recovery) stay in the table and out of the plot."""
        if self._wandb is None or not rows:
            return

        def log(run) -> None:
            import wandb

            columns, data = table_cells(rows)
            payload = {name: wandb.Table(columns=columns, data=data)}
            if x and y:
                keep = [key for key in (x, y, stroke) if key]
                points = [[finite_number(row[x]), finite_number(row[y]), *([str(row[stroke])] if stroke else [])]
                          for row in rows]
                points = [point for point in points if point[0] is not None and point[1] is not None]
                if points:
                    plot_table = wandb.Table(columns=keep, data=points)
                    payload[f"{name}_plot"] = wandb.plot.line(plot_table, x, y, stroke=stroke, title=title or name)
            run.log(payload)

        self._guarded(log)

    def log_summary(self, values: dict[str, Any]) -> None:
        """Set run-summary values (what a W&B sweep's ``metric`` reads); non-finite ones are left out."""
        if self._wandb is None:
            return
        finite = {key: value for key, value in values.items()
                  if value is not None and (not isinstance(value, float) or math.isfinite(value))}
        self._guarded(lambda run: run.summary.update(finite))

    def log_artifact(self, name: str, kind: str, paths: Sequence[Path], root: Path, copy: bool = True) -> None:
        """Log the files and folders among `paths` that exist as the W&B artifact ``<run id>-<name>``
        of type `kind`, each named by its path under `root`. ``copy=False`` leaves large files (model
        weights) in place instead of copying them to W&B's staging folder: keep them until synced."""
        existing = [Path(path) for path in paths if Path(path).exists()]
        if self._wandb is None or not existing:
            return

        def log(run) -> None:
            import wandb

            artifact = wandb.Artifact(f"{run.id}-{name}", type=kind)
            policy = "mutable" if copy else "immutable"
            for path in existing:
                entry = path.relative_to(root).as_posix()
                if path.is_dir():
                    artifact.add_dir(str(path), name=entry, policy=policy)
                else:
                    artifact.add_file(str(path), name=entry, policy=policy)
            run.log_artifact(artifact)

        self._guarded(log)

    def _guarded(self, action) -> None:
        """Run `action(run)` on the W&B run; on failure warn once and stop using W&B."""
        try:
            action(self._wandb)
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave training running
            warnings.warn(f"W&B logging failed, continuing without it: {error}", stacklevel=3)
            self._wandb = None

    def close(self, exit_code: int = 0) -> None:
        """Finish the W&B run if this logger opened it (a command's run is finished by `command_run`)."""
        if self._wandb is not None and self._owns_run:
            try:
                self._wandb.finish(exit_code=exit_code)
            except Exception as error:  # noqa: BLE001
                warnings.warn(f"W&B finish failed: {error}", stacklevel=2)
        self._wandb = None


@contextlib.contextmanager
def command_run(run_dir: Path, config: dict[str, Any], is_main: bool, wandb_mode: str, project: str,
                run_id: str | None = None) -> Iterator[MetricsLogger]:
    """The W&B run of one sweep or experiment: yields its logger, and every `MetricsLogger` opened
    inside (the training stages) logs into the same run. The run is finished on the way out,
    with the exit code of a `SystemExit` (preemption) or 1 when another exception leaves."""
    logger = MetricsLogger(run_dir, config, is_main, wandb_mode, project, run_id)
    if logger.wandb_active:
        _COMMAND_RUN.append(logger._wandb)
    exit_code = 1
    try:
        yield logger
        exit_code = 0
    except SystemExit as stop:
        exit_code = stop.code if isinstance(stop.code, int) else 1
        raise
    finally:
        _COMMAND_RUN.clear()
        logger.close(exit_code)


def table_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Columns (the first row's, then new ones) and cells of `rows` for a W&B table. A column that
    holds any text (the sweep's ``clean`` level) holds text throughout, as a W&B table column has
    one type; NaN and inf become empty cells."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    data = [[_cell(row.get(column)) for column in columns] for row in rows]
    for position in range(len(columns)):
        if any(isinstance(line[position], str) for line in data):
            for line in data:
                line[position] = None if line[position] is None else str(line[position])
    return columns, data


def _cell(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
