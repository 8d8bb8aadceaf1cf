"""Synthetic action datasets in the native layouts of public datasets (filled in by this issue's work)."""

from __future__ import annotations

WRITERS: dict = {}
