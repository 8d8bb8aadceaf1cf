"""What a task's format reader hands to the pipelines: files, per-sample targets, skipped files."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleIndex:
    """The readable files of one split, their targets (indexed like `files`) and what was skipped."""

    split: str
    files: list[str]
    targets: dict[str, torch.Tensor]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)
