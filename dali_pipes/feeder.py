"""Every pipeline's feeder and iterator: sharded, seeded external-source callables and the one `Batches` base.

Every pipeline takes per sample what the sample plan drew: which level (or ladder rung), which frames,
which crop, which flip. `ShardedFeeder` is the DALI external-source callable (batch mode) behind them:
for every batch it takes this rank's samples and their draws from the `SamplePlan` (one law for every
pipeline; draws keyed by (seed, epoch, sample), so they do not depend on the world size and a resumed
run repeats them) and asks `load` for each one's outputs. `Batches` turns such a pipeline into dict
batches of torch tensors on the device, with one checkpoint format (the epoch and batch to resume at)
and one padding scheme (the plan's: training batches are always full, evaluation's padding is dropped).

It stays outside `accelerator.prepare`: each process builds its own with ``shard_id = process_index``,
``num_shards = num_processes`` and ``device_id`` the index of ``accelerator.device`` (None without CUDA).
With ``channels_last`` a pipeline writes images NHWC and the batch holds them as NCHW views in
channels-last memory format: no copy per step for a channels-last model.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from codecloop.dali_pipes.sample_plan import SamplePlan
from codecloop.dali_pipes.validate import decode_failure, record_pipeline_failure


def nchw(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images from a pipeline as (B, C, H, W): NHWC data viewed in channels-last format, or NCHW as is."""
    return images.permute(0, 3, 1, 2) if channels_last else images


def default_num_threads() -> int:
    """CPU worker threads per pipeline: this process's cores shared with its peers on the node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def path_bytes(path: str) -> np.ndarray:
    """A file name as the uint8 array `fn.io.file.read` takes (DALI reads the file, not Python)."""
    return np.frombuffer(path.encode(), np.uint8)


def start_position(checkpoint: bytes | str | None) -> tuple[int, int]:
    """``(epoch, batch)`` to start from, given a `Batches.checkpoint()` value (or None: the start)."""
    position = json.loads(checkpoint) if checkpoint else {"epoch": 0, "batch": 0}
    return position["epoch"], position["batch"]


class ShardedFeeder(abc.ABC):
    """Base external-source callable: this rank's batches of one epoch after another, from `checkpoint`'s
    position on (a `Batches.checkpoint()` value; None: the start).

    Every rank runs the same number of batches: training batches are full (the plan pads with repeats),
    evaluation pads with samples marked ``valid = 0`` that `Batches` drops. Subclasses name their outputs
    (`outputs`, ending with ``index`` and ``valid``) and produce one sample's in `load`. Samples are loaded
    on `threads` threads (PyAV and Pillow release the GIL).
    """

    def __init__(self, num_samples: int, *, training: bool, batch_size: int, shard_id: int = 0,
                 num_shards: int = 1, seed: int = 0, checkpoint: bytes | str | None = None,
                 threads: int = 1) -> None:
        self.plan = SamplePlan(num_samples, training=training, batch_size=batch_size, shard_id=shard_id,
                               num_shards=num_shards, seed=seed)
        self.num_samples, self.training, self.batch_size = num_samples, training, batch_size
        self.start_epoch, self.start_batch = start_position(checkpoint)
        if self.start_batch >= self.plan.batches_per_epoch():  # saved after an epoch's last batch
            self.start_epoch, self.start_batch = self.start_epoch + 1, 0
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[list[int]] = deque(maxlen=4)  # the last batches handed to DALI

    @abc.abstractmethod
    def outputs(self) -> tuple[str, ...]:
        """Names of the per-sample outputs, in the order `__call__` returns them."""

    @abc.abstractmethod
    def load(self, index: int, draws: np.ndarray) -> dict[str, np.ndarray]:
        """Every output but ``index`` and ``valid`` for sample `index`, its random choices taken from `draws`
        (its row of the plan's uniforms; `dali_pipes.sample_plan` names the columns)."""

    def load_batch(self, indices: list[int], draws: np.ndarray) -> list[dict[str, np.ndarray]]:
        """`load` for every sample of a batch, on `threads` threads (subclasses may vectorise it instead)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads))
        return list(self._pool.map(self.load, indices, draws))

    def sample_path(self, index: int) -> str | None:
        """The image file sample `index` is decoded from by DALI, where it has one (subclasses)."""
        return None

    def describe(self, index: int) -> str:
        """How an error names sample `index`: its file, else its number (subclasses may say more)."""
        return self.sample_path(index) or f"sample {index}"

    def in_flight(self) -> list[int]:
        """The samples of the last few batches handed to DALI."""
        return list(dict.fromkeys(index for batch in list(self._in_flight) for index in batch))

    def shard_size(self) -> int:
        """Sample slots per rank and epoch (the largest shard)."""
        return self.plan.shard_size()

    def batches_per_epoch(self) -> int:
        """Batches every rank runs per epoch."""
        return self.plan.batches_per_epoch()

    def __call__(self, info) -> tuple[list[np.ndarray], ...]:
        """The batch `info.iteration` of epoch `info.epoch_idx` (counted from the start position)."""
        epoch = self.start_epoch + info.epoch_idx
        batch = info.iteration + (self.start_batch if info.epoch_idx == 0 else 0)
        if batch >= self.batches_per_epoch():
            raise StopIteration
        planned = self.plan.batch(epoch, batch)
        indices = planned.samples.tolist()
        self._in_flight.append(indices)
        samples = self.load_batch(indices, planned.draws)
        for sample, index, valid in zip(samples, planned.samples, planned.valid):
            sample["index"], sample["valid"] = np.int64(index), np.int32(valid)
        return tuple([sample[name] for sample in samples] for name in self.outputs())

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pool": None, "_in_flight": deque(maxlen=4)}


def valid_count(valid: torch.Tensor) -> int:
    """How many samples of a batch are real: the feeder puts padding slots (``valid`` 0, host
    memory) only at the end of a shard's last batch, so the batch is cut with a slice, not a mask."""
    valid = valid.reshape(-1).bool()
    count = int(valid.sum())
    if not valid[:count].all():
        raise RuntimeError("padding slots in the middle of a batch: the feeder's shard order is broken")
    return count


def blame(feeder: ShardedFeeder, samples: list[int], error: str) -> str:
    """Find, among `samples` of a failed batch, the image files Pillow cannot decode either, and record each
    as a bad file (`record_pipeline_failure`) so that the next scan, a resume included, skips it: a broken
    file the scan could not see stops a run once, not at every resume. Returns what to add to the error."""
    lines = []
    for path in dict.fromkeys(filter(None, map(feeder.sample_path, samples))):
        problem = decode_failure(path)
        if problem:
            recorded = record_pipeline_failure(path, f"{error.strip().splitlines()[-1][:200]}; Pillow: {problem}")
            lines.append(f"\n{path} cannot be decoded ({problem}): "
                         + ("recorded as a bad file, so the next run and --resume skip it" if recorded
                            else "remove it from the dataset (the record could not be written)"))
    return "".join(lines)


class Batches:
    """Epochs of dict batches from a pipeline fed by a `ShardedFeeder`, padding dropped: the one iterator
    every task's pipeline goes through.

    `output_map` names the pipeline's outputs; ``valid`` must be one of them. Every output stays
    where the pipeline produced it: a GPU pipeline moves what the training step needs (images,
    ``index``, the codec level) to the device itself, and leaves on the host the small per-sample
    values Python reads (point counts, flips), so nothing here waits for the GPU. `reshape` may
    rewrite the batch (e.g. split frames into clips) before targets are added: ``targets[name]``
    (moved to the pipeline's device) is indexed by each sample's ``index``. `checkpoint()` records the
    epoch and batch after the last batch returned; ``checkpoint=`` given to the feeder resumes there
    with the same draws.
    """

    def __init__(self, pipe, feeder: ShardedFeeder, output_map: list[str],
                 targets: Mapping[str, torch.Tensor] | None = None, channels_last: bool = False) -> None:
        device = torch.device("cuda", pipe.device_id) if pipe.device_id is not None else torch.device("cpu")
        self.feeder, self.device, self.channels_last = feeder, device, channels_last
        self.epoch, self.batch = feeder.start_epoch, feeder.start_batch
        self.targets = {name: value.to(device) for name, value in (targets or {}).items()}
        with self._naming_failures():  # the iterator runs the first batches already
            self._iterator = DALIGenericIterator([pipe], output_map, last_batch_policy=LastBatchPolicy.PARTIAL,
                                                 auto_reset=False)

    @contextlib.contextmanager
    def _naming_failures(self) -> Iterator[None]:
        """A DALI error (a file nvJPEG cannot decode, a frame past a clip's end) re-raised naming the
        samples of the batches in flight: DALI itself only knows the bytes it was handed."""
        try:
            yield
        except RuntimeError as error:
            samples = self.feeder.in_flight()
            reading = [self.feeder.describe(index) for index in samples]
            message = (f"{error}\nwhile reading one of {len(reading)} samples: {', '.join(reading[:8])}"
                       f"{' ...' if len(reading) > 8 else ''}")
            raise RuntimeError(message + blame(self.feeder, samples, str(error))) from error

    def __len__(self) -> int:
        """Batches per epoch on this shard (the same on every shard)."""
        return self.feeder.batches_per_epoch()

    def reshape(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for subclasses: rearrange the pipeline's tensors."""
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The rest of the current epoch; then the position moves to the next epoch."""
        with self._naming_failures():
            for (outputs,) in self._iterator:
                count = valid_count(outputs.pop("valid"))
                batch = {}
                for name, value in outputs.items():
                    value = value.reshape(-1) if value.ndim == 2 and value.shape[1] == 1 else value
                    batch[name] = value[:count]
                batch = self.reshape(batch)
                batch["index"] = batch["index"].long()
                for name, table in self.targets.items():
                    batch[name] = table[batch["index"]]
                self.batch += 1
                yield batch
        self._iterator.reset()
        self.epoch, self.batch = self.epoch + 1, 0

    def checkpoint(self) -> bytes:
        """The epoch and batch after the last batch this iterator returned."""
        return json.dumps({"epoch": self.epoch, "batch": self.batch}).encode()
