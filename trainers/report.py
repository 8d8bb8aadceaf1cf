"""Tables, plots and the Markdown report of a sweep or an experiment.

Recovery at level L (DESIGN.md): ``(retrained(L) - baseline(L)) / (clean - baseline(L)) * 100``
with ``clean`` the baseline model on uncompressed input. The ratio is the same for error
metrics (all signs flip), so one formula serves both. Where the baseline lost less than
`MIN_DROP` at a level, recovery is not defined there and reported empty.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from codecloop.dali_pipes.codecs import codec_axis, codec_title  # noqa: E402

CLEAN = "clean"
MIN_DROP = 1e-6


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
    baseline: Sequence[dict[str, Any]], retrained: Sequence[dict[str, Any]], metric: str
) -> list[dict[str, Any]]:
    """Per compressed codec level: its bits per pixel, clean, baseline, retrained metric and recovery in percent."""
    clean = float(next(row[metric] for row in baseline if str(row["level"]) == CLEAN))
    retrained_at = {(str(row["codec"]), str(row["level"])): float(row[metric]) for row in retrained}
    rows = []
    for row in baseline:
        level = str(row["level"])
        if level == CLEAN:
            continue
        base, tuned = float(row[metric]), retrained_at[(str(row["codec"]), level)]
        drop = clean - base
        recovery = (tuned - base) / drop * 100.0 if abs(drop) > MIN_DROP else None
        rows.append({
            "codec": row["codec"], "level": level, "bpp": finite_number(row.get("bpp")), f"clean_{metric}": clean,
            f"baseline_{metric}": base, f"retrained_{metric}": tuned, "recovery_pct": recovery,
        })
    return rows


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
        points = sorted((int(row["level"]), float(row[metric])) for row in rows)
        axes[0][0].plot([p[0] for p in points], [p[1] for p in points], label=name, **style)
        if with_rate:
            rated = sorted((finite_number(row.get("bpp")), float(row[metric])) for row in rows if finite_number(row.get("bpp")))
            axes[0][1].plot([p[0] for p in rated], [p[1] for p in rated], label=name, **style)
    for label, rows in curves.items():
        clean = [float(row[metric]) for row in rows if str(row["level"]) == CLEAN]
        for axis in axes[0]:
            if clean:
                axis.axhline(clean[0], linestyle="--", color=colors[labels.index(label) % len(colors)], alpha=0.6,
                             label=f"{label}, clean input")
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
    """A Markdown table of `rows`; floats with 4 decimals, missing values empty."""
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(column)) for column in columns) + " |")
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
