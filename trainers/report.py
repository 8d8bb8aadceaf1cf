"""Tables, plots and the Markdown report of a sweep or an experiment.

Recovery at level L (DESIGN.md): ``(retrained(L) - baseline(L)) / (clean - baseline(L)) * 100``
with ``clean`` the baseline model on uncompressed input. The ratio is the same for error
metrics (all signs flip), so one formula serves both. Where the baseline lost less than
`MIN_DROP` at a level, recovery is not defined there and reported empty. Its 95% interval comes
from the paired bootstrap replicates of the three evaluations (`codecloop.tasks.bootstrap`): recovery
computed on each resample; an interval that includes 0 is marked "not significant".

A metric column ``m`` with ``m_lo`` and ``m_hi`` beside it shows as ``m [lo, hi]`` in Markdown tables
and as error bars in the plots.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from codecloop.dali_pipes.codecs import codec_axis, codec_title  # noqa: E402
from codecloop.tasks.bootstrap import interval, ratio_replicates  # noqa: E402

CLEAN = "clean"
MIN_DROP = 1e-6
NOT_SIGNIFICANT = "not significant"
Replicates = dict[tuple[str, str], dict[str, np.ndarray]]  # (model label, `level_key`) -> metric -> replicates


def level_key(level: int | str | None, codec: str = "") -> str:
    """The key of a sweep level: ``clean``, or the codec and the quality / CRF (``webp 30``)."""
    return CLEAN if level is None or str(level) == CLEAN else f"{codec} {level}".strip()


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write `rows` (columns from the first row, then any new ones) atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV written by `write_csv`."""
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def finite_number(value: Any) -> float | None:
    """`value` as a finite float, or None (text such as ``clean``, empty cells, NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def recovery_rows(
    baseline: Sequence[dict[str, Any]], retrained: Sequence[dict[str, Any]], metric: str,
    replicates: Replicates | None = None,
) -> list[dict[str, Any]]:
    """Per compressed codec level: its bits per pixel, clean, baseline, retrained metric and recovery in percent;
    with the `replicates` of both sweeps (by model label and `level_key`, then metric), recovery's 95% interval
    (``recovery_pct_lo``, ``recovery_pct_hi``) and ``significance``."""
    clean = float(next(row[metric] for row in baseline if str(row["level"]) == CLEAN))
    retrained_at = {(str(row["codec"]), str(row["level"])): row for row in retrained}
    labels = (str(baseline[0]["model"]), str(retrained[0]["model"])) if baseline and retrained else ("", "")
    rows = []
    for row in baseline:
        level = str(row["level"])
        if level == CLEAN:
            continue
        tuned_row = retrained_at[(str(row["codec"]), level)]
        base, tuned = float(row[metric]), float(tuned_row[metric])
        drop = clean - base
        recovery = (tuned - base) / drop * 100.0 if abs(drop) > MIN_DROP else None
        out = {"codec": row["codec"], "level": level, "bpp": finite_number(row.get("bpp")),
               f"clean_{metric}": clean, f"baseline_{metric}": base, f"retrained_{metric}": tuned,
               "recovery_pct": recovery}
        rows.append({**out, **recovery_interval(replicates, labels, level_key(level, str(row["codec"])), metric,
                                                recovery)})
    return rows


def recovery_interval(replicates: Replicates | None, labels: tuple[str, str], key: str, metric: str,
                      recovery: float | None) -> dict[str, Any]:
    """Recovery's interval at level `key` from the clean, baseline and retrained replicates of `metric`, and
    whether it excludes 0; nothing where a replicate set is missing or the sets differ in length."""
    try:
        clean = replicates[(labels[0], CLEAN)][metric]
        base, tuned = replicates[(labels[0], key)][metric], replicates[(labels[1], key)][metric]
    except (KeyError, TypeError):
        return {}
    if recovery is None or not len(clean) == len(base) == len(tuned):
        return {"recovery_pct_lo": None, "recovery_pct_hi": None, "significance": ""}
    low, high = interval(ratio_replicates(tuned - base, clean - base, 100.0, MIN_DROP))
    significant = math.isfinite(low) and (low > 0 or high < 0)
    return {"recovery_pct_lo": low, "recovery_pct_hi": high,
            "significance": "significant" if significant else NOT_SIGNIFICANT if math.isfinite(low) else ""}


def curves_by_codec(curves: dict[str, Sequence[dict[str, Any]]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The compressed rows of each (model label, codec), in order of appearance."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for label, rows in curves.items():
        for row in rows:
            if str(row["level"]) != CLEAN:
                out.setdefault((label, str(row["codec"])), []).append(row)
    return out


def plot_levels(curves: dict[str, Sequence[dict[str, Any]]], metric: str, path: Path) -> None:
    """Metric against each codec's level, one line per (curve, codec), clean values as dashed lines; beside it,
    where the rows carry bits per pixel, the metric against bits per pixel (log axis), every codec on one axis."""
    series = curves_by_codec(curves)
    codecs = list(dict.fromkeys(codec for _, codec in series))
    with_rate = any(finite_number(row.get("bpp")) for rows in series.values() for row in rows)
    figure, axes = plt.subplots(1, 2 if with_rate else 1, figsize=(12.0 if with_rate else 6.4, 4.2), dpi=120,
                                squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^v<>p*h"
    labels = list(curves)
    for (label, codec), rows in series.items():
        style = dict(color=colors[labels.index(label) % len(colors)], marker=markers[codecs.index(codec) % len(markers)])
        name = label if len(codecs) == 1 else f"{label}, {codec_title(codec)}"
        _plot_points(axes[0][0], [(int(row["level"]), row) for row in rows], metric, name, style)
        if with_rate:
            _plot_points(axes[0][1], [(finite_number(row.get("bpp")), row) for row in rows
                                      if finite_number(row.get("bpp"))], metric, name, style)
    for label, rows in curves.items():
        clean = [row for row in rows if str(row["level"]) == CLEAN]
        for axis in axes[0]:
            if clean:
                color = colors[labels.index(label) % len(colors)]
                axis.axhline(float(clean[0][metric]), linestyle="--", color=color, alpha=0.6,
                             label=f"{label}, clean input")
                low, high = (finite_number(clean[0].get(f"{metric}_{end}")) for end in ("lo", "hi"))
                if low is not None and high is not None:
                    axis.axhspan(low, high, color=color, alpha=0.08)
    axes[0][0].set_xlabel(codec_axis(codecs[0]) if len(codecs) == 1 else "level, on each codec's own scale")
    if with_rate:
        axes[0][1].set_xscale("log")
        axes[0][1].set_xlabel("bits per pixel (mean over the evaluation set; log scale)")
    for axis in axes[0]:
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    temporary = Path(path).with_name(".tmp-" + Path(path).name)
    figure.savefig(temporary, format="png")
    plt.close(figure)
    temporary.replace(path)


def _plot_points(axis, points: list[tuple[float, dict[str, Any]]], metric: str, name: str, style: dict) -> None:
    """One curve of `metric` against x, with error bars where the rows carry ``<metric>_lo`` and ``_hi``."""
    points = sorted(points, key=lambda point: point[0])
    xs, ys = [x for x, _ in points], [float(row[metric]) for _, row in points]
    bounds = [(finite_number(row.get(f"{metric}_lo")), finite_number(row.get(f"{metric}_hi"))) for _, row in points]
    if points and all(low is not None and high is not None for low, high in bounds):
        errors = [[max(0.0, y - low) for y, (low, _) in zip(ys, bounds)],
                  [max(0.0, high - y) for y, (_, high) in zip(ys, bounds)]]
        axis.errorbar(xs, ys, yerr=errors, capsize=2.5, label=name, **style)
    else:
        axis.plot(xs, ys, label=name, **style)


def metric_at_bpp(points: Sequence[tuple[float, float]], bpp: float) -> float | None:
    """The metric at `bpp`, interpolated linearly in log bits per pixel between the two measured levels around
    it; None outside the measured rates (no extrapolation). `points` are (bpp, metric) pairs."""
    ordered = sorted((rate, value) for rate, value in points if rate and rate > 0)
    if not ordered or not ordered[0][0] <= bpp <= ordered[-1][0]:
        return None
    for (rate_a, value_a), (rate_b, value_b) in zip(ordered, ordered[1:]):
        if rate_a <= bpp <= rate_b:
            if rate_b == rate_a:
                return (value_a + value_b) / 2
            share = (math.log(bpp) - math.log(rate_a)) / (math.log(rate_b) - math.log(rate_a))
            return value_a + share * (value_b - value_a)
    return ordered[0][1]  # a single measured rate, equal to bpp


def equal_rate_rows(rows: Sequence[dict[str, Any]], metric: str, targets: Sequence[float],
                    higher_is_better: bool) -> list[dict[str, Any]]:
    """Per model and target bits per pixel: each codec's `metric` there (`metric_at_bpp`) and the codec that wins;
    a codec whose measured rates do not reach a target has no value there."""
    series = curves_by_codec({label: [row for row in rows if str(row["model"]) == label]
                              for label in dict.fromkeys(str(row["model"]) for row in rows)})
    codecs = list(dict.fromkeys(codec for _, codec in series))
    table = []
    for label in dict.fromkeys(label for label, _ in series):
        for target in targets:
            values = {codec: metric_at_bpp([(finite_number(row.get("bpp")), float(row[metric]))
                                            for row in series.get((label, codec), [])], target) for codec in codecs}
            known = {codec: value for codec, value in values.items() if value is not None}
            best = (max if higher_is_better else min)(known, key=known.get) if len(known) > 1 else ""
            table.append({"model": label, "bpp": target, **{f"{codec}_{metric}": values[codec] for codec in codecs},
                          "best": best})
    return table


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows`; floats with 4 decimals, missing values empty, a column with ``_lo`` and
    ``_hi`` columns beside it shown as ``value [lo, hi]``."""
    columns = list(columns or rows[0].keys())
    bounded = [column for column in columns if f"{column}_lo" in columns and f"{column}_hi" in columns]
    shown = [column for column in columns if column not in {f"{c}_{end}" for c in bounded for end in ("lo", "hi")}]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = []
        for column in shown:
            cell = _cell(row.get(column))
            low, high = (_cell(row.get(f"{column}_{end}")) for end in ("lo", "hi"))
            cells.append(f"{cell} [{low}, {high}]" if column in bounded and cell and low and high else cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return ""
    return str(int(number)) if number.is_integer() and abs(number) >= 1 else f"{number:.4f}"


def write_text(path: Path, text: str) -> None:
    """Write `text` atomically."""
    temporary = Path(path).with_name(Path(path).name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
