"""Weight-space interpolation between the original network and its fine-tuned copy (WiSE-FT, Wortsman et al.,
CVPR 2022): ``original + mix x (fine-tuned - original)``.

Fine-tuning on compressed images moves a few decisions on clean input; interpolating the weights keeps part of
what was learnt about compressed input while moving fewer of them (on the demo, a mix of 0.5 kept every clean
prediction and about two thirds of the recovery at quality 10-20). ``--retrain_mix`` fixes the mix;
``--retrain_mix_split`` chooses it on a split that is neither trained on nor reported: the largest of
`MIX_GRID` whose clean-input metric there is at least the original's (else 0, the original itself).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

MIX_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)


def mix_weights(original: torch.nn.Module, tuned: torch.nn.Module, mix: float) -> torch.nn.Module:
    """A copy of `tuned` whose floating-point parameters and buffers are ``original + mix x (tuned - original)``
    (integer buffers, such as BatchNorm's step count, are the fine-tuned ones)."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"config key 'retrain_mix': {mix} is outside 0..1")
    start, end = original.state_dict(), tuned.state_dict()
    if start.keys() != end.keys():
        raise ValueError("the original and the fine-tuned network have different weights: cannot mix them")
    mixed = copy.deepcopy(tuned)
    mixed.load_state_dict({name: torch.lerp(start[name].to(value.device, value.dtype), value, mix)
                           if value.is_floating_point() else value for name, value in end.items()})
    return mixed


def choose_mix(clean_metric: Callable[[float], float], higher_is_better: bool,
               grid: Sequence[float] = MIX_GRID) -> tuple[float, list[dict[str, float]]]:
    """The largest mix in `grid` whose clean-input metric (`clean_metric(mix)`, on the calibration split) is at
    least the original's (``clean_metric(0)``; for an error metric: at most), else 0; and each mix tried with
    its metric, in the order tried (0 first)."""
    reference = clean_metric(0.0)
    tried = [{"mix": 0.0, "metric": reference}]
    for mix in sorted(grid, reverse=True):
        value = clean_metric(mix)
        tried.append({"mix": mix, "metric": value})
        if (value >= reference) if higher_is_better else (value <= reference):
            return mix, tried
    return 0.0, tried
