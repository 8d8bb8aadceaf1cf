"""Checkpoints: accelerate's `save_state` plus the trainer position and each rank's DALI state.

Layout: ``RUN/checkpoints/step_00000100/`` holding accelerate's files, ``trainer_state.json``
and ``dali_rank<r>.cpt``. A checkpoint is written under a temporary name and renamed when
every rank has finished, so a directory named ``step_*`` is always whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from tasks.pretrained import load_pretrained

WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")


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


def save_checkpoint(
    accelerator: Accelerator, run_dir: Path, state: TrainState, dali_state: bytes | str, keep: int
) -> Path:
    """Write a whole checkpoint for `state`; keep only the newest `keep` of them."""
    final = Path(run_dir) / "checkpoints" / f"step_{state.step:08d}"
    temporary = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process and temporary.exists():
        shutil.rmtree(temporary)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    payload = dali_state.encode() if isinstance(dali_state, str) else dali_state
    (temporary / f"dali_rank{accelerator.process_index}.cpt").write_bytes(payload)
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


def load_checkpoint(accelerator: Accelerator, directory: Path) -> tuple[TrainState, bytes]:
    """Restore model/optimizer/scheduler/RNG from `directory`; returns the state and this rank's DALI state."""
    directory = Path(directory)
    state = TrainState(**json.loads((directory / "trainer_state.json").read_text()))
    if state.world_size != accelerator.num_processes:
        raise ValueError(
            f"checkpoint {directory} was written by {state.world_size} processes; this run has "
            f"{accelerator.num_processes}: resume with the same number of processes"
        )
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


def load_model_weights(model: torch.nn.Module, path: str | Path) -> str:
    """Load weights from a file, checkpoint dir or run dir into `model`; errors name the file."""
    return load_pretrained(model, find_weights(path))
