"""Feature restoration: fine-tune a network's front end to give, from a compressed image, the features the
original network gives from the clean one (``--retrain_loss features``).

The loss is the squared error between the student's output of one module (``--retrain_layer``, e.g.
``blocks.2`` of a timm EfficientNet, ``layer2`` of a torchvision ResNet) on the compressed view and the frozen
original's output of that module on the clean copy of the same view, divided by the mean square of the
original's. Only the parameters registered up to that module train; everything after it stays the original's,
so a perfectly restored front end gives the original's predictions, and the loss needs no labels. Compared
with the task's own loss on labels or the KL divergence to a teacher, each image gives a target per position
and channel rather than one per image, which is what lets a few hundred fine-tuning steps learn to undo the
codec while moving few of the network's decisions on clean input.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel


class _Reached(Exception):
    """Raised by the capture hook to stop a forward pass once the restored module has run."""


class FeatureRestoration:
    """The training objective: restore `reference`'s output of module `layer` on clean input (a frozen copy is
    kept) from the compressed input, in a model of the same architecture."""

    def __init__(self, reference: torch.nn.Module, layer: str) -> None:
        modules = dict(reference.named_modules())
        if not layer or layer not in modules:
            top = ", ".join(name for name, _ in reference.named_children())
            raise ValueError(f"config key 'retrain_layer': the model has no module {layer!r} (its top-level "
                             f"modules: {top}; nested ones by dotted name, e.g. blocks.2)")
        self.layer = layer
        self.reference = copy.deepcopy(reference).eval().requires_grad_(False)
        self.fixed: list[torch.nn.Module] = []

    def front_end(self, model: torch.nn.Module) -> list[str]:
        """Names of the parameters registered up to and including `layer`: the ones that train."""
        names = [name for name, _ in model.named_parameters()]
        inside = [i for i, name in enumerate(names) if name.startswith(self.layer + ".")]
        if not inside:
            raise ValueError(f"config key 'retrain_layer': module {self.layer!r} has no parameter to fine-tune")
        return names[:inside[-1] + 1]

    def prepare(self, model: torch.nn.Module, device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        """Freeze every parameter of `model` after the restored module (before the optimizer and DDP see it),
        note the modules registered after it (kept in eval mode while training), and put the reference on
        the training `device` in the images' memory format, once."""
        self.reference.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        trained = set(self.front_end(model))
        for name, parameter in model.named_parameters():
            if name not in trained:
                parameter.requires_grad_(False)
        modules = list(model.named_modules())
        last = max(i for i, (name, _) in enumerate(modules) if name == self.layer or name.startswith(self.layer + "."))
        self.fixed = [module for _, module in modules[last + 1:]]

    def fixed_in_eval(self) -> None:
        """Put the modules after the restored one in eval mode: under DDP the forward runs through them, and
        in train mode their BatchNorm statistics would drift from the original's."""
        if any(module.training for module in self.fixed):  # the loop sets train mode at each epoch's start
            for module in self.fixed:
                module.eval()

    def features(self, model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
        """`model`'s output of the restored module on `image`. A plain module stops there; a DDP-wrapped one
        runs to the end (stopping inside DDP's forward would skip its gradient synchronisation)."""
        stop = not isinstance(model, DistributedDataParallel)
        inner = model if stop else model.module
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            captured.append(output)
            if stop:
                raise _Reached

        handle = inner.get_submodule(self.layer).register_forward_hook(hook)
        try:
            model(image)
        except _Reached:
            pass
        finally:
            handle.remove()
        return captured[0]

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The normalized squared error of the restored module's output (``loss``), per batch."""
        if "clean_image" not in batch:
            raise ValueError("feature restoration needs the clean copy of each training view (clean_image)")
        with torch.no_grad():
            target = self.features(self.reference, batch["clean_image"]).float()
        self.fixed_in_eval()
        restored = self.features(model, batch["image"]).float()
        return {"loss": (restored - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)}
