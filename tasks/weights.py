"""Load local pretrained weights (no network): exact keys, by tensor order, or all but the head."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch

_COUNTER = "num_batches_tracked"


def _split_counters(state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Keys of real tensors and keys of BatchNorm batch counters, each in order."""
    tensors = [key for key in state if not key.endswith(_COUNTER)]
    counters = [key for key in state if key.endswith(_COUNTER)]
    return tensors, counters


def _pair_by_order(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> list[tuple[str, str]]:
    """(model key, checkpoint key) pairs by position; counters paired only if equal in number."""
    target_keys, target_counters = _split_counters(target)
    source_keys, source_counters = _split_counters(source)
    if len(target_keys) != len(source_keys):
        raise ValueError(
            f"model has {len(target_keys)} tensors, checkpoint has {len(source_keys)} "
            f"(BatchNorm {_COUNTER} counters not counted)"
        )
    pairs = list(zip(target_keys, source_keys))
    if len(target_counters) == len(source_counters):
        pairs += list(zip(target_counters, source_counters))
    return pairs


def _first_shape_mismatch(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]]
) -> str | None:
    for index, (target_key, source_key) in enumerate(pairs):
        target_shape, source_shape = tuple(target[target_key].shape), tuple(source[source_key].shape)
        if target_shape != source_shape:
            return (
                f"tensor #{index}: model '{target_key}' {target_shape} "
                f"vs checkpoint '{source_key}' {source_shape}"
            )
    return None


def load_state_dict_by_order(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Copy `state_dict` into `model` by position when key names differ but shapes line up.

    Both sides are compared as ordered lists of tensors (parameters and buffers), which must agree
    in count and in every shape. BatchNorm ``num_batches_tracked`` counters (int64 scalars) are
    left out of that comparison: some checkpoints (TF ports, older exports) lack them, and they
    only matter for BatchNorm with ``momentum=None``. When both sides hold the same number of
    counters they are copied in order too; otherwise the model keeps its own.
    Raises ValueError naming the first mismatching index, keys and shapes.
    """
    target = model.state_dict()
    pairs = _pair_by_order(target, state_dict)
    mismatch = _first_shape_mismatch(target, state_dict, pairs)
    if mismatch:
        raise ValueError(f"state dict does not line up with the model by order: {mismatch}")
    model.load_state_dict({key: state_dict[src] for key, src in pairs}, strict=False)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict in a weights file: raw, under "state_dict"/"model", "module." stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            obj = safetensors.torch.load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a loadable torch weights file: {error}") from error
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors)")
    if all(key.startswith("module.") for key in obj):
        return {key.removeprefix("module."): value for key, value in obj.items()}
    return dict(obj)


def _head_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the classifier: timm's pretrained_cfg["classifier"], else the last Linear."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier")
    if not isinstance(name, str):
        linears = [n for n, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
        name = linears[-1] if linears else None
    if name is None:
        return set()
    return {key for key in model.state_dict() if key.startswith(name + ".")}


def load_pretrained(model: torch.nn.Module, path: str | Path) -> str:
    """Load a local weights file into `model`; returns how it loaded.

    Tries exact keys (``strict=True``), then tensor order (`load_state_dict_by_order`). With
    either pairing, a classifier head whose shape differs only in the class count is skipped
    (left at its initialisation) and reported. Anything else raises ValueError naming the file.
    """
    path = Path(path)
    source = read_state_dict(path)
    target = model.state_dict()
    if set(source) == set(target) and _first_shape_mismatch(target, source, [(k, k) for k in target]) is None:
        model.load_state_dict(source, strict=True)
        return f"exact keys, {len(source)} entries from {path.name}"
    exact = set(_split_counters(source)[0]) == set(_split_counters(target)[0])
    try:
        pairs = [(k, k) for k in target if k in source] if exact else _pair_by_order(target, source)
    except ValueError as error:
        raise ValueError(f"{path}: checkpoint from another model: {error}") from error
    head = _head_keys(model)
    skipped = [
        (key, src) for key, src in pairs
        if target[key].shape != source[src].shape and key in head
        and target[key].shape[1:] == source[src].shape[1:]
    ]
    kept = [pair for pair in pairs if pair not in skipped]
    mismatch = _first_shape_mismatch(target, source, kept)
    if mismatch:
        raise ValueError(f"{path}: checkpoint from another model: {mismatch}")
    model.load_state_dict({key: source[src] for key, src in kept}, strict=False)
    how = "exact keys" if exact else "by tensor order (key names differ)"
    note = ""
    if skipped:
        key, src = skipped[0]
        note = (
            f"; classifier head not loaded ({source[src].shape[0]} classes in checkpoint, "
            f"model has {target[key].shape[0]}), left at init"
        )
    return f"{how}, {len(kept)} entries from {path.name}{note}"
