"""Errors a dataset reader raises about its layout, and choosing among a task's layouts.

`MissingFilesError` carries every missing file, so ``codecloop check-data`` can list them all while
the message shows the count and the first few. `choose_format` turns ``--format`` (or, when it is
not given, the first layout whose detector recognises the folder) into one of a task's layout names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

SHOWN = 3


class MissingFilesError(FileNotFoundError):
    """Files that a split file or an annotation file names and the disk lacks; ``missing`` holds all."""

    def __init__(self, source: str | Path, missing: Sequence[str], what: str = "file", hint: str = "") -> None:
        self.source, self.missing = str(source), list(missing)
        shown = ", ".join(self.missing[:SHOWN])
        more = f"; `codecloop check-data` with the same --task, --data and keys lists all {len(self.missing)}" \
            if len(self.missing) > SHOWN else ""
        super().__init__(f"{source} names {len(self.missing)} missing {what}(s) (first: {shown}){more}"
                         f"{f'. {hint}' if hint else ''}")


def choose_format(task: str, root: Path, requested: str | None,
                  detectors: Mapping[str, Callable[[Path], bool]]) -> str:
    """The layout to read `root` as: `requested` (which must be one of `detectors`), else the first
    layout whose detector recognises the folder; an error names the layouts when none does."""
    names = ", ".join(detectors)
    if requested is not None:
        if requested not in detectors:
            raise ValueError(f"config key 'format': the {task} task reads {names}; not {requested!r}")
        return requested
    for name, detect in detectors.items():
        if detect(root):
            return name
    raise ValueError(f"{root} is not laid out as a {task} dataset this task reads ({names}); see the README's "
                     f"layout table, or name the layout with --format")
