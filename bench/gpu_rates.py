"""Published GPU training rates, the yardstick of `codecloop bench --mode codecs` (kept apart from the bench
itself, so that the CLI's help can name the figure without importing the codecs).

A figure is quoted with its source so that a results file says what its shares of a GPU step were shares of.
"""

from __future__ import annotations

GPU_IMAGES_PER_SEC = 2470.0
GPU_SOURCE = ("ResNet-50 v1.5 training on one A100 80GB, mixed precision, PyTorch: 2470 images/s (NVIDIA "
              "DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, 'Training performance: "
              "NVIDIA DGX A100 (8x A100 80GB)', 1 GPU, NGC pytorch-21.03); an H100 trains faster, so its shares "
              "are larger")
