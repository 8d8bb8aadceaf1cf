"""Where and how a pipeline runs, separate from what it computes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineRuntime:
    """This rank's shard, its device (None: CPU), CPU threads, seed, batch size, prefetch depth, and
    whether images leave the pipeline NHWC for a channels-last model.

    `seed` is the run's, the same on every rank: the sample plan shuffles all samples with it and deals them
    to the ranks, and each sample's draws are its own, so ranks never read the same sample in one epoch."""

    batch_size: int
    shard_id: int = 0
    num_shards: int = 1
    device_id: int | None = None
    num_threads: int = 1
    seed: int = 0
    prefetch_queue_depth: int = 2
    channels_last: bool = False
