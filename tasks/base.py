"""The task contract: every hook the loop, the sweep and the protocol call, and nothing they probe for.

A task reads its dataset format into a `SampleIndex`, composes the pipeline that turns an index into
batches, and owns its model factory, loss and metrics. The trainers call exactly the hooks below; a
hook a task has no use for has a default here (no one-pass sweep, no dataset-level metric), so no
caller ever asks a task whether it has one.

A task's config section is `config_keys`: the config keys its constructor takes, as keyword arguments
of the same name. A run builds the task from those keys only; a key of another task's section set
for a run is an error naming the key and the task.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch

from codecloop.dali_pipes import Codec, LevelSpec, PipelineRuntime, SweepBatches
from codecloop.dali_pipes.rates import RateSource
from codecloop.tasks.sample_index import SampleIndex

CLASS_ATTRIBUTES = ("config_keys", "default_model", "model_help", "primary_metric", "higher_is_better", "media")


class MetricAccumulator(Protocol):
    """Dataset-level metric state of one evaluation (COCO AP, confusion counts): each rank `update`s
    with its own batches, hands `state()` over, and `compute` combines every rank's states once.
    `replicates` recomputes each metric on paired bootstrap resamples of the evaluated images
    (`codecloop.tasks.bootstrap`), at most `resamples` of them."""

    def update(self, outputs: Any, batch: dict[str, torch.Tensor]) -> None: ...

    def state(self) -> Any: ...

    def compute(self, states: Sequence[Any]) -> dict[str, float]: ...

    def replicates(self, states: Sequence[Any], resamples: int) -> dict[str, np.ndarray]: ...


class Task(abc.ABC):
    """Base of every task. Subclasses set the class attributes and implement the abstract hooks.

    Class attributes (`register_task` refuses a class that lacks one):

    | attribute          | holds                                                                  |
    | ------------------ | ---------------------------------------------------------------------- |
    | `config_keys`      | the task's config section: the keys its constructor takes              |
    | `default_model`    | the model built when the config names none                             |
    | `model_help`       | the model names it takes, for ``--help``                               |
    | `primary_metric`   | the metric sweeps plot and recovery is computed on                     |
    | `higher_is_better` | that metric's direction                                                |
    | `media`            | what the codec compresses: ``images``, or ``clips`` from a ladder      |
    | `memory_format`    | ``torch.channels_last`` for image models that want it, else None       |
    | `name`             | the registered name (set by `register_task`)                           |
    | `lower_is_better`  | metrics (besides a lower-is-better primary) where lower is better      |
    | `clean_view`       | whether `batches(..., with_clean=True)` adds ``clean_image``, each      |
    |                    | view without the codec (feature restoration, distillation need it)     |

    Every task instance keeps its dataset folder as `root`.
    """

    name: ClassVar[str]
    config_keys: ClassVar[tuple[str, ...]]
    default_model: ClassVar[str]
    model_help: ClassVar[str]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    media: ClassVar[Literal["images", "clips"]]
    memory_format: ClassVar[torch.memory_format | None] = None
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    clean_view: ClassVar[bool] = False
    root: Path

    @classmethod
    def metric_higher_is_better(cls, metric: str) -> bool:
        """Which way `metric` is better: the primary metric's declared direction, else lower for the
        `lower_is_better` metrics and the loss, higher for the rest."""
        if metric == cls.primary_metric:
            return cls.higher_is_better
        return metric not in (*cls.lower_is_better, "loss")

    @abc.abstractmethod
    def has_split(self, split: str) -> bool:
        """Whether the dataset has `split` (``train``, ``val``)."""

    @abc.abstractmethod
    def sample_index(self, split: str) -> SampleIndex:
        """The readable samples of `split` with their targets, and what was skipped."""

    @abc.abstractmethod
    def batches(self, index: SampleIndex, *, training: bool, spec: LevelSpec, codec: Codec, runtime: PipelineRuntime,
                checkpoint: bytes | str | None = None) -> Iterable[dict[str, torch.Tensor]]:
        """Epochs of `index` through `codec` at the levels `spec` draws, as dict batches on the device;
        resumable from the pipeline state `checkpoint`. Every batch carries ``index`` and the sampled
        level as ``codec_level``. A task reading a ladder (clips, or frames) may get a list of ladder codecs as
        `codec` (`--codec h264,hevc,av1`): each sample draws one, and its batches carry ``codec_index``."""

    def sweep_batches(self, index: SampleIndex, levels: list[int], codec: Codec,
                      runtime: PipelineRuntime) -> SweepBatches | None:
        """Every level of `levels` of an in-graph `codec` in one pass over `index`, or None where the task
        has no such pipeline (the sweep then runs one pass per level)."""
        return None

    def rate_source(self, index: SampleIndex) -> RateSource:
        """What the bits per pixel of a sweep of `index` are measured on: its image files, whole (tasks that
        read clips or frames from a ladder give the ladder's clips)."""
        return RateSource(images=tuple(index.files), data_root=str(self.root))

    @abc.abstractmethod
    def create_model(self) -> torch.nn.Module:
        """A fresh model, with the configured local weights loaded."""

    @abc.abstractmethod
    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The model's outputs on a batch, as `sample_metrics` and `metric_accumulator` take them."""

    @abc.abstractmethod
    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """A training step's ``loss`` (a scalar tensor) and ``outputs``."""

    @abc.abstractmethod
    def sample_metrics(self, outputs: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample metric values; the reported metrics are their means over the dataset (NaN left out)."""

    def metric_accumulator(self) -> MetricAccumulator | None:
        """A fresh dataset-level accumulator, or None where every metric is a per-sample mean."""
        return None
