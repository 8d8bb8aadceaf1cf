"""Level specs: how a codec's level (JPEG quality, H.264 CRF, ...) is drawn for each sample or clip.

A spec is written the same way for every codec, on the command line and in YAML:

| text          | meaning                                                  |
| ------------- | -------------------------------------------------------- |
| ``none``      | no codec stage: every sample passes through clean        |
| ``30``        | fixed level 30                                           |
| ``5-95``      | uniform integer level in [5, 95], both ends included     |
| ``5,10,15,30``| uniform choice among the listed levels                   |

``clean_prob`` (0..1) is the share of samples passed through untouched on top of any of the
above. A clean sample reports `CLEAN_LEVEL` (-1) in the batch's ``codec_level``, whatever the
codec: no codec's level scale reaches below 0, so logged statistics leave clean samples out.
On a ladder (a cache of clips encoded ahead), drawn levels snap to the nearest rung.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CLEAN_LEVEL = -1

_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True)
class LevelSpec:
    """Parsed level spec: the levels drawn from (uniformly), the clean share, and the text it came from."""

    levels: tuple[int, ...]
    clean_prob: float = 0.0
    text: str = "none"
    is_range: bool = False
    name: str = "level"

    @property
    def is_none(self) -> bool:
        """True when no sample is ever compressed."""
        return not self.levels or self.clean_prob >= 1.0

    def choices(self) -> np.ndarray:
        """The levels as an int32 array, the form `fn.random.choice` takes."""
        return np.asarray(self.levels, dtype=np.int32)

    def picks(self, clean_draws: np.ndarray, choice_draws: np.ndarray,
              rungs: Sequence[int] | None = None) -> np.ndarray:
        """The levels uniform draws in [0, 1) select, one per pair: `CLEAN_LEVEL` where the clean draw <
        `clean_prob`, else the spec's level at the choice draw (uniform over them), snapped to `rungs`."""
        if self.is_none:
            return np.full(len(clean_draws), CLEAN_LEVEL, np.int32)
        levels = np.asarray(self.levels, np.int64)
        chosen = levels[np.minimum((np.asarray(choice_draws) * len(levels)).astype(np.int64), len(levels) - 1)]
        if rungs is not None:
            chosen = snap(chosen, rungs)
        return np.where(np.asarray(clean_draws) < self.clean_prob, CLEAN_LEVEL, chosen).astype(np.int32)

    def pick(self, clean_draw: float, choice_draw: float, rungs: Sequence[int] | None = None) -> int:
        """One level by the law of `picks`."""
        return int(self.picks(np.array([clean_draw]), np.array([choice_draw]), rungs)[0])

    def draw(self, rng: np.random.Generator, rungs: Sequence[int] | None = None) -> int:
        """One level drawn from `rng` by the law of `pick`."""
        return self.pick(rng.random(), rng.random(), rungs)

    def check_ladder(self, rungs: Sequence[int], clean_rung: int | None, where: str = "the ladder") -> None:
        """Raise ValueError when the spec needs a level `rungs` lacks: a listed level must be a rung, a range
        (a range's draws snap to the nearest rung), and clean samples need the `clean_rung`."""
        rungs = sorted(set(rungs))
        listed = ",".join(map(str, rungs))
        if not self.is_range:
            missing = [level for level in self.levels if level not in rungs]
            if missing:
                raise ValueError(f"{self.name} spec {self.text!r}: {self.name} {missing[0]} is not a rung of {where} "
                                 f"(rungs: {listed}); transcode it with --crfs")
        if (self.is_none or self.clean_prob > 0) and clean_rung not in rungs:
            raise ValueError(f"{self.name} spec {self.text!r} needs clean samples, but {where} has no clean rung "
                             f"({self.name} {clean_rung}; rungs: {listed})")

    def __str__(self) -> str:
        return self.text if not self.clean_prob else f"{self.text} (clean_prob={self.clean_prob:g})"


def snap(levels, rungs: Sequence[int]):
    """The rung nearest to each level (the lower one on a tie); an int for an int."""
    ordered = np.asarray(sorted(set(rungs)), np.int64)
    values = np.asarray(levels, np.int64)
    nearest = ordered[np.abs(values[..., None] - ordered).argmin(axis=-1)]
    return int(nearest) if np.ndim(levels) == 0 else nearest


def ladder_rung(level: int, clean_rung: int) -> int:
    """The ladder rung a drawn level reads: `clean_rung` for `CLEAN_LEVEL`, else the level itself."""
    return clean_rung if level == CLEAN_LEVEL else level


@dataclass(frozen=True)
class LevelScale:
    """A codec's level scale: what the level is called and its range, for parsing and error messages."""

    codec: str
    name: str
    low: int
    high: int

    def level(self, token: str, spec: str) -> int:
        """`token` as a level of this scale; errors name the spec, the value and the range."""
        if not token.strip().isdigit():
            raise ValueError(f"{self.codec} {self.name} spec {spec!r}: {token.strip()!r} is not an integer {self.name}")
        value = int(token)
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.codec} {self.name} spec {spec!r}: {self.name} {value} is outside "
                             f"{self.low}..{self.high}")
        return value

    def parse_spec(self, spec: str | int | LevelSpec | None, clean_prob: float = 0.0) -> LevelSpec:
        """Parse ``none`` / ``30`` / ``5-95`` / ``5,10,15`` into a `LevelSpec`; errors name the value."""
        if isinstance(spec, LevelSpec):
            return spec if not clean_prob else dataclasses.replace(spec, clean_prob=clean_prob)
        if not 0.0 <= float(clean_prob) <= 1.0:
            raise ValueError(f"clean_prob {clean_prob!r} is outside 0..1")
        text = "none" if spec is None else str(spec).strip()
        if text.lower() in ("none", "clean", ""):
            return LevelSpec((), 0.0, "none", name=self.name)
        if match := _RANGE.match(text):
            low, high = self.level(match.group(1), text), self.level(match.group(2), text)
            if low > high:
                raise ValueError(f"{self.codec} {self.name} spec {text!r}: range start {low} is above its end {high}")
            return LevelSpec(tuple(range(low, high + 1)), float(clean_prob), text, is_range=True, name=self.name)
        tokens = [token for token in text.split(",") if token.strip()] if "," in text else [text]
        levels = tuple(sorted({self.level(token, text) for token in tokens}))
        if not levels:
            raise ValueError(f"{self.codec} {self.name} spec {text!r} lists no {self.name}")
        return LevelSpec(levels, float(clean_prob), text, name=self.name)

    def parse_levels(self, text: str | Sequence) -> list[int]:
        """Parse a sweep level list (``5,10,15`` or a YAML list) into sorted unique levels."""
        tokens = text.split(",") if isinstance(text, str) else [str(token) for token in text]
        spec_text = ",".join(token.strip() for token in tokens)
        levels = sorted({self.level(token, spec_text) for token in tokens if token.strip()})
        if not levels:
            raise ValueError(f"{self.codec} {self.name} list {spec_text!r} lists no {self.name}")
        return levels
