"""Action recognition on an H.264 CRF ladder: UCF101 / HMDB51 in their native layouts, torchvision video models.

Layouts (``--format``; detected from the files in ``--splits``, HMDB51's first where both kinds lie
together as mmaction2 leaves them, or from ``DATA/train`` when no ``--splits`` is given):

- ``folders``: ``DATA/train/<class>/<video>`` and ``DATA/val/<class>/<video>``; classes are the
  sorted train folder names.
- ``ucf101``: ``DATA/<class>/<video>.avi`` as UCF101 ships it, split by ``--splits DIR`` (the
  unpacked ``ucfTrainTestlist``) holding ``trainlist0N.txt`` (lines ``Class/video.avi 1``),
  ``testlist0N.txt`` (lines ``Class/video.avi``) and optionally ``classInd.txt`` (lines
  ``1 Class``, the class order; else the sorted train classes).
- ``hmdb51``: ``DATA/<class>/<video>.avi`` as the unpacked HMDB51 rars lay it out, split by
  ``--splits DIR`` (the unpacked ``testTrainMulti_7030_splits``) holding ``<class>_test_splitN.txt``
  with lines ``<video>.avi <id>``: 1 = train, 2 = test (our val), 0 = unused in split N. Classes
  are the sorted names of those files.

``--split N`` picks the official split (1..3). The clips are read from the ladder built from DATA
(``codecloop transcode --src DATA --dst LADDER``), never from DATA itself. A split file naming a
video that neither DATA nor the ladder holds stops with `MissingFilesError` (the count, the first
few, and, when there are more, ``codecloop check-data``, which lists all); one that DATA holds but the
ladder lacks stops
with the transcode command that adds it; one whose transcode failed is skipped and counted.
Metrics: clip-level top-1 / top-5 and video-level top-1 / top-5 (softmax averaged over
``eval_clips`` clips per video).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.models import get_model

from codecloop.dali_pipes import Codec, LevelSpec, PipelineRuntime
from codecloop.dali_pipes.ladder import VIDEO_SUFFIXES, load_ladder
from codecloop.dali_pipes.rates import RateSource
from codecloop.dali_pipes.video import ClipSampling, VideoBatches, VideoGeometry
from codecloop.tasks.base import Task
from codecloop.tasks.layout_errors import MissingFilesError, choose_format
from codecloop.tasks.weights import load_pretrained
from codecloop.tasks.registry import register_task
from codecloop.tasks.sample_index import SampleIndex

VIDEO_MODELS = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d", "mvit_v2_s")
SMALLEST_INPUT = {"s3d": (16, 224), "mvit_v2_s": (16, 224)}  # (frames, crop): s3d at least, mvit exactly
UCF_LISTS = {"train": "trainlist", "val": "testlist"}
HMDB_IDS = {"train": 1, "val": 2}  # id 0: not used in that split
HMDB_SUFFIX = "_test_split{}.txt"
SPLIT_FILES = {"ucf101": "UCF101 split files (trainlist0N.txt, testlist0N.txt; the unpacked ucfTrainTestlist)",
               "hmdb51": "HMDB51 split files (<class>_test_splitN.txt; the unpacked testTrainMulti_7030_splits)"}


@dataclasses.dataclass(frozen=True)
class Listed:
    """One video a split names: its ladder clip id, class, path under DATA, and the file (or folder) naming it."""

    clip: str
    label: str
    video: str
    source: Path


def _clip_id(relative: str) -> str:
    return Path(relative).with_suffix("").as_posix()


def read_hmdb_split_file(path: Path, wanted: int) -> list[str]:
    """Video names in a HMDB51 ``<class>_test_splitN.txt`` whose id is `wanted` (1 train, 2 test, 0 unused).

    Lines are ``<video>.avi <id>``; any whitespace (trailing blanks, CRLF) is accepted.
    """
    names = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.strip().rsplit(maxsplit=1)
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path} line {number}: expected '<video>.avi <id>' with id 0 (unused), 1 (train) or "
                             f"2 (test), got {line.strip()!r}")
        if int(fields[1]) == wanted:
            names.append(fields[0])
    return names


def layout_detectors(splits: Path | None) -> dict[str, Callable[[Path], bool]]:
    """How each layout is recognised: split files of its kind in `splits`, or ``DATA/train`` when there are none."""
    def holds(*patterns: str) -> bool:
        return splits is not None and splits.is_dir() and any(any(splits.glob(p)) for p in patterns)

    # HMDB51's own files first: mmaction2 writes UCF101-style lists beside them in the same folder
    return {"folders": lambda root: splits is None and (root / "train").is_dir(),
            "hmdb51": lambda root: holds("*_test_split*.txt"),
            "ucf101": lambda root: holds("trainlist*.txt", "testlist*.txt")}


@register_task("action")
class ActionTask(Task):
    """Video classification with a torchvision video model; owns its loss and clip / video metrics."""

    primary_metric = "top1"
    higher_is_better = True
    memory_format = None
    media = "clips"  # what the codec compresses: single images, or clips from a ladder
    model_help = ", ".join(VIDEO_MODELS)
    default_model = "r3d_18"
    config_keys = ("data", "ladder", "model", "pretrained", "num_classes", "label_smoothing", "splits", "split",
                   "frames", "frame_stride", "eval_clips", "crop_size", "resize_size", "format")

    def __init__(self, data: str | Path, ladder: str | Path | None = None, model: str = default_model,
                 pretrained: str | None = None, num_classes: int | None = None, label_smoothing: float = 0.0,
                 splits: str | Path | None = None, split: int = 1, frames: int = 16, frame_stride: int = 2,
                 eval_clips: int = 3, crop_size: int = 112, resize_size: int = 128, format: str | None = None) -> None:
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
        self.splits = Path(splits) if splits else None
        self.split = split
        self.format = self._layout(format)
        if ladder is None:
            raise ValueError(f"config key 'ladder': the action task reads clips from an H.264 CRF ladder; build "
                             f"it with `codecloop transcode --src {self.root} --dst LADDER` and pass --ladder LADDER")
        self.ladder = load_ladder(ladder)
        self.ladder.check_source(self.root)
        self.model_name, self.pretrained, self.label_smoothing = model, pretrained, label_smoothing
        self.sampling = ClipSampling(frames, frame_stride)
        self.eval_clips = eval_clips
        self.geometry = VideoGeometry(crop_size, resize_size)
        self.classes = self._classes()
        self.num_classes = num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise ValueError(f"num_classes {self.num_classes} is below the {len(self.classes)} classes")

    def _layout(self, requested: str | None) -> str:
        """The layout named by `requested` or detected, after checking that its split files are there."""
        if self.splits is not None and not self.splits.is_dir():
            raise FileNotFoundError(f"config key 'splits': {self.splits} is not a folder")
        detectors = layout_detectors(self.splits)
        if requested is None and not any(detect(self.root) for detect in detectors.values()):
            if self.splits is not None:
                raise ValueError(f"config key 'splits': {self.splits} holds neither {SPLIT_FILES['ucf101']} nor "
                                 f"{SPLIT_FILES['hmdb51']}")
            raise ValueError(f"{self.root / 'train'} does not exist: lay videos out as {self.root}/train/<class>/"
                             f"<video> and {self.root}/val/<class>/<video>, or pass the {SPLIT_FILES['ucf101']} or "
                             f"{SPLIT_FILES['hmdb51']} with --splits DIR")
        layout = choose_format("action", self.root, requested, detectors)
        if layout == "folders":
            if self.splits is not None:
                raise ValueError(f"config key 'splits': --format folders reads {self.root}/train and {self.root}/val;"
                                 f" split files go with --format ucf101 or hmdb51")
            return layout
        if self.splits is None:
            raise ValueError(f"config key 'splits': --format {layout} needs its {SPLIT_FILES[layout]}: --splits DIR")
        if not detectors[layout](self.root):
            others = [name for name, detect in detectors.items() if detect(self.root)]
            found = (f"holds {SPLIT_FILES[others[0]]}: use --format {others[0]}, or leave --format out to detect it"
                     if others else "holds none")
            raise ValueError(f"config key 'format': --format {layout} expects {SPLIT_FILES[layout]} in --splits "
                             f"{self.splits}, which {found}")
        if not self._split_files(layout):
            raise ValueError(f"config key 'split': {self.splits} holds no {SPLIT_FILES[layout]} for split "
                             f"{self.split}; UCF101 and HMDB51 ship splits 1, 2 and 3")
        return layout

    def _split_files(self, layout: str) -> dict[str, Path]:
        """The split files of split N: ``{train, val}`` lists (UCF101, those present) or ``{class: file}`` (HMDB51)."""
        if layout == "hmdb51":
            suffix = HMDB_SUFFIX.format(self.split)
            return {path.name[:-len(suffix)]: path for path in sorted(self.splits.glob(f"*{suffix}"))}
        named = {split: self.splits / f"{stem}{self.split:02d}.txt" for split, stem in UCF_LISTS.items()}
        return {split: path for split, path in named.items() if path.is_file()}

    def _listed(self, split: str) -> list[Listed]:
        """Every video that `split` names, in the order its file (or folder) lists them."""
        if self.format == "hmdb51":
            return [Listed(_clip_id(f"{label}/{name}"), label, f"{label}/{name}", path)
                    for label, path in self._split_files("hmdb51").items()
                    for name in read_hmdb_split_file(path, HMDB_IDS[split])]
        if self.format == "ucf101":
            path = self.splits / f"{UCF_LISTS[split]}{self.split:02d}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"split file {path} does not exist")
            entries = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
            return [Listed(_clip_id(entry), Path(entry).parts[0], entry, path) for entry in entries]
        folder = self.root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} does not exist: lay videos out as {self.root}/{split}/<class>/<video>"
                                    f" or pass UCF101 / HMDB51 split files with --splits DIR")
        videos = sorted(path for path in folder.rglob("*") if path.suffix.lower() in VIDEO_SUFFIXES)
        if not videos:
            raise ValueError(f"dataset split {folder} holds no video file")
        return [Listed(_clip_id(path.relative_to(self.root).as_posix()), path.relative_to(folder).parts[0],
                       path.relative_to(self.root).as_posix(), folder) for path in videos]

    def _classes(self) -> list[str]:
        """Class names in label order: HMDB51 split file names, UCF101's classInd.txt, else train classes; sorted."""
        if self.format == "hmdb51":
            return sorted(self._split_files("hmdb51"))
        index_file = self.splits / "classInd.txt" if self.format == "ucf101" else None
        if index_file is not None and index_file.is_file():
            rows = [line.split() for line in index_file.read_text().splitlines() if line.strip()]
            return [name for _, name in sorted((int(number), name) for number, name in rows)]
        return sorted({item.label for item in self._listed("train")})

    def has_split(self, split: str) -> bool:
        """Whether `split` exists (its split file, or its folder)."""
        if self.format == "hmdb51":
            return True
        if self.format == "ucf101":
            return split in self._split_files("ucf101")
        return (self.root / split).is_dir()

    def _missing(self, waiting: list[Listed]) -> MissingFilesError:
        """The error for listed videos the ladder holds no rung of: absent from DATA, or only from the ladder."""
        absent = [item for item in waiting if not (self.root / item.video).is_file()]
        chosen = absent or waiting
        sources = sorted({str(item.source) for item in chosen})
        source = sources[0] if len(sources) == 1 else f"{self.splits}/*{HMDB_SUFFIX.format(self.split)}"
        if absent:
            return MissingFilesError(source, [str(self.root / item.video) for item in absent], "video",
                                     f"They are neither under --data {self.root} nor in the ladder: copy or unpack "
                                     f"them there and transcode them, or check that --data is the folder holding "
                                     f"<class>/<video> and --splits the dataset's split files")
        rebuild = self.ladder.settings.get("command", f"codecloop transcode --src {self.root} --dst {self.ladder.root}")
        return MissingFilesError(source, [item.clip for item in waiting], "ladder clip",
                                 f"The videos are in {self.root} but not in the ladder {self.ladder.root}: add them "
                                 f"with `{rebuild}` (finished rungs are kept)")

    def sample_index(self, split: str) -> SampleIndex:
        """The split's clips that the ladder holds, with labels; clips whose transcode failed are skipped and
        counted; listed videos the ladder lacks stop with `MissingFilesError` (absent from DATA, or only from
        the ladder)."""
        listed = self._listed(split)
        if not listed:
            raise ValueError(f"split {split!r} names no video in {self.splits} (split {self.split})")
        unknown = sorted({item.label for item in listed} - set(self.classes))
        if unknown:
            raise ValueError(f"split {split!r} has classes absent from the class list: {', '.join(unknown[:5])}")
        ladder = self.ladder
        waiting = [item for item in listed if item.clip not in ladder.rungs and item.clip not in ladder.failed]
        if waiting:
            raise self._missing(waiting)
        kept = [item for item in listed if item.clip in ladder.rungs]
        skipped = [(item.clip, ladder.failed[item.clip]) for item in listed if item.clip in ladder.failed]
        if not kept:
            raise ValueError(f"split {split!r} has no video the ladder could transcode")
        number = {name: label for label, name in enumerate(self.classes)}
        labels = torch.tensor([number[item.label] for item in kept], dtype=torch.long)
        return SampleIndex(split, [item.clip for item in kept], {"label": labels}, skipped)

    def batches(self, index: SampleIndex, *, training: bool, spec: LevelSpec, codec: Codec, runtime: PipelineRuntime,
                checkpoint: bytes | str | None = None) -> VideoBatches:
        """Epochs of clips of `index` drawn from the ladder at the spec's levels (rungs)."""
        sampling = dataclasses.replace(self.sampling, clips_per_video=1 if training else self.eval_clips)
        return VideoBatches(self.ladder, index.files, training=training, spec=spec, codec=codec, sampling=sampling,
                            geometry=self.geometry, targets=index.targets, checkpoint=checkpoint,
                            runtime=runtime)

    def rate_source(self, index: SampleIndex) -> RateSource:
        """The ladder's rungs of the split's clips."""
        return RateSource(ladder=self.ladder, clips=tuple(index.files))

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
