"""Experiment grids without W&B: expand a grid file locally and run one experiment per cell.

A grid file is YAML with these top-level keys (all optional, but `grid` or `cells` must give cells):

```yaml
config: ../configs/segmentation.yaml  # base config file, relative to the grid file's folder
base:                                 # config keys every cell gets (win over `config`)
  epochs: 5
cells:                                # explicit cells, each crossed with every point of `grid`
  - {model: unet_resnet18, family: encoder-decoder}
  - {model: plain_resnet18, family: no decoder}
grid:                                 # config key -> list of values: their Cartesian product
  codec: [jpeg, h264]
launcher: torchrun --nproc_per_node 8 # run each cell as `LAUNCHER -m codecloop experiment ...`
```

A cell's values resolve defaults < `config` < `base` < its `cells:` entry and grid point <
command-line flags; a flag may not set a key the cells vary. Every key is a config key except
`family` in a `cells:` entry: a free label carried into the tables, never into the config.
`out` and `resume` belong to the grid: each cell runs in ``OUT/<cell name>/`` with
``resume: true``. Paths inside config values (``data``, ``pretrained``) are relative to the
working directory, as on the command line.

A cell's name is its overrides as ``key=value`` joined by commas, cells entry first, e.g.
``model=unet_resnet18,codec=jpeg`` (list values joined by ``+``, characters outside
``[A-Za-z0-9._,=+-]`` replaced by ``_``, names over 120 characters shortened with a hash).

`run_grid` first checks every cell (keys, values, dataset, task and model) and reports the bad
ones; then runs the good ones one after another, in this process through `run_command` or, with
a launcher, as a subprocess each. A cell whose directory holds ``recovery.csv`` and
``sweep.csv`` is finished and skipped; one with partial results resumes from its checkpoints;
one whose ``config.yaml`` has other hyper-parameters is a failure, never mixed in. In-process
cells share one accelerate state, so they cannot differ in ``precision`` (use a launcher).
The combined tables are described in `trainers.grid_report`.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from codecloop.trainers.commands import run_command
from codecloop.trainers.config import (Config, check_task_keys, coerce, config_keys, load_yaml, read_yaml_mapping,
                                       save_yaml)
from codecloop.trainers.grid_report import FAMILY, CellFailure, FinishedCell, write_grid_report
from codecloop.trainers.protocol import make_task

GRID_FILE_KEYS = ("config", "base", "cells", "grid", "launcher")
GRID_OWNED_KEYS = ("out", "resume")
# Keys whose change makes earlier results of a cell another experiment (runtime settings do not).
RESULT_KEYS = tuple(name for name, item in config_keys().items() if item.metadata["group"] == "hyper") + ("checkpoint",)
FINISHED_FILES = ("recovery.csv", "sweep.csv")
MAX_NAME = 120
BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, NotImplementedError,
             FloatingPointError)


@dataclass
class Cell:
    """One experiment of a grid: the keys that make it, every value it runs with, its label."""

    name: str
    overrides: dict[str, Any]
    values: dict[str, Any]
    family: str | None = None


@dataclass
class Grid:
    """An expanded grid file."""

    source: Path
    cells: list[Cell]
    launcher: str | None


def load_grid(path: str | Path, flags: dict[str, Any] | None = None) -> Grid:
    """Read and expand a grid file; `flags` (command-line config keys) apply to every cell.

    Errors of the whole file (unknown top-level key, unknown key in `base` or `grid`, a flag on a
    key the cells vary, two cells of one name) raise ValueError naming the file and the key; a bad
    value or an unknown key inside one `cells:` entry is left for `cell_config` to report.
    """
    path = Path(path)
    raw = read_yaml_mapping(path, "grid", f"a mapping with keys {', '.join(GRID_FILE_KEYS)}")
    for key in raw:
        if key not in GRID_FILE_KEYS:
            raise ValueError(f"grid file {path}: unknown key {key!r} (a grid file holds {', '.join(GRID_FILE_KEYS)})")
    values = load_yaml(path.parent / raw["config"]) if raw.get("config") else {}
    base = _mapping(raw, "base", path)
    grid = _mapping(raw, "grid", path)
    for part, keys in (("base", base), ("grid", grid), ("command-line flags", flags or {})):
        _check_config_keys(keys, f"grid file {path}: {part}")
    for key, choices in grid.items():
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"grid file {path}: grid key {key!r} needs a non-empty list of values, got {choices!r}")
    entries = raw.get("cells") or []
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ValueError(f"grid file {path}: `cells` must be a list of mappings of config keys")
    if not grid and not entries:
        raise ValueError(f"grid file {path}: no cells; give `grid:` (key -> list of values) or `cells:`")
    varied = set(grid).union(*entries)
    for entry_number, entry in enumerate(entries):
        shared = sorted(set(entry) & set(grid))
        if shared:
            raise ValueError(f"grid file {path}: cells[{entry_number}] sets {shared[0]!r}, which `grid` varies")
    for key in flags or {}:
        if key in varied:
            raise ValueError(f"--{key} is varied by grid file {path}: change it there")
    launcher = raw.get("launcher")
    if launcher is not None and not isinstance(launcher, str):
        raise ValueError(f"grid file {path}: launcher must be a command line string, got {launcher!r}")
    cells = []
    for overrides in expand(grid, entries):
        family = overrides.pop(FAMILY, None)
        cells.append(Cell(cell_name(overrides), overrides, {**values, **base, **overrides, **(flags or {})},
                          None if family is None else str(family)))
    names = [cell.name for cell in cells]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"grid file {path}: {names.count(name)} cells get the name {name!r}; make them differ")
    return Grid(path, cells, launcher)


def expand(grid: dict[str, list], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every explicit entry crossed with every point of the grid's Cartesian product, in file order."""
    points = [dict(zip(grid, combination)) for combination in itertools.product(*grid.values())]
    return [{**entry, **point} for entry in (entries or [{}]) for point in (points or [{}])]


def cell_name(overrides: dict[str, Any]) -> str:
    """The stable, filesystem-safe name of the cell made by `overrides`."""
    if not overrides:
        return "base"
    text = ",".join(f"{key}={_name_value(value)}" for key, value in overrides.items())
    name = re.sub(r"[^A-Za-z0-9._,=+-]", "_", text)
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return name


def cell_config(cell: Cell, out: Path) -> Config:
    """The cell's validated config, run directory ``out/<name>`` and resuming; ValueError naming the key."""
    for key in cell.values:
        if key in GRID_OWNED_KEYS:
            raise ValueError(f"config key {key!r} is set by the grid (each cell runs in OUT/<cell name> and resumes)")
        if key not in config_keys():
            raise ValueError(f"unknown config key {key!r}")
    values = {key: coerce(key, value) for key, value in cell.values.items()}
    config = Config(**values, out=str(out / cell.name), resume=True).validate()
    check_task_keys(config.task, values)
    return config


def check_runnable(config: Config) -> None:
    """Build the task (dataset, task, codec and model names) and its model, as the run will."""
    make_task(config).create_model()


def is_finished(cell_dir: Path) -> bool:
    """Whether a cell's experiment wrote its results."""
    return all((cell_dir / name).is_file() for name in FINISHED_FILES)


def changed_keys(config: Config, cell_dir: Path) -> list[str]:
    """Result-changing keys whose value differs from the run already in `cell_dir` (empty if none)."""
    saved = cell_dir / "config.yaml"
    if not saved.is_file():
        return []
    earlier, current, defaults = load_yaml(saved), config.to_dict(), Config().to_dict()
    return [f"{key}: {earlier.get(key, defaults[key])!r} -> {current[key]!r}" for key in RESULT_KEYS
            if earlier.get(key, defaults[key]) != current[key]]


def run_grid(
    grid_file: str | Path, out: str | Path | None = None, flags: dict[str, Any] | None = None,
    launcher: str | None = None,
) -> list[CellFailure]:
    """`codecloop experiment --grid`: check every cell, run the unfinished good ones, write the
    combined report into `out` (default ``runs/grid-<file stem>``); returns the failed cells.

    `launcher` (``none``: this process) overrides the grid file's ``launcher``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("run a grid from one process: for several processes per cell pass "
                         "--launcher 'torchrun --nproc_per_node N' (or `accelerate launch ...`)")
    grid = load_grid(grid_file, flags)
    out = Path(out) if out else Path("runs") / f"grid-{Path(grid_file).stem}"
    launcher = grid.launcher if launcher is None else launcher
    launcher = None if not launcher or launcher.strip().lower() == "none" else launcher
    failures: list[CellFailure] = []
    pending: list[tuple[Cell, Config]] = []
    print(f"grid {grid.source}: {len(grid.cells)} cells into {out}" + (f", each with `{launcher}`" if launcher else ""))
    for cell in grid.cells:
        try:
            config = cell_config(cell, out)
            changed = changed_keys(config, out / cell.name)
            if changed:
                raise ValueError(f"{out / cell.name} holds a run with other settings ({'; '.join(changed)}): "
                                 "delete it or choose another --out")
            if is_finished(out / cell.name):
                print(f"skipping cell {cell.name}: finished ({out / cell.name} holds recovery.csv and sweep.csv)")
                continue
            check_runnable(config)
        except BAD_INPUT as error:
            failures.append(_report(cell.name, error))
            continue
        pending.append((cell, config))
    for position, (cell, config) in enumerate(pending, 1):
        cell_dir = out / cell.name
        state = "resuming" if cell_dir.is_dir() and any(cell_dir.iterdir()) else "running"
        print(f"{state} cell {position}/{len(pending)}: {cell.name}")
        try:
            if launcher:
                run_with_launcher(launcher, config, cell_dir)
            else:
                run_command("experiment", config)
        except Exception as error:  # one broken cell must not stop the others; it is reported
            failures.append(_report(cell.name, error, with_traceback=not isinstance(error, BAD_INPUT)))
        finally:
            _release_memory()
    failed = {failure.cell for failure in failures}
    finished = [FinishedCell(cell.name, out / cell.name, _labels(cell)) for cell in grid.cells
                if cell.name not in failed and is_finished(out / cell.name)]
    write_grid_report(out, finished, failures)
    print(f"grid: {len(finished)} of {len(grid.cells)} cells finished, {len(failures)} failed; "
          f"combined report: {out / 'grid.md'}")
    return failures


def run_with_launcher(launcher: str, config: Config, cell_dir: Path) -> None:
    """Run one cell as ``LAUNCHER -m codecloop experiment --config CELL/config-in.yaml --out CELL``.

    SIGTERM / SIGINT reaching this process are passed on to the launcher and the grid stops once it
    has exited (its training writes a checkpoint first), with status 128 + signal.
    """
    cell_dir.mkdir(parents=True, exist_ok=True)
    save_yaml(config, cell_dir / "config-in.yaml")
    command = [*shlex.split(launcher), "-m", "codecloop", "experiment",
               "--config", str(cell_dir / "config-in.yaml"), "--out", str(cell_dir)]
    print("  " + shlex.join(command), flush=True)
    received: list[int] = []
    child = subprocess.Popen(command)

    def forward(number: int, frame) -> None:
        received.append(number)
        child.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    stopped_by = received[0] if received else -status if status < 0 else 0
    if stopped_by:
        print(f"cell {cell_dir.name} stopped by {signal.Signals(stopped_by).name}; run the same command again to "
              "resume it", file=sys.stderr)
        raise SystemExit(128 + stopped_by)
    if status:
        raise RuntimeError(f"`{shlex.join(command)}` exited with status {status}")


def _mapping(raw: dict, key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"grid file {path}: `{key}` must be a mapping of config keys, got {value!r}")
    return value


def _check_config_keys(keys: dict[str, Any], where: str) -> None:
    for key in keys:
        if key in GRID_OWNED_KEYS:
            raise ValueError(f"{where}: {key!r} is set by the grid (each cell runs in OUT/<cell name> and resumes)")
        if key not in config_keys():
            raise ValueError(f"{where}: unknown config key {key!r}")


def _name_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(str(item) for item in value)
    return str(value)


def _labels(cell: Cell) -> dict[str, Any]:
    """The table columns of a cell: its family (when the grid gives one), then its overrides."""
    return {**({FAMILY: cell.family} if cell.family is not None else {}), **cell.overrides}


def _report(name: str, error: BaseException, with_traceback: bool = False) -> CellFailure:
    if with_traceback:
        traceback.print_exception(error, file=sys.stderr)
    print(f"cell {name}: error: {error}", file=sys.stderr)
    return CellFailure(name, str(error))


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
