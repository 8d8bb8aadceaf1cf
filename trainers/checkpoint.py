"""Checkpoints: accelerate's `save_state` plus the trainer position and each rank's DALI state.

Layout: ``RUN/checkpoints/step_00000100/`` holding accelerate's files, ``trainer_state.json``
and ``dali_rank<r>.cpt``. A checkpoint is written under a temporary name and renamed when
every rank has finished, so a directory named ``step_*`` is always whole.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator

from codecloop.tasks.weights import load_pretrained, read_state_dict

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")
BATCH_COUNTER = "num_batches_tracked"
FINAL_TEMPORARY = ".final.tmp"
LOW_SPACE = 64 * 2**20  # bytes: below this, a failed write is taken for a full disk


class DiskFullError(OSError):
    """A save ran out of space; its temporary was removed and the last whole checkpoint named."""


@dataclass
class TrainState:
    """Where training stands: optimizer steps, epoch and batches consumed in it."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    world_size: int = 1
    wandb_run_id: str | None = None
    skipped_nonfinite: int = 0


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    return sorted(root.glob("step_*")) if root.is_dir() else []


def ensure_fresh(run_dir: Path, resume: bool) -> None:
    """Refuse to start a new training run over an earlier one unless resuming it."""
    if not resume and (checkpoint_dirs(run_dir) or (Path(run_dir) / "metrics.jsonl").exists()):
        raise ValueError(f"run directory {run_dir} already holds a training run: pass --resume to continue "
                         "it, or choose another --out")


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Remove what an interrupted save left in `run_dir` (a ``checkpoints/.step_*.tmp`` folder, a
    ``.final.tmp`` folder, ``*.tmp`` / ``.tmp-*`` files, in stage folders too, W&B's own files aside),
    so that it neither fills the disk nor is ever read; returns what was removed."""
    removed = []
    for folder, subfolders, files in os.walk(run_dir):
        subfolders[:] = [name for name in subfolders if name != "wandb"]
        for name in [*subfolders, *files]:
            if name.endswith(".tmp") or name.startswith(".tmp-") or ".tmp-" in name:
                removed.append(Path(folder) / name)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    if removed:
        print(f"removed {len(removed)} leftover(s) of an interrupted save in {run_dir}: "
              f"{', '.join(str(path) for path in removed[:3])}")
    return removed


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write is a full disk: ENOSPC, or torch's zip writer failing with little space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, RuntimeError) and _free_bytes(folder) < LOW_SPACE


def _saving(run_dir: Path, temporary: Path, write: Callable[[], None]) -> None:
    """Run `write` (which fills `temporary`); on a full disk remove the temporary and say so plainly."""
    try:
        write()
    except (OSError, RuntimeError) as error:
        if not _disk_full(error, temporary.parent):
            raise
        shutil.rmtree(temporary, ignore_errors=True)
        last = (checkpoint_dirs(run_dir) or ["none"])[-1]
        free = _free_bytes(temporary.parent)
        raise DiskFullError(errno.ENOSPC, f"the disk holding {run_dir} is full ({free / 2**20:.0f} MiB free) while "
                            f"writing {temporary.name}, which was removed; the last whole checkpoint is {last}. "
                            "Free space, then rerun the same command with --resume") from error


def save_checkpoint(
    accelerator: Accelerator, run_dir: Path, state: TrainState, dali_state: bytes | str, keep: int
) -> Path:
    """Write a whole checkpoint for `state`; keep only the newest `keep` of them."""
    final = Path(run_dir) / "checkpoints" / f"step_{state.step:08d}"
    temporary = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    payload = dali_state.encode() if isinstance(dali_state, str) else dali_state

    def write() -> None:
        accelerator.save_state(str(temporary))
        (temporary / f"dali_rank{accelerator.process_index}.cpt").write_bytes(payload)

    _saving(run_dir, temporary, write)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
        if final.exists():
            shutil.rmtree(final)
        temporary.rename(final)
        for old in checkpoint_dirs(run_dir)[: -max(1, keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_final_weights(accelerator: Accelerator, model: torch.nn.Module, run_dir: Path) -> None:
    """The trained model's weights in `run_dir`, each file written whole under a temporary folder and
    renamed into place (a kill or a full disk never leaves a truncated weights file)."""
    run_dir = Path(run_dir)
    temporary = run_dir / FINAL_TEMPORARY
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    _saving(run_dir, temporary, lambda: accelerator.save_model(model, temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for file in sorted(temporary.iterdir()):
            file.replace(run_dir / file.name)
        temporary.rmdir()
    accelerator.wait_for_everyone()


def check_resumable(run_dir: Path, task: str, world_size: int) -> None:
    """Before a resumed run writes into `run_dir`: refuse a run of another task (its ``config.yaml``)
    or a last checkpoint written by another number of processes, naming both."""
    their_task, config_file = run_task(run_dir)
    if their_task and their_task != task:
        raise ValueError(f"run directory {run_dir} holds a {their_task} run ({config_file}); this run's task is "
                         f"{task}: resume with --task {their_task}, or choose another --out")
    last = checkpoint_dirs(run_dir)[-1:]
    if last:
        _check_world_size(last[0], TrainState(**json.loads((last[0] / "trainer_state.json").read_text())), world_size)


def _check_world_size(directory: Path, state: TrainState, world_size: int) -> None:
    if state.world_size != world_size:
        raise ValueError(
            f"checkpoint {directory} was written by {state.world_size} processes; this run has "
            f"{world_size}: resume with the same number of processes"
        )


def load_checkpoint(accelerator: Accelerator, directory: Path) -> tuple[TrainState, bytes]:
    """Restore model/optimizer/scheduler/RNG from `directory`; returns the state and this rank's DALI state."""
    directory = Path(directory)
    state = TrainState(**json.loads((directory / "trainer_state.json").read_text()))
    _check_world_size(directory, state, accelerator.num_processes)
    try:
        accelerator.load_state(str(directory))
    except (RuntimeError, KeyError, ValueError) as error:
        raise ValueError(f"checkpoint {directory} does not fit this model/optimizer: {error}") from error
    dali_state = (directory / f"dali_rank{accelerator.process_index}.cpt").read_bytes()
    return state, dali_state


def find_weights(path: str | Path) -> Path:
    """The weights file behind `path`: a file, a checkpoint dir, or a run dir (its final model)."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    for name in WEIGHTS_NAMES:
        if (path / name).is_file():
            return path / name
    checkpoints = checkpoint_dirs(path)
    if checkpoints:
        return find_weights(checkpoints[-1])
    raise FileNotFoundError(f"checkpoint {path} holds no {' or '.join(WEIGHTS_NAMES)} and no checkpoints/step_*")


def run_task(path: str | Path) -> tuple[str | None, Path | None]:
    """The task named by the ``config.yaml`` of the run that holds `path` (a run dir, one of its
    ``checkpoints/step_*`` dirs or a weights file in either), and that file; Nones if there is none."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if folder.name.startswith("step_") and folder.parent.name == "checkpoints":
        folder = folder.parent.parent
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        return None, None
    try:
        values = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{config_file} is not valid YAML: {error}") from error
    task = values.get("task") if isinstance(values, dict) else None
    return (str(task), config_file) if task else (None, None)


def _brief(keys: list[str], shown: int = 3) -> str:
    """The first `shown` of `keys`, then how many more."""
    more = f", +{len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def key_differences(model: torch.nn.Module, weights: Path) -> str:
    """Briefly, the state-dict keys the model and the weights file do not share ('' when they all match);
    BatchNorm batch counters are left out (loading ignores them)."""
    try:
        source = read_state_dict(weights)
    except (ValueError, FileNotFoundError):
        return ""
    target = model.state_dict()
    missing = [key for key in target if key not in source and not key.endswith(BATCH_COUNTER)]
    unexpected = [key for key in source if key not in target and not key.endswith(BATCH_COUNTER)]
    parts = [f"{len(missing)} model keys not in the file ({_brief(missing)})"] if missing else []
    parts += [f"{len(unexpected)} file keys not in the model ({_brief(unexpected)})"] if unexpected else []
    return "; ".join(parts)


def load_model_weights(model: torch.nn.Module, path: str | Path, task: str | None = None) -> str:
    """Load weights from a file, checkpoint dir or run dir into `model`; errors name the file.

    With `task`, a run whose ``config.yaml`` names another task is refused before loading; weights
    that do not fit the model are refused with the file and the keys they do not share.
    """
    weights = find_weights(path)
    their_task, config_file = run_task(path)
    if task and their_task and their_task != task:
        raise ValueError(f"checkpoint {path} comes from a {their_task} run ({config_file}); this run's task is "
                         f"{task}: pass a --checkpoint trained for {task}")
    try:
        return load_pretrained(model, weights)
    except ValueError as error:
        differences = key_differences(model, weights)
        raise ValueError(f"{error}; {differences}" if differences else str(error)) from error
