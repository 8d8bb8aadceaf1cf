"""The iterator that turns an image pipeline into dict batches of torch tensors on the device.

It stays outside `accelerator.prepare`: each process builds its own with
``shard_id = process_index``, ``num_shards = num_processes`` and ``device_id`` the index of
``accelerator.device`` (None on a machine without CUDA). On a GPU every output is produced on the
device by the pipeline, so handing a batch over never waits for the GPU. With ``channels_last``
the pipeline writes images NHWC and the batch holds them as NCHW views in channels-last memory
format: no copy per step for a channels-last model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

from codecloop.dali_pipes.pipelines import CODEC_PLACEMENTS, READER_NAME, ImageGeometry, image_pipeline, sweep_pipeline
from codecloop.dali_pipes.codecs import Codec
from codecloop.dali_pipes.levels import LevelSpec


def nchw(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Images from the pipeline as (B, C, H, W): NHWC data viewed in channels-last format, or NCHW as is."""
    return images.permute(0, 3, 1, 2) if channels_last else images


def default_num_threads() -> int:
    """CPU worker threads per pipeline: this process's cores shared with its peers on the node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


class ImageBatches:
    """Epochs of ``{image, index, codec_level, **targets}`` batches from one shard of `files`, through a
    codec that runs in the DALI graph.

    With `with_clean`, batches also carry ``clean_image``: the same view without the codec.
    `targets` maps a name (``label``, ``soft_label``...) to a tensor indexed by sample index;
    each batch carries ``targets[name][index]`` under that name, on the device.
    Evaluation's last batch is partial, never padded: under sharding every sample is seen
    exactly once across ranks (a rank whose shard is one sample short may get an empty batch).
    Sharded training fills its last batch with repeats of the shard's last sample instead, so
    that no rank ever trains on an empty batch (DDP steps on every rank together; a mean loss over
    no samples is NaN). `checkpoint()` captures the reader and random state
    after the last batch returned, and ``checkpoint=`` resumes exactly there.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        batch_size: int,
        training: bool,
        spec: LevelSpec,
        codec: Codec,
        geometry: ImageGeometry = ImageGeometry(),
        targets: Mapping[str, torch.Tensor] | None = None,
        shard_id: int = 0,
        num_shards: int = 1,
        device_id: int | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        prefetch_queue_depth: int = 2,
        codec_placement: str = "native",
        checkpoint: bytes | str | None = None,
        with_clean: bool = False,
        channels_last: bool = False,
    ) -> None:
        if not files:
            raise ValueError("no files to read")
        if codec_placement not in CODEC_PLACEMENTS:
            raise ValueError(f"codec_placement {codec_placement!r} must be one of {CODEC_PLACEMENTS}")
        self.device = torch.device("cuda", device_id) if device_id is not None else torch.device("cpu")
        self.targets = {name: value.to(self.device) for name, value in (targets or {}).items()}
        self.batch_size, self.channels_last = batch_size, channels_last
        pipe = image_pipeline(
            files=files,
            shard_id=shard_id,
            num_shards=num_shards,
            training=training,
            spec=spec,
            codec=codec,
            geometry=geometry,
            on_gpu=device_id is not None,
            codec_placement=codec_placement,
            with_clean=with_clean,
            channels_last=channels_last,
            batch_size=batch_size,
            num_threads=num_threads or default_num_threads(),
            device_id=device_id,
            seed=seed,
            prefetch_queue_depth=prefetch_queue_depth,
            checkpoint=checkpoint,
        )
        self._iterator = DALIGenericIterator(
            [pipe],
            ["image", "index", "codec_level"] + (["clean_image"] if with_clean else []),
            reader_name=READER_NAME,
            last_batch_policy=LastBatchPolicy.FILL if training and num_shards > 1 else LastBatchPolicy.PARTIAL,
            auto_reset=False,
        )

    def __len__(self) -> int:
        """Batches per epoch on this shard (the same on every shard)."""
        return len(self._iterator)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch (the rest of it, after a resume); resets for the next epoch at the end."""
        for (outputs,) in self._iterator:
            index = outputs["index"].long()
            batch = {"image": nchw(outputs["image"], self.channels_last), "index": index,
                     "codec_level": outputs["codec_level"]}
            if "clean_image" in outputs:
                batch["clean_image"] = nchw(outputs["clean_image"], self.channels_last)
            for name, table in self.targets.items():
                batch[name] = table[index]
            yield batch
        self._iterator.reset()

    def checkpoint(self) -> bytes | str:
        """Serialized reader + RNG state after the last batch this iterator returned."""
        return self._iterator.checkpoints()[0]


class SweepBatches:
    """One epoch of evaluation batches holding every sweep level's view of the same images.

    Batches are ``{index, **targets, views}`` with ``views`` mapping each level (None: clean) to
    its ``image`` tensor, from `sweep_pipeline`: one read and decode per image for all levels,
    instead of one full pass per level. Sharded and partial like `ImageBatches` in evaluation.
    """

    def __init__(
        self,
        files: Sequence[str],
        *,
        levels: Sequence[int],
        codec: Codec,
        batch_size: int,
        geometry: ImageGeometry = ImageGeometry(),
        targets: Mapping[str, torch.Tensor] | None = None,
        shard_id: int = 0,
        num_shards: int = 1,
        device_id: int | None = None,
        num_threads: int | None = None,
        seed: int = 0,
        prefetch_queue_depth: int = 2,
        codec_placement: str = "native",
        channels_last: bool = False,
    ) -> None:
        if not files:
            raise ValueError("no files to read")
        self.channels_last = channels_last
        self.levels: list[int | None] = [None, *levels]
        self.device = torch.device("cuda", device_id) if device_id is not None else torch.device("cpu")
        self.targets = {name: value.to(self.device) for name, value in (targets or {}).items()}
        pipe = sweep_pipeline(
            files=files, shard_id=shard_id, num_shards=num_shards, levels=list(levels), codec=codec, geometry=geometry,
            on_gpu=device_id is not None, codec_placement=codec_placement, channels_last=channels_last,
            batch_size=batch_size,
            num_threads=num_threads or default_num_threads(), device_id=device_id, seed=seed,
            prefetch_queue_depth=prefetch_queue_depth,
        )
        self._names = [f"view{position}" for position in range(len(self.levels))]
        self._iterator = DALIGenericIterator([pipe], ["index", *self._names], reader_name=READER_NAME,
                                             last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=False)

    def __len__(self) -> int:
        """Batches in the epoch on this shard."""
        return len(self._iterator)

    def __iter__(self) -> Iterator[dict]:
        """The epoch; resets at the end."""
        for (outputs,) in self._iterator:
            index = outputs["index"].long()
            batch = {"index": index, **{name: table[index] for name, table in self.targets.items()}}
            batch["views"] = {level: nchw(outputs[name], self.channels_last)
                              for level, name in zip(self.levels, self._names)}
            yield batch
        self._iterator.reset()
