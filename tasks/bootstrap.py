"""95% intervals from a paired bootstrap over evaluation samples (images; videos for action recognition).

An evaluation's samples are put in one order (their index in the evaluation set, or the image id of a COCO
metric) and resampled with replacement `resamples` times. The resamples are a pure function of the number of
samples and `BOOTSTRAP_SEED`, so resample ``b`` draws the same samples at every level, for every model and in
every run over the same evaluation set: the replicates pair up, and a quantity built from several evaluations
(recovery: clean, baseline and retrained) gets its interval by computing it on each resample from the same
resample of each. Each metric gives one value per resample (its *replicates*); the interval is their 2.5th and
97.5th percentile (the percentile bootstrap).

- A per-sample metric (top-1, agreement, abs rel, ...): the mean over the resample, each sample weighted by how
  often it was drawn, NaN samples left out (`mean_replicates`).
- A dataset-level metric (mIoU from per-image confusion counts, COCO AP through pycocotools) is recomputed by the
  task's accumulator from its per-sample state on each resample; COCO AP at most `COCO_RESAMPLES` times (each
  resample runs pycocotools' accumulate).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

BOOTSTRAP_SEED = 2007_14314  # the source study's arXiv number
CONFIDENCE = 0.95
COCO_RESAMPLES = 200
CHUNK_ELEMENTS = 4_000_000  # resample counts held at once (resamples x samples)


def resample_counts(samples: int, resamples: int) -> Iterator[np.ndarray]:
    """How often each of `samples` ordered samples is drawn in each of `resamples` resamples with replacement,
    as ``(chunk, samples)`` int64 arrays, in resample order (the same for every call with the same `samples`)."""
    if samples <= 0 or resamples <= 0:
        return
    rng = np.random.default_rng([BOOTSTRAP_SEED, samples])
    chunk = max(1, CHUNK_ELEMENTS // samples)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        draws = rng.integers(0, samples, size=(size, samples)) + samples * np.arange(size)[:, None]
        yield np.bincount(draws.ravel(), minlength=size * samples).reshape(size, samples)


def mean_replicates(values: np.ndarray, resamples: int) -> np.ndarray:
    """Replicates of the means of the columns of `values` (samples x metrics, NaN left out): ``(resamples,
    metrics)``; NaN where a resample holds no finite value of a metric."""
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    parts = []
    for counts in resample_counts(len(values), resamples):
        weight = counts.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            parts.append((weight @ filled) / (weight @ finite.astype(np.float64)))
    return np.concatenate(parts) if parts else np.empty((0, values.shape[1]))


def interval(replicates: np.ndarray) -> tuple[float, float]:
    """The `CONFIDENCE` percentile interval of `replicates` (NaN replicates left out; NaN, NaN when none is
    finite)."""
    finite = np.asarray(replicates, np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def ratio_replicates(numerator: np.ndarray, denominator: np.ndarray, scale: float = 1.0,
                     smallest: float = 1e-6) -> np.ndarray:
    """``scale * numerator / denominator`` per resample; NaN where ``|denominator| <= smallest``."""
    numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
    safe = np.abs(denominator) > smallest
    return np.where(safe, scale * numerator / np.where(safe, denominator, 1.0), np.nan)
