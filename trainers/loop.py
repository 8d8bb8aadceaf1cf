"""The accelerate training and evaluation loop, the one place it lives.

Model, optimizer and scheduler go through `accelerator.prepare`; the DALI iterator does not:
each process reads its own shard (``process_index`` / ``num_processes``) on its own GPU
(the one ``accelerator.device`` names). Evaluation keeps each rank's per-sample metrics (the pipelines drop
their padding) and gathers them once, so every sample counts once.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from codecloop.dali_pipes import LevelScale, LevelSpec, PipelineRuntime, default_num_threads
from codecloop.tasks import SampleIndex, Task
from codecloop.tasks.bootstrap import interval, mean_replicates
from codecloop.trainers.checkpoint import (TrainState, checkpoint_dirs, ensure_fresh, load_checkpoint, save_checkpoint,
                                 save_final_weights)
from codecloop.dali_pipes.codecs import codec_scale
from codecloop.trainers.config import Config, batch_codecs, config_codecs
from codecloop.trainers.logger import MetricsLogger, codec_metrics
from codecloop.trainers.restoration import FeatureRestoration


def make_accelerator(config: Config) -> Accelerator:
    """An Accelerator with bf16 autocast on GPU (``precision=auto``) and manual scheduler steps."""
    on_gpu = torch.cuda.is_available()
    bf16 = config.precision == "bf16" or (config.precision == "auto" and on_gpu)
    return Accelerator(mixed_precision="bf16" if bf16 else "no", step_scheduler_with_optimizer=False, cpu=not on_gpu)


def build_batches(
    config: Config,
    task: Task,
    index: SampleIndex,
    accelerator: Accelerator,
    training: bool,
    spec: LevelSpec,
    checkpoint: bytes | str | None = None,
    with_clean: bool = False,
):
    """This rank's shard of `index`, through the task's pipeline, on this rank's device; with `with_clean`,
    batches also carry ``clean_image``, each view without the codec (tasks whose ``clean_view`` is set)."""
    runtime = pipeline_runtime(config, task, accelerator, training)
    return task.batches(index, training=training, spec=spec, codec=batch_codecs(config), runtime=runtime,
                        checkpoint=checkpoint, **({"with_clean": True} if with_clean else {}))


def pipeline_runtime(config: Config, task: Task, accelerator: Accelerator, training: bool) -> PipelineRuntime:
    """This rank's shard, device, threads, seed, batch size and image layout for a pipeline.

    The GPU is the one `accelerator.device` names: with one visible GPU per process (a
    ``CUDA_VISIBLE_DEVICES`` per rank, as SLURM often sets it) that is ``cuda:0`` on every rank,
    whatever the local rank is.
    """
    device = accelerator.device
    return PipelineRuntime(
        batch_size=config.batch_size if training else (config.eval_batch_size or config.batch_size),
        shard_id=accelerator.process_index,
        num_shards=accelerator.num_processes,
        device_id=(device.index if device.index is not None else torch.cuda.current_device())
        if device.type == "cuda" else None,
        num_threads=config.num_threads or default_num_threads(),
        seed=config.seed,  # the same on every rank: the plan deals one permutation per epoch to all ranks
        prefetch_queue_depth=config.prefetch,
        channels_last=uses_channels_last(config, task),
    )


def build_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases and normalization parameters."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the peak rate, then cosine decay to zero at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def freeze_all_but(model: torch.nn.Module, prefixes: str | None) -> None:
    """Train only parameters whose name starts with one of the comma-separated `prefixes`."""
    if not prefixes:
        return
    wanted = tuple(prefix.strip() for prefix in prefixes.split(",") if prefix.strip())
    names = [name for name, _ in model.named_parameters()]
    unmatched = [prefix for prefix in wanted if not any(name.startswith(prefix) for name in names)]
    if unmatched:
        raise ValueError(f"config key 'train_layers': no parameter of the model starts with {unmatched[0]!r}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(wanted))


def channels_last(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch with its 4-D float tensors (images) in channels-last memory format (free when the
    pipeline already wrote them NHWC, as it does for a channels-last run)."""
    return {key: value.contiguous(memory_format=torch.channels_last)
            if value.ndim == 4 and value.is_floating_point() else value for key, value in batch.items()}


def uses_channels_last(config: Config, task: Task) -> bool:
    """Whether this run keeps model and images channels-last: asked for, and an image (4-D) task."""
    return config.channels_last and task.memory_format == torch.channels_last


def batch_size_of(batch: dict[str, torch.Tensor]) -> int:
    """Samples in a batch (every batch carries their ``index``)."""
    return int(batch["index"].shape[0])


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    """Train mode, with BatchNorm kept in eval mode (fixed statistics) when `freeze_bn`."""
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


class Evaluation:
    """One evaluation: the task's per-sample metrics by sample index and its dataset-level
    `metric_accumulator` (COCO AP, confusion counts) when it has one.

    Each rank adds its own samples (the pipelines drop their padding); `result` gathers the per-sample
    values and accumulator states once, so every sample counts exactly once. A per-sample value that is
    NaN (say, an image without valid depth) is left out of that metric's mean. With `resamples`, every
    metric also gets its 95% paired-bootstrap interval (``<metric>_lo``, ``<metric>_hi``; see
    `codecloop.tasks.bootstrap`), and `replicates` holds its values on each resample after `result`.
    """

    def __init__(self, task: Task, resamples: int = 0) -> None:
        self.task = task
        self.resamples = resamples
        self.indices: list[torch.Tensor] = []
        self.values: dict[str, list[torch.Tensor]] = {}
        self.samples = 0
        self.accumulator = task.metric_accumulator()
        self.replicates: dict[str, np.ndarray] = {}

    def add(self, outputs, batch: dict[str, torch.Tensor]) -> None:
        """Count one batch's predictions (kept on the device until `result`: no host sync per batch)."""
        self.samples += batch_size_of(batch)
        if self.accumulator is not None:
            self.accumulator.update(outputs, batch)
        metrics = self.task.sample_metrics(outputs, batch)
        if metrics:
            self.indices.append(batch["index"].reshape(-1))
        for name, values in metrics.items():
            self.values.setdefault(name, []).append(values.detach().float().reshape(-1))

    def result(self, accelerator: Accelerator) -> dict[str, float]:
        """Dataset means and dataset-level metrics over every rank, with their intervals when resampling;
        adds ``n`` (and ``ci_resamples``, the fewest resamples behind an interval)."""
        local = (torch.cat(self.indices).cpu().numpy() if self.indices else np.empty(0, np.int64),
                 {name: torch.cat(parts).cpu().numpy() for name, parts in self.values.items()}, self.samples,
                 self.accumulator.state() if self.accumulator is not None else None)
        shards = gather_object([local]) if accelerator.num_processes > 1 else [local]
        names = list(dict.fromkeys(name for _, values, _, _ in shards for name in values))
        order = np.argsort(np.concatenate([indices for indices, _, _, _ in shards]), kind="stable")
        table = np.stack([np.concatenate([values[name] for _, values, _, _ in shards])[order] for name in names],
                         axis=1) if names else np.empty((0, 0))
        result: dict[str, float] = {}
        for column, name in enumerate(names):
            finite = table[:, column][np.isfinite(table[:, column])]
            result[name] = float(finite.mean()) if finite.size else math.nan
        if self.resamples and names:
            self.replicates = dict(zip(names, mean_replicates(table, self.resamples).T))
        if self.accumulator is not None:
            states = [state for _, _, _, state in shards]
            result.update(self.accumulator.compute(states))
            if self.resamples:
                self.replicates.update(self.accumulator.replicates(states, self.resamples))
        result["n"] = sum(count for _, _, count, _ in shards)
        if self.replicates:
            return {**with_intervals(result, self.replicates),
                    "ci_resamples": min(len(values) for values in self.replicates.values())}
        return result


def with_intervals(metrics: dict[str, float], replicates: dict[str, np.ndarray]) -> dict[str, float]:
    """`metrics` with ``<name>_lo`` and ``<name>_hi`` after each metric that has `replicates`."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        out[name] = value
        if name in replicates:
            out[f"{name}_lo"], out[f"{name}_hi"] = interval(replicates[name])
    return out


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, batches, accelerator: Accelerator,
             use_channels_last: bool = False, evaluation: Evaluation | None = None) -> dict[str, float]:
    """The task's metrics over `batches` (see `Evaluation`; a fresh one without intervals unless given), every
    sample counted once; adds ``n``."""
    model.eval()
    evaluation = evaluation if evaluation is not None else Evaluation(task)
    for batch in batches:
        if batch_size_of(batch) == 0:
            continue
        if use_channels_last:
            batch = channels_last(batch)
        with accelerator.autocast():
            evaluation.add(task.predict(model, batch), batch)
    return evaluation.result(accelerator)


class Trainer:
    """Trains `task`'s model on its ``train`` split into `run_dir`, resumable from checkpoints."""

    def __init__(
        self, config: Config, task: Task, run_dir: Path, accelerator: Accelerator,
        spec: LevelSpec, eval_spec: LevelSpec, model: torch.nn.Module | None = None,
        objective: FeatureRestoration | None = None,
    ) -> None:
        self.config, self.task, self.accelerator, self.objective = config, task, accelerator, objective
        self.run_dir = Path(run_dir)
        ensure_fresh(self.run_dir, config.resume)
        self.spec, self.eval_spec = spec, eval_spec
        self.model = model if model is not None else task.create_model()
        self.train_index = task.sample_index("train")
        self.val_index = task.sample_index("val") if task.has_split("val") else None
        self.channels_last = uses_channels_last(config, task)
        for index in self.indexes():
            fixed = ", ".join(f"{count} {name.replace('_', ' ')}" for name, count in index.counts.items() if count)
            if fixed:
                accelerator.print(f"{index.split} split: {fixed}")

    def indexes(self) -> list[SampleIndex]:
        """The sample indexes of the run: train, and val when the dataset has it."""
        return [self.train_index] + ([self.val_index] if self.val_index is not None else [])

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: shards are padded to equal size, the last batch is partial."""
        shard = math.ceil(len(self.train_index) / self.accelerator.num_processes)
        return math.ceil(math.ceil(shard / self.config.batch_size) / self.config.grad_accum)

    def run(self) -> torch.nn.Module:
        """Train until `epochs` or `max_steps`; returns the unwrapped model."""
        config, accelerator = self.config, self.accelerator
        self.run_dir.mkdir(parents=True, exist_ok=True)
        total_steps = config.epochs * self.steps_per_epoch()
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        freeze_all_but(self.model, config.train_layers)
        if self.objective is not None:
            self.objective.prepare(self.model, self.accelerator.device, self.channels_last)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(config, self.model)
        scheduler = warmup_cosine(optimizer, config.warmup_steps, total_steps)
        model, optimizer, scheduler = accelerator.prepare(self.model, optimizer, scheduler)
        state, dali_state = TrainState(world_size=accelerator.num_processes), None
        resume_from = checkpoint_dirs(self.run_dir)[-1:] if config.resume else []
        if resume_from:
            state, dali_state = load_checkpoint(accelerator, resume_from[0])
            accelerator.print(f"resuming from {resume_from[0]} (step {state.step}, epoch {state.epoch})")
        train_batches = build_batches(config, self.task, self.train_index, accelerator, True, self.spec, dali_state,
                                      with_clean=self.objective is not None)
        logger = MetricsLogger(self.run_dir, config.to_dict(), accelerator.is_main_process,
                               config.wandb, config.wandb_project, state.wandb_run_id)
        state.wandb_run_id = logger.wandb_run_id
        bar = tqdm(total=total_steps, initial=state.step, disable=not (accelerator.is_main_process and config.progress),
                   desc=f"train {self.run_dir.name}", dynamic_ncols=True)
        names = [codec.name for codec in config_codecs(config)]
        interval = _Interval(codec_scale(names), first_step=state.step + 1, names=names)
        last_saved = state.step if resume_from else -1
        with StopSignals() as stops:
            if state.batch_in_epoch >= len(train_batches):  # resumed from the checkpoint of an epoch's last step
                self._close_epoch(model, logger, state, total_steps)
            while state.epoch < config.epochs and state.step < total_steps:
                set_train_mode(model, config.freeze_bn)
                batches_in_epoch = len(train_batches)
                waited_from = time.perf_counter()
                for batch in train_batches:
                    interval.wait += time.perf_counter() - waited_from
                    if self.channels_last:
                        batch = channels_last(batch)
                    state.batch_in_epoch += 1
                    sync = state.batch_in_epoch % config.grad_accum == 0 or state.batch_in_epoch == batches_in_epoch
                    with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                        loss = (self.objective or self.task.forward)(model, batch)["loss"]
                        accelerator.backward(loss / config.grad_accum)
                    if config.skip_nonfinite and not all_finite(accelerator, loss):
                        optimizer.zero_grad(set_to_none=True)
                        state.skipped_nonfinite += 1
                        accelerator.print(f"skipped a non-finite loss at step {state.step + 1} "
                                          f"({state.skipped_nonfinite} so far)")
                        waited_from = time.perf_counter()
                        continue
                    interval.add(loss.detach(), batch)
                    state.samples += batch_size_of(batch) * accelerator.num_processes
                    if sync:
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        state.step += 1
                        bar.update(1)
                        due_log = state.step % config.log_every == 0 or state.step == total_steps
                        due_checkpoint = config.checkpoint_every and state.step % config.checkpoint_every == 0
                        if (due_log or due_checkpoint) and not all_finite(accelerator, interval.worst()):
                            raise FloatingPointError(
                                f"non-finite training loss between steps {interval.first_step} and {state.step}; "
                                f"last good checkpoint: {(checkpoint_dirs(self.run_dir) or ['none'])[-1]} (rerun "
                                f"with --resume and a lower lr, or set --skip_nonfinite true)")
                        if due_log:
                            metrics = interval.flush(accelerator, scheduler.get_last_lr()[0])
                            interval.first_step = state.step + 1
                            logger.log(metrics, state.step)
                            bar.set_postfix(loss=f"{metrics['train/loss']:.4f}",
                                            samples_s=f"{metrics['throughput/samples_per_sec']:.1f}")
                        if due_checkpoint:
                            save_checkpoint(accelerator, self.run_dir, state, train_batches.checkpoint(),
                                            config.keep_checkpoints)
                            last_saved = state.step
                        caught = stops.caught(accelerator, state.step, config.log_every)
                        if caught:
                            if last_saved != state.step:
                                save_checkpoint(accelerator, self.run_dir, state, train_batches.checkpoint(),
                                                config.keep_checkpoints)
                            bar.close()
                            logger.close()
                            accelerator.print(f"{signal.Signals(caught).name} at step {state.step}: checkpoint "
                                              f"written to {checkpoint_dirs(self.run_dir)[-1]}; run the same command "
                                              f"with --resume to continue")
                            raise SystemExit(128 + caught)
                        if state.step >= total_steps:
                            break
                    waited_from = time.perf_counter()
                if state.batch_in_epoch >= batches_in_epoch:
                    self._close_epoch(model, logger, state, total_steps)
        bar.close()
        if state.batch_in_epoch:
            self._end_epoch(model, logger, state, final=True)
        if not all_finite(accelerator, interval.worst()):
            raise FloatingPointError(f"non-finite training loss between steps {interval.first_step} and {state.step}; "
                                     f"last good checkpoint: {(checkpoint_dirs(self.run_dir) or ['none'])[-1]}")
        if last_saved != state.step:
            save_checkpoint(accelerator, self.run_dir, state, train_batches.checkpoint(), config.keep_checkpoints)
        accelerator.wait_for_everyone()
        save_final_weights(accelerator, model, self.run_dir)
        logger.close()
        return accelerator.unwrap_model(model)

    def _close_epoch(self, model: torch.nn.Module, logger: MetricsLogger, state: TrainState, total_steps: int) -> None:
        """The end of a whole epoch: evaluation and its log line, then the next epoch's position. A
        checkpoint taken at an epoch's last step precedes this, so a resume from it closes the epoch
        first, before reading on (the pipeline resumes at the next epoch's first batch)."""
        final = state.epoch + 1 >= self.config.epochs or state.step >= total_steps
        self._end_epoch(model, logger, state, final)
        state.epoch += 1
        state.batch_in_epoch = 0

    def _end_epoch(self, model: torch.nn.Module, logger: MetricsLogger, state: TrainState, final: bool) -> None:
        """Evaluate on ``val`` (when present and due) and log it with the skipped files of both splits."""
        metrics: dict = {"epoch": state.epoch}
        skipped = self.train_index.skipped + (self.val_index.skipped if self.val_index else [])
        metrics["data/skipped_files"] = len(skipped)
        for index in self.indexes():
            for name, count in index.counts.items():
                metrics[f"data/{index.split}_{name}"] = count
        if skipped:
            metrics["data/skipped_paths"] = [f"{path}: {reason}" for path, reason in skipped]
            self.accelerator.print(f"skipped {len(skipped)} unreadable files: " + "; ".join(p for p, _ in skipped[:5]))
        every = self.config.eval_every
        if self.val_index is not None and (final or (every and (state.epoch + 1) % every == 0)):
            batches = build_batches(self.config, self.task, self.val_index, self.accelerator, False, self.eval_spec)
            metrics.update({f"eval/{key}": value for key, value in evaluate(
                model, self.task, batches, self.accelerator, self.channels_last).items()})
            self.accelerator.print(f"epoch {state.epoch}: " + ", ".join(
                f"{key}={value:.4f}" for key, value in metrics.items() if key.startswith("eval/")))
        logger.log(metrics, state.step)
        set_train_mode(model, self.config.freeze_bn)


def all_finite(accelerator: Accelerator, value: torch.Tensor) -> bool:
    """Whether `value` is finite on every rank (one host sync; one all-reduce across ranks)."""
    bad = (~torch.isfinite(value.detach().float())).any().float().reshape(1).to(accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bad.item() == 0


class StopSignals:
    """SIGTERM and SIGINT caught while training: the loop finishes its step, writes a checkpoint and
    exits with status 128 + signal, so that ``--resume`` continues exactly there (preemption).

    One process checks after every step; several ranks agree every `every` steps through one
    small all-reduce (a rank that saw the signal stops them all at the same step).
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGTERM, signal.SIGINT):
                self._previous[number] = signal.signal(number, self._catch)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _catch(self, number: int, frame) -> None:
        self.received = number

    def caught(self, accelerator: Accelerator, step: int, every: int) -> int:
        """The signal to stop for (0: none)."""
        if accelerator.num_processes == 1:
            return self.received
        if step % max(1, every):
            return 0
        flag = torch.tensor([float(self.received > 0)], device=accelerator.device)
        if accelerator.reduce(flag, reduction="sum").item() == 0:
            return 0
        return self.received or int(signal.SIGTERM)


class _Interval:
    """Loss, codec and timing statistics accumulated between two log lines."""

    def __init__(self, scale: LevelScale, first_step: int = 1, names: list[str] | None = None) -> None:
        self.scale = scale  # the codecs' level scale, for the level histogram
        self.names = names or []  # the codecs a ladder mix draws from (``codec_index`` points into it)
        self.first_step = first_step  # the first optimizer step whose losses this interval holds
        self.losses: list[torch.Tensor] = []
        self.levels: list[torch.Tensor] = []
        self.codec_indices: list[torch.Tensor] = []
        self.samples = 0
        self.wait = 0.0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        self.losses.append(loss)
        self.levels.append(batch["codec_level"])
        if len(self.names) > 1:
            self.codec_indices.append(batch["codec_index"])
        self.samples += batch_size_of(batch)

    def flush(self, accelerator: Accelerator, lr: float) -> dict:
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize(accelerator.device)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        levels = torch.cat(self.levels).cpu().numpy().astype(np.int64)
        indices = torch.cat(self.codec_indices).cpu().numpy() if self.codec_indices else None
        metrics = {
            "train/loss": torch.stack(self.losses).float().mean().item(),
            "train/lr": lr,
            **codec_metrics(levels, self.scale, indices, self.names),
            "throughput/samples_per_sec": self.samples * accelerator.num_processes / elapsed,
            "throughput/data_wait_frac": min(1.0, self.wait / elapsed),
        }
        self.__init__(self.scale, names=self.names)
        return metrics

    def worst(self) -> torch.Tensor:
        """A loss of the interval that is NaN or inf if any is (no host sync)."""
        if not self.losses:
            return torch.zeros(())
        losses = torch.stack(self.losses).float()
        return torch.where(losses.isfinite(), losses, losses.nan_to_num(nan=float("inf"))).abs().max()
