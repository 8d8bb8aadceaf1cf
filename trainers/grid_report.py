"""The combined tables and plot of an experiment grid (`trainers.grid`), from each cell's CSV files.

- ``grid.csv``: one row per cell x stage (baseline, retrained) x level: the cell's family and
  overrides, task, codec, metric, value, share of clean kept and (retrained rows) recovery.
- ``grid_recovery.csv``: one row per cell x compressed level: clean, baseline and retrained
  metric, both shares of clean kept, recovery.
- ``grid.md``: per task and codec, one row per cell and one column per level holding the
  baseline's share of clean kept / the recovery; the cells ranked by the share kept (the study's
  "which family is most resilient" comparison); per family the mean share kept and the median
  recovery; the failed cells.
- ``grid.png``: share of clean kept against the level, one line per cell (baseline solid,
  retrained dashed), one panel per task and codec.
- ``grid_failures.csv``: cell, error; present only while some cell failed.

Share of clean kept at level L: ``baseline(L) / clean x 100`` (``clean / baseline(L)`` for a
metric where lower is better), with ``clean`` the baseline model on uncompressed input; the
recovery is the experiment's own (``trainers.report``). Every file is written atomically.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from codecloop.dali_pipes.codecs import codec_axis, codec_title  # noqa: E402
from codecloop.tasks import get_task_class  # noqa: E402
from codecloop.trainers.config import load_yaml  # noqa: E402
from codecloop.trainers.protocol import BASELINE, RETRAINED  # noqa: E402
from codecloop.trainers.report import CLEAN, markdown_table, read_csv, write_csv, write_text  # noqa: E402

FAMILY = "family"
RESULT_FILES = ("grid.csv", "grid_recovery.csv", "grid.png")
FAILURES_FILE = "grid_failures.csv"


@dataclass
class FinishedCell:
    """A cell whose experiment finished: its name, run directory and table labels (family, overrides)."""

    name: str
    run_dir: Path
    labels: dict[str, Any]


@dataclass
class CellFailure:
    """A cell that could not run, with the reason."""

    cell: str
    error: str


@dataclass
class CellResult:
    """One finished cell's sweep and recovery rows, read back from its run directory."""

    cell: FinishedCell
    task: str
    codec: str
    metric: str
    higher_is_better: bool
    sweep: list[dict[str, str]]
    recovery: list[dict[str, str]]

    def columns(self) -> dict[str, Any]:
        """The leading columns of this cell's rows: name, labels, task and codec."""
        return {"cell": self.cell.name, **self.cell.labels, "task": self.task, "codec": self.codec}

    def kept(self, value: str | float, clean: str | float) -> float | None:
        """Share of the clean metric that `value` keeps, in percent."""
        value, clean = float(value), float(clean)
        if self.higher_is_better:
            return value / clean * 100.0 if clean else None
        return clean / value * 100.0 if value else None


def read_cell(cell: FinishedCell) -> CellResult:
    """The results of a finished cell; the metric is the one its ``recovery.csv`` was computed for."""
    config = load_yaml(cell.run_dir / "config.yaml")
    task, codec = config.get("task", "classification"), config.get("codec", "jpeg")
    task_class = get_task_class(task)
    recovery = read_csv(cell.run_dir / "recovery.csv")
    metric = next((column.removeprefix("clean_") for column in (recovery[0] if recovery else {})
                   if column.startswith("clean_")), task_class.primary_metric)
    higher = task_class.metric_higher_is_better(metric)
    return CellResult(cell, task, codec, metric, higher, read_csv(cell.run_dir / "sweep.csv"), recovery)


def grid_rows(results: list[CellResult]) -> list[dict[str, Any]]:
    """``grid.csv``: every cell's sweep rows of its metric, with the share kept and the recovery."""
    rows = []
    for result in results:
        clean = _clean(result)
        recovery_at = {row["level"]: row["recovery_pct"] for row in result.recovery}
        for row in result.sweep:
            rows.append({
                **result.columns(), "stage": row["model"], "level": row["level"], "metric": result.metric,
                "value": float(row[result.metric]), "kept_pct": result.kept(row[result.metric], clean),
                "recovery_pct": _number(recovery_at.get(row["level"])) if row["model"] == RETRAINED else None,
            })
    return rows


def recovery_table(results: list[CellResult]) -> list[dict[str, Any]]:
    """``grid_recovery.csv``: per cell and compressed level, clean / baseline / retrained and recovery."""
    rows = []
    for result in results:
        metric = result.metric
        for row in result.recovery:
            clean, base, tuned = (float(row[f"{stage}_{metric}"]) for stage in ("clean", BASELINE, RETRAINED))
            rows.append({
                **result.columns(), "level": row["level"], "metric": metric, "clean": clean, "baseline": base,
                "retrained": tuned, "baseline_kept_pct": result.kept(base, clean),
                "retrained_kept_pct": result.kept(tuned, clean), "recovery_pct": _number(row["recovery_pct"]),
            })
    return rows


def grid_markdown(results: list[CellResult], failures: list[CellFailure]) -> str:
    """``grid.md``: one table per task and codec, cells ranked by resilience, families, failures."""
    parts = ["# Experiment grid",
             f"{len(results)} cells finished, {len(failures)} failed. Each level shows the baseline's share of its "
             "clean metric kept / the recovery after retraining on compressed data, recovery = (retrained - "
             "baseline) / (clean - baseline) x 100 (`-` where the baseline lost nothing)."]
    for (task, codec), group in _groups(results).items():
        metric = group[0].metric
        levels = sorted({int(row["level"]) for result in group for row in result.recovery})
        with_family = any(FAMILY in result.cell.labels for result in group)
        table = []
        for result in group:
            by_level = {int(row["level"]): row for row in result.recovery}
            line = {"cell": result.cell.name, **({FAMILY: result.cell.labels.get(FAMILY)} if with_family else {}),
                    f"clean {metric}": _clean(result)}
            for level in levels:
                row = by_level.get(level)
                line[str(level)] = "" if row is None else (
                    f"{_percent(result.kept(row[f'{BASELINE}_{metric}'], row[f'clean_{metric}']))} / "
                    f"{_percent(_number(row['recovery_pct']))}")
            table.append(line)
        parts += [f"## {task}, {codec_title(codec)} ({metric})", markdown_table(table)]
        kept = {result.cell.name: _mean_kept(result) for result in group}
        ranked = sorted(kept, key=lambda name: -kept[name] if kept[name] == kept[name] else float("inf"))
        parts.append(f"Most resilient first (mean share of clean {metric} the baseline keeps over the levels): "
                     + ", ".join(f"`{name}` {_percent(kept[name])}" for name in ranked) + ".")
        if with_family:
            parts.append(markdown_table(_family_rows(group)))
    if failures:
        parts += ["## Failed cells", markdown_table([{"cell": f.cell, "error": f.error} for f in failures])]
    if results:
        parts.append("![grid](grid.png)")
    return "\n\n".join(parts) + "\n"


def plot_grid(results: list[CellResult], path: Path) -> None:
    """Share of clean kept against the level per cell, one panel per task and codec."""
    groups = _groups(results)
    columns = min(len(groups), 2)
    rows = (len(groups) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(6.4 * columns, 4.4 * rows), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, ((task, codec), group) in zip(axes.flat, groups.items()):
        for number, result in enumerate(group):
            clean = _clean(result)
            for stage, style in ((BASELINE, "-"), (RETRAINED, "--")):
                points = sorted((int(row["level"]), result.kept(row[result.metric], clean)) for row in result.sweep
                                if row["model"] == stage and row["level"] != CLEAN)
                axis.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3,
                          color=colors[number % len(colors)],
                          label=result.cell.name if stage == BASELINE else None)
        axis.axhline(100.0, color="gray", linestyle=":", linewidth=1)
        axis.set_title(f"{task}, {codec_title(codec)}: solid baseline, dashed retrained", fontsize=9)
        axis.set_xlabel(codec_axis(codec))
        axis.set_ylabel(f"% of clean {group[0].metric} kept")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(groups):]:
        axis.set_visible(False)
    figure.tight_layout()
    temporary = Path(path).with_name(".tmp-" + Path(path).name)
    figure.savefig(temporary, format="png")
    plt.close(figure)
    temporary.replace(path)


def write_grid_report(out: Path, finished: list[FinishedCell], failures: list[CellFailure]) -> None:
    """Write the combined files into `out`; files of an earlier run that no longer apply are removed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = [read_cell(cell) for cell in finished]
    if results:
        write_csv(grid_rows(results), out / "grid.csv")
        write_csv(recovery_table(results), out / "grid_recovery.csv")
        plot_grid(results, out / "grid.png")
    else:
        for name in RESULT_FILES:
            (out / name).unlink(missing_ok=True)
    if failures:
        write_csv([{"cell": failure.cell, "error": failure.error} for failure in failures], out / FAILURES_FILE)
    else:
        (out / FAILURES_FILE).unlink(missing_ok=True)
    write_text(out / "grid.md", grid_markdown(results, failures))


def _groups(results: list[CellResult]) -> dict[tuple[str, str], list[CellResult]]:
    groups: dict[tuple[str, str], list[CellResult]] = {}
    for result in results:
        groups.setdefault((result.task, result.codec), []).append(result)
    return groups


def _clean(result: CellResult) -> float:
    return float(next(row[result.metric] for row in result.sweep
                      if row["model"] == BASELINE and row["level"] == CLEAN))


def _mean_kept(result: CellResult) -> float:
    clean = _clean(result)
    shares = [result.kept(row[result.metric], clean) for row in result.sweep
              if row["model"] == BASELINE and row["level"] != CLEAN]
    shares = [share for share in shares if share is not None]
    return statistics.fmean(shares) if shares else float("nan")


def _family_rows(group: list[CellResult]) -> list[dict[str, Any]]:
    """Per family: its cells, the mean share kept by their baselines and the median recovery (a mean
    would follow the huge ratios of levels where the baseline lost almost nothing)."""
    families: dict[str, list[CellResult]] = {}
    for result in group:
        families.setdefault(str(result.cell.labels.get(FAMILY, "")), []).append(result)
    rows = []
    for family, members in families.items():
        recoveries = [_number(row["recovery_pct"]) for result in members for row in result.recovery]
        recoveries = [value for value in recoveries if value is not None]
        rows.append({FAMILY: family, "cells": len(members),
                     "mean kept": _percent(statistics.fmean(_mean_kept(result) for result in members)),
                     "median recovery": _percent(statistics.median(recoveries) if recoveries else None)})
    return rows


def _number(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _percent(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.0f}%"
