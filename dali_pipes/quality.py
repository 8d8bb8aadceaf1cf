"""JPEG quality specs: how the codec stage draws a quality for each sample.

A spec is written the same way on the command line and in YAML:

| text          | meaning                                              |
| ------------- | ---------------------------------------------------- |
| ``none``      | no codec stage: every sample passes through clean    |
| ``30``        | fixed quality 30                                     |
| ``5-95``      | uniform integer quality in [5, 95], both ends included |
| ``5,10,15,30``| uniform choice among the listed qualities             |

``clean_prob`` (0..1) is the fraction of samples passed through untouched on top
of any of the above. A clean sample reports quality ``0`` in the batch
(``CLEAN_QUALITY``), so logged quality statistics can leave it out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

MIN_QUALITY = 1
MAX_QUALITY = 100
CLEAN_QUALITY = 0

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class QualitySpec:
    """Parsed quality spec: the qualities drawn from (uniformly) and the clean share."""

    qualities: tuple[int, ...]
    clean_prob: float = 0.0
    text: str = "none"

    @property
    def is_none(self) -> bool:
        """True when no sample is ever compressed."""
        return not self.qualities or self.clean_prob >= 1.0

    def choices(self) -> np.ndarray:
        """The qualities as an int32 array, the form `fn.random.choice` takes."""
        return np.asarray(self.qualities, dtype=np.int32)

    def picks(self, clean_draws: np.ndarray, choice_draws: np.ndarray) -> np.ndarray:
        """The qualities uniform draws in [0, 1) select (for pipelines fed from Python), one per pair:
        ``CLEAN_QUALITY`` where the clean draw < `clean_prob`, else the spec's quality at the choice draw
        (uniform over them)."""
        if self.is_none:
            return np.full(len(clean_draws), CLEAN_QUALITY, np.int32)
        qualities = np.asarray(self.qualities, np.int32)
        chosen = qualities[np.minimum((np.asarray(choice_draws) * len(qualities)).astype(np.int64), len(qualities) - 1)]
        return np.where(np.asarray(clean_draws) < self.clean_prob, CLEAN_QUALITY, chosen).astype(np.int32)

    def pick(self, clean_draw: float, choice_draw: float) -> int:
        """One quality by the law of `picks`."""
        return int(self.picks(np.array([clean_draw]), np.array([choice_draw]))[0])

    def draw(self, rng: np.random.Generator) -> int:
        """One quality drawn from `rng` by the law of `pick`."""
        return self.pick(rng.random(), rng.random())

    def __str__(self) -> str:
        return self.text if not self.clean_prob else f"{self.text} (clean_prob={self.clean_prob:g})"


def _quality(token: str, spec: str) -> int:
    if not token.strip().isdigit():
        raise ValueError(f"JPEG quality spec {spec!r}: {token.strip()!r} is not an integer quality")
    value = int(token)
    if not MIN_QUALITY <= value <= MAX_QUALITY:
        raise ValueError(
            f"JPEG quality spec {spec!r}: quality {value} is outside {MIN_QUALITY}..{MAX_QUALITY}"
        )
    return value


def parse_quality_spec(spec: str | int | QualitySpec | None, clean_prob: float = 0.0) -> QualitySpec:
    """Parse ``none`` / ``30`` / ``5-95`` / ``5,10,15`` into a `QualitySpec`.

    Raises ValueError naming the offending value for anything malformed or out of range.
    """
    if isinstance(spec, QualitySpec):
        return spec if not clean_prob else QualitySpec(spec.qualities, clean_prob, spec.text)
    if not 0.0 <= float(clean_prob) <= 1.0:
        raise ValueError(f"clean_prob {clean_prob!r} is outside 0..1")
    if spec is None:
        return QualitySpec((), 0.0, "none")
    text = str(spec).strip()
    if text.lower() in ("none", "clean", ""):
        return QualitySpec((), 0.0, "none")
    if match := _RANGE.match(text):
        low, high = _quality(match.group(1), text), _quality(match.group(2), text)
        if low > high:
            raise ValueError(f"JPEG quality spec {text!r}: range start {low} is above its end {high}")
        qualities = tuple(range(low, high + 1))
    elif "," in text:
        qualities = tuple(sorted({_quality(token, text) for token in text.split(",") if token.strip()}))
        if not qualities:
            raise ValueError(f"JPEG quality spec {text!r} lists no quality")
    else:
        qualities = (_quality(text, text),)
    return QualitySpec(qualities, float(clean_prob), text)


def parse_levels(text: str | list | tuple) -> list[int]:
    """Parse a sweep level list (``5,10,15`` or a YAML list) into sorted unique qualities."""
    tokens = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    spec_text = ",".join(t.strip() for t in tokens)
    return sorted({_quality(token, spec_text) for token in tokens if token.strip()})
