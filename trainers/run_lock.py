"""One command at a time per run directory: an exclusive lock on ``RUN/.lock``.

The lock is an advisory ``flock`` held by the process for the whole command. The operating system
drops it when the process ends, however it ends (kill -9 included), so a dead run never blocks a new
one; its lock file, which records the holder, is then reported as stale and taken over. A second
command on a directory in use stops at once, naming the process that holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirectoryBusy(ValueError):
    """Another live command holds the run directory."""


class RunLock:
    """The exclusive lock of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._handle = None

    def acquire(self, command: str) -> str | None:
        """Take the lock for `command`; returns a note on a stale lock taken over (None if there was none).
        Raises `RunDirectoryBusy` naming the holder when a live process has it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise RunDirectoryBusy(f"run directory {self.run_dir} is in use by {holder}: wait for it to end, or "
                                   "choose another --out") from None
        handle.seek(0)
        previous = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        handle.flush()
        self._handle = handle
        if previous:
            return f"{self.path}: taking over the stale lock of {_describe(previous)}, which ended without releasing it"
        return None

    def release(self) -> None:
        """Remove the lock file and drop the lock (a no-op when not held)."""
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def _describe(recorded: str) -> str:
    """A lock file's holder in words."""
    try:
        holder = json.loads(recorded)
        return f"process {holder['pid']} on {holder['host']} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"
