"""Action recognition on an H.264 CRF ladder: UCF101 / HMDB51 style video folders, torchvision video models.

Layout: ``DATA/<class>/<video>`` as UCF101 ships it, split by files in UCF101's format
(``--splits DIR`` holding ``trainlist0N.txt`` with lines ``Class/video.avi 1``, ``testlist0N.txt``
with lines ``Class/video.avi``, and optionally ``classInd.txt`` with lines ``1 Class``), or
``DATA/train/<class>/<video>`` and ``DATA/val/<class>/<video>``. The clips are read from the
ladder built from DATA (``codecloop transcode --src DATA --dst LADDER``), never from DATA itself.
Videos whose transcode failed are skipped and counted. Metrics: clip-level top-1 / top-5 and
video-level top-1 / top-5 (softmax averaged over ``eval_clips`` clips per video).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import get_model

from dali_pipes import CrfSpec, PipelineRuntime
from dali_pipes.ladder import VIDEO_SUFFIXES, load_ladder
from dali_pipes.video import ClipSampling, VideoBatches, VideoGeometry
from tasks.pretrained import load_pretrained
from tasks.registry import register_task
from tasks.sample_index import SampleIndex

VIDEO_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s")
SMALLEST_INPUT = {"s3d": (16, 224), "mvit_v2_s": (16, 224)}  # (frames, crop): s3d at least, mvit exactly
SPLIT_LISTS = {"train": "trainlist", "val": "testlist"}


def _clip_id(relative: str) -> str:
    return Path(relative).with_suffix("").as_posix()


@register_task("action")
class ActionTask:
    """Video classification with a torchvision video model; owns its loss and clip / video metrics."""

    primary_metric = "top1"
    higher_is_better = True
    memory_format = None
    codecs = ("h264",)
    model_help = ", ".join(VIDEO_MODELS)

    def __init__(self, data: str | Path, ladder: str | Path | None = None, model: str = "r3d_18",
                 pretrained: str | None = None, num_classes: int | None = None, label_smoothing: float = 0.0,
                 splits: str | Path | None = None, split: int = 1, frames: int = 16, frame_stride: int = 2,
                 eval_clips: int = 3, crop_size: int = 112, resize_size: int = 128) -> None:
        self.root = Path(data)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset path {self.root} does not exist")
        if model not in VIDEO_MODELS:
            raise ValueError(f"model {model!r} is not a video model; choose one of {', '.join(VIDEO_MODELS)}")
        if model in SMALLEST_INPUT:
            need_frames, need_crop = SMALLEST_INPUT[model]
            exact = model == "mvit_v2_s"
            too_small = frames < need_frames or crop_size < need_crop
            if too_small or (exact and (frames, crop_size) != (need_frames, need_crop)):
                raise ValueError(f"model {model} takes {'' if exact else 'at least '}{need_frames} frames of "
                                 f"{need_crop}x{need_crop}: set --frames {need_frames} --crop_size {need_crop}")
        if ladder is None:
            raise ValueError(f"config key 'ladder': the action task reads clips from an H.264 CRF ladder; build "
                             f"it with `codecloop transcode --src {self.root} --dst LADDER` and pass --ladder LADDER")
        self.ladder = load_ladder(ladder)
        self.ladder.check_source(self.root)
        self.model_name, self.pretrained, self.label_smoothing = model, pretrained, label_smoothing
        self.splits = Path(splits) if splits else None
        self.split = split
        self.sampling = ClipSampling(frames, frame_stride)
        self.eval_clips = eval_clips
        self.geometry = VideoGeometry(crop_size, resize_size)
        self.classes = self._classes()
        self.num_classes = num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ValueError(f"num_classes {self.num_classes} is below the {len(self.classes)} classes")

    def _split_file(self, split: str) -> Path:
        path = self.splits / f"{SPLIT_LISTS[split]}{self.split:02d}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"split file {path} does not exist")
        return path

    def _listed(self, split: str) -> list[tuple[str, str]]:
        """``(clip id, class name)`` of every video in `split`."""
        if self.splits is not None:
            lines = [line.split()[0] for line in self._split_file(split).read_text().splitlines() if line.strip()]
            return [(_clip_id(entry), Path(entry).parts[0]) for entry in lines]
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist: lay videos out as {self.root}/{split}/<class>/<video>"
                                    f" or pass UCF101-style split files with --splits DIR")
        videos = sorted(path for path in folder.rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ValueError(f"dataset split {folder} holds no video file")
        return [(_clip_id(path.relative_to(self.root).as_posix()), path.relative_to(folder).parts[0])
                for path in videos]

    def _classes(self) -> list[str]:
        index_file = self.splits / "classInd.txt" if self.splits else None
        if index_file is not None and index_file.is_file():
            rows = [line.split() for line in index_file.read_text().splitlines() if line.strip()]
            return [name for _, name in sorted((int(number), name) for number, name in rows)]
        return sorted({name for _, name in self._listed("train")})

    def has_split(self, split: str) -> bool:
        """Whether `split` exists (its split file, or its folder)."""
        if self.splits is not None:
            return (self.splits / f"{SPLIT_LISTS[split]}{self.split:02d}.txt").is_file()
        return (self.root / split).is_dir()

    def sample_index(self, split: str) -> SampleIndex:
        """The split's clips that the ladder holds, with labels; clips whose transcode failed are skipped."""
        listed = self._listed(split)
        unknown = sorted({name for _, name in listed} - set(self.classes))
        if unknown:
            raise ValueError(f"split {split!r} has classes absent from the class list: {', '.join(unknown[:5])}")
        kept = [(clip, name) for clip, name in listed if clip in self.ladder.rungs]
        skipped = [(clip, self.ladder.failed[clip]) for clip, _ in listed if clip in self.ladder.failed]
        missing = [clip for clip, _ in listed if clip not in self.ladder.rungs and clip not in self.ladder.failed]
        if missing:
            raise ValueError(f"{len(missing)} video(s) of split {split!r} are not in the ladder {self.ladder.root} "
                             f"(first: {', '.join(missing[:3])}); build them with: "
                             f"{self.ladder.settings.get('command', 'codecloop transcode')}")
        if not kept:
            raise ValueError(f"split {split!r} has no video the ladder could transcode")
        labels = torch.tensor([self.classes.index(name) for _, name in kept], dtype=torch.long)
        return SampleIndex(split, [clip for clip, _ in kept], {"label": labels}, skipped)

    def batches(self, index: SampleIndex, *, training: bool, spec: CrfSpec, runtime: PipelineRuntime,
                checkpoint: bytes | str | None = None, with_clean: bool = False) -> VideoBatches:
        """Epochs of clips of `index` drawn from the ladder at the spec's CRFs."""
        if with_clean:
            raise ValueError("the action task has no clean-view pairing")
        sampling = dataclasses.replace(self.sampling, clips_per_video=1 if training else self.eval_clips)
        return VideoBatches(self.ladder, index.files, training=training, spec=spec, sampling=sampling,
                            geometry=self.geometry, targets=index.targets, checkpoint=checkpoint,
                            **dataclasses.asdict(runtime))

    def create_model(self) -> torch.nn.Module:
        """The torchvision video model by name, with local weights from `pretrained` when given."""
        model = get_model(self.model_name, weights=None, num_classes=self.num_classes)
        if self.pretrained:
            load_pretrained(model, self.pretrained)
        return model

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, classes)``, or ``(B, K, classes)`` for K clips per video."""
        video = batch["video"]
        if video.ndim == 6:
            return model(video.flatten(0, 1)).unflatten(0, video.shape[:2])
        return model(video)

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Cross-entropy (mean over the batch) and logits."""
        logits = self.predict(model, batch)
        loss = F.cross_entropy(logits, batch["label"], label_smoothing=self.label_smoothing)
        return {"loss": loss, "outputs": logits}

    def sample_metrics(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-video values: video-level top-1 / top-5 / loss, and the share of its clips right."""
        logits = logits.float()
        if logits.ndim == 2:
            logits = logits[:, None]
        label = batch["label"]
        k = min(5, logits.shape[-1])
        clip_top = logits.topk(k, dim=-1).indices
        video_probs = logits.softmax(dim=-1).mean(dim=1)
        video_top = video_probs.topk(k, dim=-1).indices
        return {
            "top1": (video_top[:, 0] == label).float(),
            "top5": (video_top == label[:, None]).any(dim=1).float(),
            "clip_top1": (clip_top[..., 0] == label[:, None]).float().mean(dim=1),
            "clip_top5": (clip_top == label[:, None, None]).any(dim=-1).float().mean(dim=1),
            "loss": F.nll_loss(video_probs.clamp_min(1e-12).log(), label, reduction="none"),
        }
