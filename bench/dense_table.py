"""Tables of the dense-task study (`bench/dense_study.sh`) with 95% paired-bootstrap intervals.

Reads every ``OUT/<task>-<model>/<codec>/`` experiment (``sweep.csv``, ``recovery.csv``, ``bootstrap.npz``) and
prints markdown: how much of its clean metric each baseline keeps per codec level (the paper's third finding:
encoder-decoders resist compression best), the encoder-decoder minus no-decoder difference of that share per
task, and each run's baseline, retrained and recovery per level. Intervals of shares and differences come from
the sweeps' bootstrap replicates: resample ``b`` draws the same validation images at every level and for every
model on the same data (`codecloop.tasks.bootstrap`), so a share (level / clean) and a difference between two
models are computed on each resample.

``--keep DIR`` also copies what the tables read into ``DIR/<task>-<model>/<codec>/`` (the bootstrap replicates
trimmed to the baseline's primary metric, a few dozen KB per experiment), so that the tables can be rebuilt from
DIR and a rerun of the study that starts from a copy of DIR skips the runs it holds.

Usage: python bench/dense_table.py OUT [--keep DIR] > bench/results/dense_cpu.md.part
"""

from __future__ import annotations

import csv
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from codecloop.tasks.bootstrap import interval
from codecloop.tasks.registry import get_task_class
from codecloop.trainers.progress import load_replicates, save_replicates

# model name -> family; the study pairs each encoder-decoder with a model on the same encoder without a decoder
FAMILIES = {
    "unet_resnet18": "encoder-decoder",
    "simplebaseline_resnet18": "encoder-decoder",
    "fasterrcnn_tf_efficientnet_lite0": "encoder-decoder",
    "plain_resnet18": "no decoder",
    "fasterrcnn_c4_tf_efficientnet_lite0": "no decoder",
    "fcn_resnet50": "no decoder",
}
SHOWN_LEVELS = {"jpeg": ("5", "10"), "h264": ("46", "51")}
CODEC_TITLES = {"jpeg": "JPEG", "h264": "CRF"}
TASKS = ("segmentation", "depth", "pose", "detection")


class Experiment:
    """One ``<task>-<model>/<codec>`` experiment: the baseline's metric per level with its bootstrap replicates,
    and the recovery rows."""

    def __init__(self, directory: Path) -> None:
        self.task, self.model = directory.parent.name.split("-", 1)
        self.codec = directory.name
        task_class = get_task_class(self.task)
        self.metric, self.higher_is_better = task_class.primary_metric, task_class.higher_is_better
        with (directory / "sweep.csv").open(newline="") as handle:
            self.sweep = [row for row in csv.DictReader(handle)]
        with (directory / "recovery.csv").open(newline="") as handle:
            self.recovery = list(csv.DictReader(handle))
        self.directory = directory
        self.replicates = load_replicates(directory)
        self.levels = [row["level"] for row in self.sweep if row["model"] == "baseline" and row["codec"] != "none"]

    def value(self, model: str, level: str) -> float:
        """The point estimate of the metric of `model` (baseline / retrained) at `level` (``clean`` or a level)."""
        codec = "none" if level == "clean" else self.codec
        row = next(row for row in self.sweep
                   if row["model"] == model and row["codec"] == codec and row["level"] == level)
        return float(row[self.metric])

    def resamples(self, level: str) -> np.ndarray:
        """The baseline's metric on every bootstrap resample at `level`."""
        key = "clean" if level == "clean" else f"{self.codec} {level}"
        return np.asarray(self.replicates[("baseline", key)][self.metric], np.float64)

    def kept(self, levels: list[str]) -> tuple[float, np.ndarray]:
        """The share of the clean metric the baseline keeps, averaged over `levels` (an error metric: clean /
        level), as a point estimate and per resample."""
        def share(level_value, clean_value):
            return level_value / clean_value if self.higher_is_better else clean_value / level_value

        clean, clean_resamples = self.value("baseline", "clean"), self.resamples("clean")
        with np.errstate(divide="ignore", invalid="ignore"):
            point = float(np.mean([share(self.value("baseline", level), clean) for level in levels]))
            resampled = np.mean([share(self.resamples(level), clean_resamples) for level in levels], axis=0)
        return point, resampled


def percent(point: float, resamples: np.ndarray) -> str:
    """``88% [80, 95]``."""
    low, high = interval(100 * resamples)
    return f"{100 * point:.0f}% [{low:.0f}, {high:.0f}]"


def resilience_table(experiments: dict[tuple[str, str], dict[str, Experiment]]) -> list[str]:
    """Share of the clean metric each baseline keeps at the harshest levels and on average over all."""
    header = ["task", "model", "family", "clean"]
    for codec in ("jpeg", "h264"):
        header += [f"{CODEC_TITLES[codec]} {level}" for level in SHOWN_LEVELS[codec]] + [f"mean {CODEC_TITLES[codec]}"]
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | --- |" + " ---: |" * (len(header) - 3)]
    for (task, model), by_codec in experiments.items():
        first = next(iter(by_codec.values()))
        low, high = interval(first.resamples("clean"))
        cells = [task, f"`{model}`", FAMILIES.get(model, "?"),
                 f"{first.metric} {first.value('baseline', 'clean'):.3f} [{low:.3f}, {high:.3f}]"]
        for codec in ("jpeg", "h264"):
            experiment = by_codec.get(codec)
            if experiment is None:
                cells += ["-"] * (len(SHOWN_LEVELS[codec]) + 1)
                continue
            cells += [percent(*experiment.kept([level])) if level in experiment.levels else "-"
                      for level in SHOWN_LEVELS[codec]]
            cells.append(percent(*experiment.kept(experiment.levels)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def family_differences(experiments: dict[tuple[str, str], dict[str, Experiment]]) -> list[str]:
    """Per task and codec: the encoder-decoder's mean kept share minus each no-decoder model's, paired per
    resample (same validation images)."""
    lines = ["| task | encoder-decoder | no decoder | codec | difference in mean share kept (points) | significance |",
             "| --- | --- | --- | --- | ---: | --- |"]
    for task in TASKS:
        models = [model for t, model in experiments if t == task]
        decoders = [model for model in models if FAMILIES.get(model) == "encoder-decoder"]
        plains = [model for model in models if FAMILIES.get(model) == "no decoder"]
        for decoder in decoders:
            for plain in plains:
                for codec in ("jpeg", "h264"):
                    first, second = experiments[(task, decoder)].get(codec), experiments[(task, plain)].get(codec)
                    if first is None or second is None:
                        continue
                    point_a, resampled_a = first.kept(first.levels)
                    point_b, resampled_b = second.kept(second.levels)
                    if resampled_a.shape != resampled_b.shape:
                        continue
                    low, high = interval(100 * (resampled_a - resampled_b))
                    verdict = "not significant" if low <= 0 <= high else (
                        "encoder-decoder more resilient" if low > 0 else "no decoder more resilient")
                    lines.append(f"| {task} | `{decoder}` | `{plain}` | {CODEC_TITLES[codec]} | "
                                 f"{100 * (point_a - point_b):+.0f} [{low:+.0f}, {high:+.0f}] | {verdict} |")
    return lines


def with_interval(row: dict[str, str], column: str, digits: int) -> str:
    """A recovery.csv value with its interval columns (``-`` when empty)."""
    if not row.get(column):
        return "-"
    value = f"{float(row[column]):.{digits}f}"
    if row.get(f"{column}_lo"):
        value += f" [{float(row[column + '_lo']):.{digits}f}, {float(row[column + '_hi']):.{digits}f}]"
    return value


def run_tables(experiments: dict[tuple[str, str], dict[str, Experiment]]) -> list[str]:
    """Per run and codec: baseline, retrained and recovery at each level, with intervals."""
    lines: list[str] = []
    for (task, model), by_codec in experiments.items():
        lines += ["", f"### {task}, `{model}` ({FAMILIES.get(model, '?')})", ""]
        for codec in ("jpeg", "h264"):
            experiment = by_codec.get(codec)
            if experiment is None:
                continue
            metric = experiment.metric
            intervals = {(row["model"], row["codec"], row["level"]): (row.get(f"{metric}_lo"), row.get(f"{metric}_hi"))
                         for row in experiment.sweep}
            lines += [f"| {CODEC_TITLES[codec]} | baseline {metric} | retrained {metric} | recovery % | significance |",
                      "| ---: | ---: | ---: | ---: | --- |"]
            for row in experiment.recovery:
                cells = [row["level"]]
                for model_label in ("baseline", "retrained"):
                    value = float(row[f"{model_label}_{metric}"])
                    low, high = intervals.get((model_label, codec, row["level"]), (None, None))
                    cells.append(f"{value:.3f}" + (f" [{float(low):.3f}, {float(high):.3f}]" if low else ""))
                cells += [with_interval(row, "recovery_pct", 0), row.get("significance", "")]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def versions() -> str:
    """The machine and the package versions the study ran with."""
    names = ("torch", "torchvision", "nvidia-dali-cuda130", "timm", "pycocotools")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
              if line.startswith("model name")]
    machine = f"{models[0]}, {len(models)} cores" if models else platform.machine()
    return f"{machine}; " + ", ".join(found)


def keep(experiments: dict[tuple[str, str], dict[str, Experiment]], target: Path) -> None:
    """Copy each experiment's ``sweep.csv`` and ``recovery.csv``, and its baseline's primary-metric replicates,
    to ``target/<task>-<model>/<codec>/``."""
    for by_codec in experiments.values():
        for experiment in by_codec.values():
            destination = target / experiment.directory.parent.name / experiment.codec
            destination.mkdir(parents=True, exist_ok=True)
            for name in ("sweep.csv", "recovery.csv"):
                shutil.copyfile(experiment.directory / name, destination / name)
            save_replicates(destination, {key: {experiment.metric: metrics[experiment.metric]}
                                          for key, metrics in experiment.replicates.items() if key[0] == "baseline"})


def main(out: Path, keep_dir: Path | None = None) -> None:
    experiments: dict[tuple[str, str], dict[str, Experiment]] = {}
    for directory in sorted(out.glob("*-*/*")):
        if (directory / "recovery.csv").is_file() and (directory / "bootstrap.npz").is_file():
            experiment = Experiment(directory)
            experiments.setdefault((experiment.task, experiment.model), {})[experiment.codec] = experiment
    order = {task: position for position, task in enumerate(TASKS)}
    experiments = dict(sorted(experiments.items(), key=lambda item: (order.get(item[0][0], 99), item[0][1])))
    print(f"Ran on: {versions()}\n")
    print("## Share of its clean metric each baseline keeps\n")
    print("\n".join(resilience_table(experiments)))
    print("\n## Encoder-decoder against no decoder, same encoder, same images\n")
    print("\n".join(family_differences(experiments)))
    print("\n## Each run\n")
    print("\n".join(run_tables(experiments)))
    if keep_dir is not None:
        keep(experiments, keep_dir)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if len(arguments) not in (1, 3) or (len(arguments) == 3 and arguments[1] != "--keep"):
        sys.exit(__doc__.split("\n\n")[-1])
    main(Path(arguments[0]), Path(arguments[2]) if len(arguments) == 3 else None)
