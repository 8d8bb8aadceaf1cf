"""The sample plan: per epoch and shard, which samples each batch reads and every random draw they take.

Why one plan: the order, the codec level, the crop box, the flip and the clip start are drawn here, by one
law for every codec and pipeline, so a JPEG run and an H.264 run of the same seed see the same crops and
flips, and a resumed run repeats its draws. Draws are a counter-based hash of (seed, epoch, sample,
column), vectorised with numpy: they do not depend on the world size (each sample's draws are its own, on
whichever rank reads it), and a batch costs in proportion to its size. The epoch's order (one permutation of
every sample, as before) is computed once per epoch and cached.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CROP_TRIES = 10
ASPECT_RANGE = (3 / 4, 4 / 3)
# Columns of a sample's uniform draws in [0, 1).
CLEAN, CHOICE, FLIP, START, CROP_X, CROP_Y = range(6)
CROP = 6  # then CROP_TRIES x (area, log aspect, left, top)
CODEC = CROP + 4 * CROP_TRIES  # which codec of a list a ladder sample reads (last: older columns keep their draws)
COLUMNS = CODEC + 1

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over a uint64 array (wrapping arithmetic): a bijection that spreads every bit."""
    with np.errstate(over="ignore"):
        values = values + _GOLDEN
        values = (values ^ (values >> np.uint64(30))) * _MIX_1
        values = (values ^ (values >> np.uint64(27))) * _MIX_2
    return values ^ (values >> np.uint64(31))


def uniforms(seed: int, epoch: int, samples: np.ndarray, columns: int = COLUMNS) -> np.ndarray:
    """``(len(samples), columns)`` float64 uniforms in [0, 1), a pure function of (seed, epoch, sample, column)."""
    key = _mix(_mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ np.uint64(epoch))
    rows = _mix(key ^ np.asarray(samples, np.uint64))
    bits = _mix(rows[:, None] ^ (np.arange(columns, dtype=np.uint64) * _GOLDEN)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def crop_boxes(draws: np.ndarray, regions: np.ndarray, min_scale: float) -> np.ndarray:
    """Random-resized-crop boxes ``(x0, y0, x1, y1)`` (float pixels), one per row of `draws`, inside `regions`
    (``(n, 4)`` boxes): area `min_scale`..1 of the region, aspect (width / height) log-uniform in 3/4..4/3;
    the first of `CROP_TRIES` tries that fits, else the whole region."""
    tries = draws[:, CROP:CROP + 4 * CROP_TRIES].reshape(-1, CROP_TRIES, 4)
    x0, y0, x1, y1 = (regions[:, k, None] for k in range(4))
    region_w, region_h = x1 - x0, y1 - y0
    area = region_w * region_h * (min_scale + (1 - min_scale) * tries[..., 0])
    low, high = math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])
    aspect = np.exp(low + (high - low) * tries[..., 1])
    width, height = np.sqrt(area * aspect), np.sqrt(area / aspect)
    fits = (width >= 1) & (width <= region_w) & (height >= 1) & (height <= region_h)
    first = fits.argmax(axis=1)
    rows = np.arange(len(draws))
    width, height = width[rows, first], height[rows, first]
    left = x0[:, 0] + (region_w[:, 0] - width) * tries[rows, first, 2]
    top = y0[:, 0] + (region_h[:, 0] - height) * tries[rows, first, 3]
    boxes = np.stack([left, top, left + width, top + height], axis=1)
    return np.where(fits.any(axis=1)[:, None], boxes, regions.astype(np.float64))


@dataclass(frozen=True)
class PlannedBatch:
    """One batch of a shard: sample indices, whether each slot is real (evaluation pads with invalid
    slots), and each sample's uniform draws (``(n, COLUMNS)``, see the column names above)."""

    samples: np.ndarray
    valid: np.ndarray
    draws: np.ndarray


class SamplePlan:
    """This rank's batches, epoch after epoch: training shuffles all samples per epoch (a permutation seeded by
    (seed, epoch)), deals them to ranks in turn and fills the shard's last batch with repeats of the epoch's
    first samples, so every training batch is full (no batch of one sample for BatchNorm, no rank with an
    empty step); evaluation keeps the order and pads with invalid slots, so every sample counts once. Every
    rank runs the same number of batches."""

    def __init__(self, num_samples: int, *, training: bool, batch_size: int, shard_id: int = 0,
                 num_shards: int = 1, seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError("no samples to read")
        self.num_samples, self.training, self.batch_size = num_samples, training, batch_size
        self.shard_id, self.num_shards, self.seed = shard_id, num_shards, seed
        self._cached: tuple[int, np.ndarray, np.ndarray] | None = None

    def shard_size(self) -> int:
        """Sample slots per rank and epoch (the largest shard)."""
        return math.ceil(self.num_samples / self.num_shards)

    def batches_per_epoch(self) -> int:
        """Batches every rank runs per epoch."""
        return math.ceil(self.shard_size() / self.batch_size)

    def shard(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's sample slots of `epoch` and whether each is real; computed once per epoch."""
        if self._cached is None or self._cached[0] != epoch:
            order = np.arange(self.num_samples)
            if self.training:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            mine = order[self.shard_id::self.num_shards]
            slots = self.batches_per_epoch() * self.batch_size if self.training else self.shard_size()
            padding = slots - len(mine)
            samples = np.concatenate([mine, order[np.arange(padding) % self.num_samples]])
            valid = np.concatenate([np.ones(len(mine), bool), np.full(padding, self.training)])
            self._cached = (epoch, samples, valid)
        return self._cached[1], self._cached[2]

    def batch(self, epoch: int, batch: int) -> PlannedBatch:
        """Batch `batch` of `epoch`: its samples, their validity and their draws."""
        samples, valid = self.shard(epoch)
        window = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
        return PlannedBatch(samples[window], valid[window], uniforms(self.seed, epoch, samples[window]))
