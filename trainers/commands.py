"""Entry points behind the CLI subcommands: set up the accelerator and run directory, then run."""

from __future__ import annotations

import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from trainers.checkpoint import check_resumable
from trainers.config import Config, save_yaml
from trainers.loop import make_accelerator
from trainers.protocol import make_task, run_experiment, run_sweep, train


def prepare_run(command: str, config: Config) -> tuple[Accelerator, Path]:
    """Validate the config, create the accelerator and the run directory (same on every rank)."""
    config.validate()
    accelerator = make_accelerator(config)
    set_seed(config.seed, device_specific=True)
    run_dir = [config.out or f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if accelerator.num_processes > 1:
        broadcast_object_list(run_dir)
    path = Path(run_dir[0])
    if config.resume:
        check_resumable(path, config.task, accelerator.num_processes)
    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
        save_yaml(config.replace(out=str(path)), path / "config.yaml")
    accelerator.wait_for_everyone()
    return accelerator, path


def run_command(command: str, config: Config) -> Path:
    """Run `train`, `sweep` or `experiment` with `config`; returns the run directory."""
    if command not in ("train", "sweep", "experiment"):
        raise ValueError(f"unknown command {command!r}")
    task = make_task(config)
    accelerator, run_dir = prepare_run(command, config)
    if command == "train":
        train(config, task, run_dir, accelerator)
    elif command == "sweep":
        run_sweep(config, task, run_dir, accelerator)
    else:
        run_experiment(config, task, run_dir, accelerator)
    accelerator.wait_for_everyone()
    accelerator.print(f"run directory: {run_dir}")
    accelerator.end_training()
    return run_dir
