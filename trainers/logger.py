"""Metric logging: ``metrics.jsonl`` always, W&B when asked; only the main process writes.

| key                            | meaning                                                  |
| ------------------------------ | -------------------------------------------------------- |
| ``train/loss``                 | mean training loss over the logging interval             |
| ``train/lr``                   | learning rate at the logged step                         |
| ``codec/quality_mean``         | mean JPEG quality of the compressed samples seen (jpeg)  |
| ``codec/quality_hist``         | counts of qualities in bins 1-10, 11-20, ..., 91-100     |
| ``codec/crf_mean``             | mean H.264 CRF of the compressed samples seen (h264)     |
| ``codec/crf_hist``             | counts of CRFs in bins 1-5, 6-10, ..., 46-50, 51         |
| ``codec/clean_frac``           | share of samples that passed through clean               |
| ``throughput/samples_per_sec`` | samples per second over all processes                    |
| ``throughput/data_wait_frac``  | share of step time spent waiting for the next batch      |
| ``eval/<metric>``              | evaluation metrics (``eval/top1``, ``eval/top5``, ...)   |
| ``data/skipped_files``         | unreadable files skipped in a split (paths listed too)   |

A W&B failure (import, login, network) is reported once and never stops training.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HISTOGRAM_EDGES = {"codec/quality_hist": np.arange(0.5, 101, 10.0), "codec/crf_hist": np.arange(0.5, 56, 5.0)}
CODEC_KEYS = {"jpeg_quality": "quality", "h264_crf": "crf"}


def codec_metrics(levels: np.ndarray, batch_key: str) -> dict[str, Any]:
    """Mean, clean share and histogram of the levels drawn (``jpeg_quality`` or ``h264_crf`` values).

    Clean samples report a level <= 0 (JPEG quality 0; the CRF-0 rung or -1 for H.264) and are
    left out of the mean and the histogram.
    """
    name = CODEC_KEYS[batch_key]
    compressed = levels[levels > 0]
    return {
        f"codec/{name}_mean": float(compressed.mean()) if compressed.size else 0.0,
        "codec/clean_frac": float((levels <= 0).mean()) if levels.size else 0.0,
        f"codec/{name}_hist": np.histogram(compressed, bins=HISTOGRAM_EDGES[f"codec/{name}_hist"])[0].tolist(),
    }


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class MetricsLogger:
    """Appends one JSON line per `log` call and mirrors it to W&B if that works."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        is_main: bool,
        wandb_mode: str = "disabled",
        project: str = "codecloop",
        run_id: str | None = None,
    ) -> None:
        self.is_main = is_main
        self.path = Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self.wandb_run_id = run_id
        if not is_main or wandb_mode == "disabled":
            return
        if wandb_mode == "online" and not _has_wandb_key():
            wandb_mode = "offline"
        try:
            import wandb

            self._wandb = wandb.init(
                project=project, dir=str(run_dir), config=config, mode=wandb_mode,
                id=run_id, resume="allow", reinit=True,
            )
            self.wandb_run_id = self._wandb.id
        except Exception as error:  # noqa: BLE001 - any W&B failure must leave training running
            warnings.warn(f"W&B disabled for this run: {error}", stacklevel=2)
            self._wandb = None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record `metrics` at optimizer step `step` (main process only)."""
        if not self.is_main:
            return
        record = {"step": step, **{key: _plain(value) for key, value in metrics.items()}}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._log_wandb(metrics, step)

    def _log_wandb(self, metrics: dict[str, Any], step: int) -> None:
        try:
            import wandb

            payload = {}
            for key, value in metrics.items():
                if key in HISTOGRAM_EDGES:
                    payload[key] = wandb.Histogram(np_histogram=(np.asarray(value), HISTOGRAM_EDGES[key]))
                elif isinstance(value, (int, float)):
                    payload[key] = value
            self._wandb.log(payload, step=step)
        except Exception as error:  # noqa: BLE001
            warnings.warn(f"W&B logging failed, continuing without it: {error}", stacklevel=2)
            self._wandb = None

    def close(self) -> None:
        """Finish the W&B run, if any."""
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as error:  # noqa: BLE001
                warnings.warn(f"W&B finish failed: {error}", stacklevel=2)
            self._wandb = None


def _plain(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
