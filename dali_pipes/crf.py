"""H.264 CRF specs: how a CRF is drawn for each clip (or image), and the ladder's rungs.

Written like the JPEG quality spec, on the command line and in YAML:

| text           | meaning                                                             |
| -------------- | ------------------------------------------------------------------- |
| ``none``       | no H.264 stage: the clean rung (CRF 0) or the untouched image       |
| ``28``         | fixed CRF 28                                                        |
| ``18-51``      | a uniform integer CRF in [18, 51]; on a ladder, snapped to the nearest rung |
| ``18,28,40``   | uniform choice among the listed CRFs                                |

``clean_prob`` (0..1) is the share of samples passed through clean. For a ladder, clean means
its CRF-0 rung (lossless apart from 4:2:0 chroma) and reports CRF 0; for images encoded
online it means the untouched image and reports `CLEAN_CRF` (-1).

CRF 0..51 is x264's 8-bit scale: 0 is lossless, 23 its default, 51 the worst.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_CRF = 0
MAX_CRF = 51
CLEAN_CRF = -1
LOSSLESS_CRF = 0
DEFAULT_LADDER: tuple[int, ...] = (0, 10, 18, 23, 28, 33, 37, 40, 43, 46, 51)
DEFAULT_CRF_LEVELS = "18,23,28,33,37,40,43,46,51"

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class CrfSpec:
    """Parsed CRF spec: a range ``(low, high)`` or a choice list, and the clean share."""

    low: int | None = None
    high: int | None = None
    choices: tuple[int, ...] = ()
    clean_prob: float = 0.0
    text: str = "none"

    @property
    def is_none(self) -> bool:
        """True when every sample passes through clean."""
        return (self.low is None and not self.choices) or self.clean_prob >= 1.0

    def candidates(self) -> list[int]:
        """Every CRF the spec can draw (before snapping to a ladder)."""
        if self.choices:
            return list(self.choices)
        return [] if self.low is None else list(range(self.low, self.high + 1))

    def check_ladder(self, rungs: Sequence[int], where: str = "the ladder") -> None:
        """Raise ValueError when the spec needs a CRF `rungs` lacks (choices must be rungs;
        a range must hold at least one; clean needs the CRF-0 rung)."""
        rungs = sorted(set(rungs))
        missing = [crf for crf in self.choices if crf not in rungs]
        if missing:
            raise ValueError(f"CRF spec {self.text!r}: CRF {missing[0]} is not a rung of {where} "
                             f"(rungs: {','.join(map(str, rungs))}); transcode it with --crfs")
        if (self.is_none or self.clean_prob > 0) and LOSSLESS_CRF not in rungs:
            raise ValueError(f"CRF spec {self.text!r} needs clean samples, but {where} has no CRF-0 rung "
                             f"(rungs: {','.join(map(str, rungs))})")

    def pick(self, clean_draw: float, choice_draw: float, rungs: Sequence[int] | None = None) -> int:
        """The CRF two uniform draws in [0, 1) select: clean when `clean_draw` < `clean_prob`, else the spec's
        CRF at `choice_draw` (uniform over them), snapped to `rungs`.

        Clean returns ``LOSSLESS_CRF`` with a ladder and ``CLEAN_CRF`` without one.
        """
        clean = LOSSLESS_CRF if rungs is not None else CLEAN_CRF
        if self.is_none or clean_draw < self.clean_prob:
            return clean
        options = self.candidates()
        crf = int(options[min(int(choice_draw * len(options)), len(options) - 1)])
        return snap(crf, rungs) if rungs is not None else crf

    def draw(self, rng: np.random.Generator, rungs: Sequence[int] | None = None) -> int:
        """One CRF drawn from `rng` by the law of `pick`."""
        return self.pick(rng.random(), rng.random(), rungs)

    def __str__(self) -> str:
        return self.text if not self.clean_prob else f"{self.text} (clean_prob={self.clean_prob:g})"


def snap(crf: int, rungs: Sequence[int]) -> int:
    """The rung nearest to `crf` (the lower one on a tie)."""
    return min(sorted(rungs), key=lambda rung: abs(rung - crf))


def _crf(token: str, spec: str) -> int:
    if not token.strip().isdigit():
        raise ValueError(f"CRF spec {spec!r}: {token.strip()!r} is not an integer CRF")
    value = int(token)
    if not MIN_CRF <= value <= MAX_CRF:
        raise ValueError(f"CRF spec {spec!r}: CRF {value} is outside {MIN_CRF}..{MAX_CRF}")
    return value


def parse_crf_spec(spec: str | int | CrfSpec | None, clean_prob: float = 0.0) -> CrfSpec:
    """Parse ``none`` / ``28`` / ``18-51`` / ``18,28,40`` into a `CrfSpec`; errors name the value."""
    if isinstance(spec, CrfSpec):
        return spec if not clean_prob else CrfSpec(spec.low, spec.high, spec.choices, clean_prob, spec.text)
    if not 0.0 <= float(clean_prob) <= 1.0:
        raise ValueError(f"clean_prob {clean_prob!r} is outside 0..1")
    text = "none" if spec is None else str(spec).strip()
    if text.lower() in ("none", "clean", ""):
        return CrfSpec(text="none")
    if match := _RANGE.match(text):
        low, high = _crf(match.group(1), text), _crf(match.group(2), text)
        if low > high:
            raise ValueError(f"CRF spec {text!r}: range start {low} is above its end {high}")
        return CrfSpec(low, high, (), float(clean_prob), text)
    tokens = [token for token in text.split(",") if token.strip()] if "," in text else [text]
    choices = tuple(sorted({_crf(token, text) for token in tokens}))
    if not choices:
        raise ValueError(f"CRF spec {text!r} lists no CRF")
    return CrfSpec(None, None, choices, float(clean_prob), text)


def parse_crf_levels(text: str | Sequence) -> list[int]:
    """Parse a CRF sweep list (``18,28,40`` or a YAML list) into sorted unique CRFs."""
    tokens = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    spec_text = ",".join(t.strip() for t in tokens)
    return sorted({_crf(token, spec_text) for token in tokens if token.strip()})
