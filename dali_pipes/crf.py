"""The H.264 CRF scale and the ladder's rungs.

CRF 0..51 is x264's 8-bit scale: 0 is lossless, 23 its default, 51 the worst. A ladder's clean
rung is CRF 0 (lossless apart from 4:2:0 chroma); a clean sample read from it reports
`CLEAN_LEVEL` like every codec's clean sample.
"""

from __future__ import annotations

from codecloop.dali_pipes.levels import LevelScale

MIN_CRF = 0
MAX_CRF = 51
LOSSLESS_CRF = 0
DEFAULT_LADDER: tuple[int, ...] = (0, 10, 18, 23, 28, 33, 37, 40, 43, 46, 51)
DEFAULT_CRF_LEVELS: tuple[int, ...] = (18, 23, 28, 33, 37, 40, 43, 46, 51)
CRF_SCALE = LevelScale("H.264", "CRF", MIN_CRF, MAX_CRF)
