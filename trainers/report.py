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

from codecloop.dali_pipes.codecs import codec_axis  # noqa: E402

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


def recovery_rows(
    baseline: Sequence[dict[str, Any]], retrained: Sequence[dict[str, Any]], metric: str
) -> list[dict[str, Any]]:
    """Per compressed level: clean, baseline, retrained metric and recovery in percent."""
    clean = float(next(row[metric] for row in baseline if str(row["level"]) == CLEAN))
    retrained_at = {str(row["level"]): float(row[metric]) for row in retrained}
    rows = []
    for row in baseline:
        level = str(row["level"])
        if level == CLEAN:
            continue
        base, tuned = float(row[metric]), retrained_at[level]
        drop = clean - base
        recovery = (tuned - base) / drop * 100.0 if abs(drop) > MIN_DROP else None
        rows.append({
            "codec": row["codec"], "level": level, f"clean_{metric}": clean, f"baseline_{metric}": base,
            f"retrained_{metric}": tuned, "recovery_pct": recovery,
        })
    return rows


def plot_levels(
    curves: dict[str, Sequence[dict[str, Any]]], metric: str, path: Path, codec: str = "jpeg"
) -> None:
    """Metric against compression level, one line per curve, clean values as dashed lines."""
    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (label, rows), color in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        points = sorted((int(row["level"]), float(row[metric])) for row in rows if str(row["level"]) != CLEAN)
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=label)
        clean = [float(row[metric]) for row in rows if str(row["level"]) == CLEAN]
        if clean:
            axis.axhline(clean[0], linestyle="--", color=color, alpha=0.6, label=f"{label}, clean input")
    axis.set_xlabel(codec_axis(codec))
    axis.set_ylabel(metric)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    temporary = Path(path).with_name(".tmp-" + Path(path).name)
    figure.savefig(temporary, format="png")
    plt.close(figure)
    temporary.replace(path)


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
