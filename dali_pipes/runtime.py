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

    def pipeline_options(self) -> dict:
        """The `@pipeline_def` keywords: batch size, CPU threads, device, prefetch depth."""
        return {"batch_size": self.batch_size, "num_threads": self.num_threads, "device_id": self.device_id,
                "prefetch_queue_depth": self.prefetch_queue_depth}

    def feeder_options(self, training: bool, checkpoint: bytes | str | None = None) -> dict:
        """The `ShardedFeeder` keywords: this rank's shard of the plan, its seed, threads, where to start."""
        return {"training": training, "batch_size": self.batch_size, "shard_id": self.shard_id,
                "num_shards": self.num_shards, "seed": self.seed, "threads": self.num_threads,
                "checkpoint": checkpoint}
