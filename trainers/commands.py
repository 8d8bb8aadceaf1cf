"""Entry points behind the CLI subcommands: check everything, set up the accelerator and run directory,
then run. Nothing is written into a run directory before every check has passed."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from codecloop.trainers.checkpoint import check_resumable, ensure_fresh, remove_leftovers
from codecloop.trainers.config import Config, coerce, read_yaml_mapping, save_yaml
from codecloop.trainers.loop import make_accelerator
from codecloop.trainers.progress import result_settings
from codecloop.trainers.protocol import BASELINE, RETRAIN_STAGE, load_model, make_task, run_experiment, run_sweep, train
from codecloop.trainers.run_lock import RunDirectoryBusy, RunLock
from codecloop.tasks.layout_errors import MissingFilesError

RUN_COMMANDS = ("train", "sweep", "experiment")


def changed_settings(run_dir: Path, config: Config) -> list[str]:
    """The keys a run's results depend on (hyper-parameters and the checkpoint) whose value differs
    between `config` and the run directory's ``config.yaml``."""
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        return []
    recorded = read_yaml_mapping(config_file, "config", "a mapping of keys to values")
    return [key for key, value in result_settings(config).items()
            if key in recorded and coerce(key, recorded[key]) != value]


def check_run_directory(command: str, run_dir: Path, config: Config, world_size: int) -> None:
    """Refuse, before anything is written, a run directory this command may not use: a resume of another
    task, world size or settings (naming the keys), or a fresh run over an earlier training run."""
    if config.resume:
        check_resumable(run_dir, config.task, world_size)
        changed = changed_settings(run_dir, config)
        if changed:
            raise ValueError(f"{run_dir / 'config.yaml'}: --resume with changed config key(s) {', '.join(changed)}; "
                             "rerun the interrupted command unchanged, or choose another --out")
    elif command == "train":
        ensure_fresh(run_dir, resume=False)
    elif command == "experiment":
        for stage in (BASELINE, RETRAIN_STAGE):
            ensure_fresh(run_dir / stage, resume=False)


@contextlib.contextmanager
def opened_run(command: str, config: Config) -> Iterator[tuple[Accelerator, Path]]:
    """The accelerator and the run directory (the same on every rank), held for the command.

    In order: the directory's lock (a second command on it stops, naming the holder), every check,
    and only then a write: leftovers of an interrupted save removed, ``config.yaml`` saved. A refused
    command leaves the directory as it found it; the lock is released when the command ends.
    """
    accelerator = make_accelerator(config)
    set_seed(config.seed, device_specific=True)
    run_dir = [config.out or f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"]
    if accelerator.num_processes > 1:
        broadcast_object_list(run_dir)
    path, lock = Path(run_dir[0]), RunLock(run_dir[0])
    existed = path.exists()
    busy: list[str | None] = [None]
    if accelerator.is_main_process:
        try:
            stale = lock.acquire(command)
            if stale:
                print(stale)
        except RunDirectoryBusy as error:
            busy = [str(error)]
    if accelerator.num_processes > 1:
        broadcast_object_list(busy)
    if busy[0]:
        raise RunDirectoryBusy(busy[0])
    try:
        check_run_directory(command, path, config, accelerator.num_processes)
    except Exception:
        lock.release()
        if not existed and accelerator.is_main_process:
            shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        if accelerator.is_main_process:
            remove_leftovers(path)
            save_yaml(config.replace(out=str(path)), path / "config.yaml")
        accelerator.wait_for_everyone()
        yield accelerator, path
    finally:
        lock.release()


def run_command(command: str, config: Config) -> Path:
    """Run `train`, `sweep` or `experiment` with `config`; returns the run directory.

    ``--checkpoint`` is loaded first, for every command (a file that does not exist, another task's
    run or another model's weights is refused naming the keys), and the model starts from it.
    """
    if command not in RUN_COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    config.validate()
    task = make_task(config)
    model: torch.nn.Module | None = load_model(config, task) if config.checkpoint else None
    with opened_run(command, config) as (accelerator, run_dir):
        if command == "train":
            train(config, task, run_dir, accelerator, model=model)
        elif command == "sweep":
            run_sweep(config, task, run_dir, accelerator, model)
        else:
            run_experiment(config, task, run_dir, accelerator, model)
        accelerator.wait_for_everyone()
    accelerator.print(f"run directory: {run_dir}")
    accelerator.end_training()
    return run_dir


def check_data(config: Config) -> int:
    """Build each split's sample index as a run would and print what it holds, every file skipped (with
    why) and every file a split or annotation file names but the disk lacks; 2 if a split is unreadable."""
    config.validate()
    task = make_task(config)
    status = 0
    for split in ("train", "val"):
        if not task.has_split(split):
            print(f"{split}: absent")
            continue
        try:
            index = task.sample_index(split)
        except MissingFilesError as error:
            print(f"{split}: {error.source} names {len(error.missing)} missing file(s):")
            for path in error.missing:
                print(f"  {path}")
            status = 2
            continue
        counts = "".join(f", {key} {value}" for key, value in sorted(index.counts.items()))
        print(f"{split}: {len(index)} samples, {len(index.skipped)} file(s) skipped{counts}")
        for path, reason in index.skipped:
            print(f"  skipped {path}: {reason}")
    return status
