"""What a task's format reader hands to the pipelines: files, per-sample targets, skipped files."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleIndex:
    """The readable files of one split, their targets (indexed like `files`) and what was skipped.

    Dense tasks keep per-sample `annotations` (a target file, boxes, keypoints, the region a
    view is taken from) that their pipelines load sample by sample; `counts` says what the
    reader fixed on the way (boxes clipped or dropped, images without annotations). `sizes` holds the
    stored ``(width, height)`` of files the scan read, so pipelines need not open them again.
    """

    split: str
    files: list[str]
    targets: dict[str, torch.Tensor]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)
