"""Cheap checks that keep unreadable files out of a DALI reader.

A DALI decoder that meets a corrupt file fails the whole batch, so files are checked before
the pipeline is built: the header must parse (Pillow reads only the header here) and a JPEG
must end with its EOI marker, a PNG with its IEND chunk (a truncated download fails that).
Bad files are skipped and reported with their path and reason, or, in strict mode, stop
the run naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

_TAIL_BYTES = 1024  # camera files may pad after the end marker
_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND\xaeB`\x82"


class BadImageError(RuntimeError):
    """Raised in strict mode for the first unreadable image, naming it."""


@dataclass
class ScanResult:
    """Files that passed, and ``(path, reason)`` for each file skipped."""

    good: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def image_problem(path: str | Path) -> str | None:
    """Why `path` cannot be decoded, or None when it looks whole."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            if len(head) < 8:
                return "file too short to be an image"
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - _TAIL_BYTES))
            tail = handle.read()
        with Image.open(path) as image:
            image_format = image.format
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"not a readable image ({error.__class__.__name__}: {error})"
    if width < 1 or height < 1:
        return f"image has size {width}x{height}"
    if image_format == "JPEG" and _JPEG_EOI not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if image_format == "PNG" and _PNG_IEND not in tail:
        return "truncated PNG (no IEND chunk)"
    if image_format not in ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM"):
        return f"image format {image_format} is not decoded by the pipeline"
    return None


def scan_images(paths: Sequence[str], strict: bool = False, workers: int = 8) -> ScanResult:
    """Check every path; skip bad ones (or raise `BadImageError` naming the first if `strict`)."""
    result = ScanResult()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, problem in zip(paths, pool.map(image_problem, paths)):
            if problem is None:
                result.good.append(path)
            elif strict:
                raise BadImageError(f"{path}: {problem} (strict mode stops on the first bad file)")
            else:
                result.skipped.append((path, problem))
    return result
