"""Shared fixtures: small real-JPEG datasets and an in-process `codecloop` runner."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.datasets import write_image_folder

os.environ.setdefault("WANDB_MODE", "disabled")

TINY = ["--model", "test_efficientnet", "--crop_size", "32", "--resize_size", "40",
        "--wandb", "disabled", "--progress", "false", "--num_threads", "2"]


@pytest.fixture(scope="session", autouse=True)
def scan_cache_dir(tmp_path_factory) -> Path:
    """Image scan verdicts cached in this session's temporary folder, never the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("scan-cache")
    os.environ["CODECLOOP_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Three classes of real JPEG crops: 8 train and 5 val images per class (15 val in all)."""
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"), {"train": 8, "val": 5})


@pytest.fixture(scope="module")
def run_cli_module():
    """`run_cli` for module-scoped fixtures: output captured with redirected streams."""
    import contextlib
    import io

    from codecloop.launch.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([str(arg) for arg in args])
        return status, out.getvalue(), err.getvalue()

    return run


@pytest.fixture
def run_cli(capsys):
    """Run `codecloop ARGS` in this process; returns (exit status, stdout, stderr)."""
    from codecloop.launch.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        status = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Any host sync torch makes inside raises (its CUDA sync debug mode); queued work is finished first."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
