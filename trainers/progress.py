"""What a sweep or an experiment has finished, kept so that ``--resume`` picks up where it stopped.

``RUN/progress.json`` holds the metrics of every sweep level evaluated (per model label), the
training stages finished, the command's W&B run id and the settings those results depend on (a
resume with other settings is refused, naming the keys that changed); ``RUN/bootstrap.npz`` holds each
evaluated level's bootstrap replicates per metric (`codecloop.tasks.bootstrap`), from which recovery
gets its interval. The main process rewrites both after each finished unit (temporary file + rename,
so each is always whole); every process reads the same content (the main process's copy, broadcast).
Without ``--resume`` a command starts afresh and overwrites them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from codecloop.trainers.config import Config, config_keys, run_keys
from codecloop.trainers.report import Replicates, level_key, write_text

PROGRESS_FILE = "progress.json"
BOOTSTRAP_FILE = "bootstrap.npz"


def result_settings(config: Config) -> dict[str, Any]:
    """The keys a sweep's numbers depend on: every hyper-parameter of the run's task (generic or its own)
    but ``levels`` and ``codecs`` (a resumed sweep may add levels and codecs), and the checkpoint evaluated."""
    values, keys = config.to_dict(), config_keys()
    return {name: values[name] for name in run_keys(config.task)
            if (keys[name].metadata["group"] == "hyper" and name not in ("levels", "codecs")) or name == "checkpoint"}


def load_replicates(run_dir: Path) -> Replicates:
    """The bootstrap replicates of a run directory by (model label, `level_key`) and metric (none without
    ``bootstrap.npz``)."""
    path = Path(run_dir) / BOOTSTRAP_FILE
    if not path.is_file():
        return {}
    out: Replicates = {}
    with np.load(path) as stored:
        for name in stored.files:
            label, key, metric = name.split("|", 2)
            out.setdefault((label, key), {})[metric] = stored[name]
    return out


def save_replicates(run_dir: Path, replicates: Replicates) -> None:
    """Write `replicates` to ``bootstrap.npz`` atomically."""
    path = Path(run_dir) / BOOTSTRAP_FILE
    temporary = path.with_name(".tmp-" + path.name)
    with temporary.open("wb") as handle:
        np.savez(handle, **{f"{label}|{key}|{metric}": values for (label, key), metrics in replicates.items()
                            for metric, values in metrics.items()})
    temporary.replace(path)


class RunProgress:
    """Finished sweep levels and training stages of one run directory (see the module docstring)."""

    def __init__(self, path: Path, state: dict[str, Any], is_main: bool) -> None:
        self.path = Path(path)
        self.state = {"sweeps": {}, "stages": [], "wandb_run_id": None, "settings": {}, **state}
        self.is_main = is_main
        self.replicates: Replicates = {}

    @classmethod
    def open(cls, run_dir: Path, config: Config, accelerator: Accelerator) -> "RunProgress":
        """The progress recorded in `run_dir` when ``config.resume``, else a fresh one (written at once,
        so that a stale file is never taken up by a later resume)."""
        path = Path(run_dir) / PROGRESS_FILE
        loaded: list[Any] = [None]
        if accelerator.is_main_process and config.resume and path.is_file():
            try:
                loaded = [json.loads(path.read_text())]
            except json.JSONDecodeError as error:
                loaded = [f"{path} is not valid JSON ({error}); delete it to start the run afresh"]
        if accelerator.num_processes > 1:
            broadcast_object_list(loaded)
        if isinstance(loaded[0], str):
            raise ValueError(loaded[0])
        state, settings = loaded[0] or {}, result_settings(config)
        changed = [key for key, value in settings.items() if state.get("settings", {}).get(key, value) != value]
        if changed:
            raise ValueError(f"{path}: --resume with changed config key(s) {', '.join(changed)}; rerun the "
                             "interrupted command unchanged, or choose another --out")
        progress = cls(path, {**state, "settings": settings}, accelerator.is_main_process)
        if config.resume:
            replicates = [load_replicates(path.parent) if accelerator.is_main_process else None]
            if accelerator.num_processes > 1:
                broadcast_object_list(replicates)
            progress.replicates = replicates[0]
        else:
            progress._save(with_replicates=True)
        return progress

    def finished_levels(self, label: str) -> dict[str, dict[str, float]]:
        """Metrics of the levels of sweep `label` already evaluated, by `level_key`."""
        return dict(self.state["sweeps"].get(label, {}))

    def add_level(self, label: str, level: int | None, metrics: dict[str, float], codec: str = "",
                  replicates: Mapping[str, np.ndarray] | None = None) -> None:
        """Record one evaluated level of `codec` in sweep `label`, with its bootstrap `replicates` by metric."""
        self.state["sweeps"].setdefault(label, {})[level_key(level, codec)] = metrics
        if replicates:
            self.replicates[(label, level_key(level, codec))] = dict(replicates)
        self._save(with_replicates=bool(replicates))

    def stage_finished(self, name: str) -> bool:
        """Whether training stage `name` ran to its end."""
        return name in self.state["stages"]

    def finish_stage(self, name: str) -> None:
        """Record that training stage `name` ran to its end (its final weights are written)."""
        if name not in self.state["stages"]:
            self.state["stages"].append(name)
        self._save()

    @property
    def wandb_run_id(self) -> str | None:
        """The W&B run id of the command, to continue the same run on resume."""
        return self.state["wandb_run_id"]

    @wandb_run_id.setter
    def wandb_run_id(self, run_id: str | None) -> None:
        if run_id != self.state["wandb_run_id"]:
            self.state["wandb_run_id"] = run_id
            self._save()

    def _save(self, with_replicates: bool = False) -> None:
        if not self.is_main:
            return
        if with_replicates:
            save_replicates(self.path.parent, self.replicates)
        write_text(self.path, json.dumps(self.state, indent=1))
