"""Image classification: ImageFolder reader, any timm model, cross-entropy, top-1 / top-5.

Layout: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``; classes are the sorted
folder names of ``train``. A codec that runs in the graph (JPEG) runs in the DALI pipeline; a host
codec (H.264) round-trips each image online on CPU threads, or, when the folders hold frame sequences
transcoded with ``codecloop transcode --src ROOT``, each image's frame is read from the ladder (``ladder``).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from codecloop.dali_pipes import (IMAGENET_MEAN, IMAGENET_STD, Codec, ImageBatches, ImageGeometry, LevelSpec,
                                  PipelineRuntime, SweepBatches)
from codecloop.dali_pipes.ladder import load_ladder
from codecloop.dali_pipes.rates import RateSource
from codecloop.dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, ScanPolicy, scan_images
from codecloop.tasks.base import Task
from codecloop.tasks.layout_errors import choose_format
from codecloop.tasks.weights import load_pretrained
from codecloop.tasks.registry import register_task
from codecloop.tasks.sample_index import SampleIndex

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
NORMALIZATIONS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "inception": ((0.5,) * 3, (0.5,) * 3)}


def list_image_folder(split_dir: Path) -> tuple[list[str], list[str], list[int]]:
    """Classes, files and class ids of an ImageFolder split; errors name the empty folder."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"dataset split folder {split_dir} does not exist")
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"dataset split {split_dir} has no class folders (expected {split_dir}/<class>/*.jpg)")
    files: list[str] = []
    class_ids: list[int] = []
    for class_id, name in enumerate(classes):
        members = sorted(
            str(path) for path in (split_dir / name).rglob("*")
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not members:
            raise ValueError(f"class folder {split_dir / name} holds no image files")
        files += members
        class_ids += [class_id] * len(members)
    return classes, files, class_ids


@register_task("classification")
class ClassificationTask(Task):
    """ImageFolder classification with a timm model; owns its loss and per-sample metrics."""

    primary_metric = "top1"
    higher_is_better = True
    memory_format = torch.channels_last
    clean_view = True
    media = "images"  # what the codec compresses: single images, or clips from a ladder
    model_help = "any timm model name (timm.list_models()), e.g. resnet50, efficientnet_lite0, vit_small_patch16_224"
    default_model = "resnet50"
    config_keys = ("data", "model", "pretrained", "num_classes", "label_smoothing", "strict", "keep_damaged",
                   "max_image_pixels", "crop_size", "resize_size", "min_scale", "normalize", "codec_placement",
                   "ladder", "format")

    def __init__(
        self,
        data: str | Path,
        model: str = default_model,
        pretrained: str | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
        strict: bool = False,
        keep_damaged: bool = False,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        crop_size: int = 224,
        resize_size: int = 256,
        min_scale: float = 0.08,
        normalize: str = "imagenet",
        codec_placement: str = "native",
        ladder: str | Path | None = None,
        format: str | None = None) -> None:
        self.root = Path(data)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset path {self.root} does not exist")
        choose_format("classification", self.root, format, {"imagefolder": lambda root: True})  # the only layout
        self.model_name = model
        self.pretrained = pretrained
        self.label_smoothing = label_smoothing
        self.scan_policy = ScanPolicy(strict, keep_damaged, max_image_pixels)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize {normalize!r} must be one of {sorted(NORMALIZATIONS)}")
        self.geometry = ImageGeometry(crop_size, resize_size, min_scale, *NORMALIZATIONS[normalize])
        self.codec_placement = codec_placement
        self.ladder = load_ladder(ladder) if ladder else None
        if self.ladder is not None:
            self.ladder.check_source(self.root)
        self.classes, _, _ = list_image_folder(self.root / "train")
        self.num_classes = num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ValueError(f"num_classes {self.num_classes} is below the {len(self.classes)} class folders")

    def has_split(self, split: str) -> bool:
        """Whether the dataset has a folder for `split`."""
        return (self.root / split).is_dir()

    def sample_index(self, split: str) -> SampleIndex:
        """Files of `split` that pass the scan (`ScanPolicy`) with their class ids; bad ones skipped (or strict)."""
        classes, files, class_ids = list_image_folder(self.root / split)
        unknown = sorted(set(classes) - set(self.classes))
        if unknown:
            raise ValueError(f"{self.root / split} has classes absent from train: {', '.join(unknown[:5])}")
        remap = [self.classes.index(name) for name in classes]
        scan = scan_images(files, self.scan_policy, data_root=self.root)
        id_of = dict(zip(files, class_ids))
        labels = torch.tensor([remap[id_of[path]] for path in scan.good], dtype=torch.long)
        if not scan.good:
            raise ValueError(f"dataset split {self.root / split} has no readable image")
        return SampleIndex(split, scan.good, {"label": labels}, scan.skipped, sizes=scan.sizes)

    def batches(self, index: SampleIndex, *, training: bool, spec: LevelSpec, codec: Codec, runtime: PipelineRuntime,
                checkpoint: bytes | str | None = None,
                with_clean: bool = False) -> ImageBatches:
        """One epoch after another of `index` through the codec stage, as dict batches on the device.

        An in-graph codec runs in the DALI pipeline; a host codec round-trips each image online, or, with a
        ladder, each image is its frame of the drawn rung. With `with_clean`, batches also carry
        ``clean_image``: the same view without the codec.
        """
        samples = self.ladder_frames(index.files) if self.ladder else index.files
        return ImageBatches(samples, training=training, spec=spec, codec=codec, geometry=self.geometry,
                            ladder=self.ladder, targets=index.targets, codec_placement=self.codec_placement,
                            checkpoint=checkpoint, with_clean=with_clean, sizes=index.sizes,
                            runtime=runtime)

    def sweep_batches(self, index: SampleIndex, levels: list[int], codec: Codec,
                      runtime: PipelineRuntime) -> SweepBatches | None:
        """All `levels` of an in-graph codec over `index` in one pass (each image decoded once); None with a
        ladder."""
        if self.ladder is not None:
            return None
        return SweepBatches(index.files, levels=levels, codec=codec, geometry=self.geometry, targets=index.targets,
                            codec_placement=self.codec_placement, runtime=runtime)

    def rate_source(self, index: SampleIndex) -> RateSource:
        """The images whole, or on a ladder the clips their frames belong to (the rungs are the bitstreams)."""
        if self.ladder is None:
            return super().rate_source(index)
        clips = tuple(dict.fromkeys(clip for clip, _ in self.ladder_frames(index.files)))
        return RateSource(ladder=self.ladder, clips=clips)

    def ladder_frames(self, files: list[str]) -> list[tuple[str, int]]:
        """The ladder frame of each image file (the ladder is built from the dataset root's sequences)."""
        frames = self.ladder.frame_index()
        keys = [Path(path).relative_to(self.root).as_posix() for path in files]
        missing = [key for key in keys if key not in frames]
        if missing:
            raise ValueError(f"{len(missing)} image(s) are not frames of the ladder {self.ladder.root} (first: "
                             f"{', '.join(missing[:3])}); build it from the sequence folders with: codecloop "
                             f"transcode --src {self.root} --dst {self.ladder.root}")
        return [frames[key] for key in keys]

    def create_model(self) -> torch.nn.Module:
        """The timm model by name, with local weights from `pretrained` when given."""
        try:
            model = timm.create_model(self.model_name, pretrained=False, num_classes=self.num_classes)
        except RuntimeError as error:
            raise ValueError(f"model {self.model_name!r}: {error}") from error
        if self.pretrained:
            load_pretrained(model, self.pretrained)
        return model

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of the batch's images."""
        return model(batch["image"])

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss (mean over the batch) and logits."""
        logits = self.predict(model, batch)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "outputs": logits}

    def sample_metrics(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-sample metric values (means over the dataset are the reported metrics)."""
        logits = logits.float()
        label = batch["label"]
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        return {
            "top1": (top5[:, 0] == label).float(),
            "top5": (top5 == label[:, None]).any(dim=1).float(),
            "loss": F.cross_entropy(logits, label, reduction="none"),
        }
