"""Run configuration: one flat set of keys shared by YAML files and ``--key=value`` flags.

Hyper-parameters (what is trained) and runtime settings (how and where it runs) live in
separate groups; a key belongs to exactly one. Unknown keys and bad values stop the run
before any work, with a message naming the key.

Each task declares its own config section (`Task.config_keys`); a key in some task's section is
a task key, the rest (optimization, codec, protocol, runtime) are generic. A task key set for a
run whose task does not take it stops the run, naming the key and the task (`check_task_keys`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from codecloop.dali_pipes.codecs import Codec, codec_names, get_codec
from codecloop.dali_pipes.levels import LevelSpec


def _defaults(attribute: str) -> str:
    """Each built-in codec's value of `attribute`, for help texts (``jpeg 5-95; h264 18-51``)."""
    values = {name: getattr(get_codec(name), attribute) for name in codec_names()}
    return "; ".join(f"{name} {value if isinstance(value, str) else ','.join(map(str, value))}"
                     for name, value in values.items())


def _key(default: Any, help: str, group: str, choices: tuple[str, ...] | None = None, *,
         at_least: float | None = None, above: float | None = None, at_most: float | None = None) -> Any:
    """A config field: its help, group, allowed choices and numeric range (checked by `Config.validate`)."""
    return field(default=default, metadata={"help": help, "group": group, "choices": choices,
                                            "range": (at_least, above, at_most)})


def range_text(item: dataclasses.Field) -> str:
    """A key's declared numeric range as text ('>= 1', '> 0', '0..1'; '' if it has none)."""
    at_least, above, at_most = item.metadata["range"]
    if at_least is not None and at_most is not None:
        return f"{at_least:g}..{at_most:g}"
    parts = [f"{sign} {bound:g}" for sign, bound in ((">=", at_least), (">", above), ("<=", at_most))
             if bound is not None]
    return ", ".join(parts)


def out_of_range(value: float, item: dataclasses.Field) -> bool:
    """Whether `value` breaks `item`'s declared range."""
    at_least, above, at_most = item.metadata["range"]
    return ((at_least is not None and value < at_least) or (above is not None and value <= above)
            or (at_most is not None and value > at_most))


@dataclass
class Config:
    """Every key a run accepts. See `codecloop train --help` for the same list with help."""

    # --- data and model (hyper-parameters) ---
    task: str = _key("classification", "task: classification, action, detection, segmentation, pose or depth",
                     "hyper")
    data: str | None = _key(None, "dataset root (ImageFolder: ROOT/train/<class>/, ROOT/val/<class>/)", "hyper")
    model: str | None = _key(None, "model name; `codecloop train --task T --help` lists each task's (default: the "
                             "task's own: resnet50, r3d_18, fasterrcnn_mobilenet_v3_large_fpn, unet_resnet18, "
                             "simplebaseline_resnet18, unet_resnet18)", "hyper")
    pretrained: str | None = _key(None, "local weights file to start from (no hub download)", "hyper")
    num_classes: int | None = _key(None, "classifier width; default: number of class folders", "hyper", at_least=1)
    codec: str = _key("jpeg", f"codec in the loop: {', '.join(codec_names())} (its level: JPEG quality 1..100, "
                      "H.264 / HEVC CRF 0..51, AV1 CRF 0..63); on a ladder a list such as h264,hevc,av1 draws one "
                      "per clip or frame", "hyper")
    level: str = _key("none", "training codec level spec on the codec's scale: none | 30 | 5-95 | 5,10,15 (on a "
                      "ladder, snapped to its rungs)", "hyper")
    clean_prob: float = _key(0.0, "fraction of training samples left uncompressed", "hyper", at_least=0, at_most=1)
    eval_level: str = _key("none", "codec level spec for evaluation during training", "hyper")
    ladder: str | None = _key(None, "CRF ladder folder (`codecloop transcode` output) of a video dataset", "hyper")
    format: str | None = _key(None, "dataset layout (default: detected from the folder). segmentation: folder, "
                              "cityscapes, voc, ade20k; depth: folder, kitti, nyu; action: folders, ucf101, hmdb51; "
                              "detection / pose: coco; classification: imagefolder", "hyper")
    splits: str | None = _key(None, "folder of split files: UCF101 (trainlist0N.txt, testlist0N.txt), HMDB51 "
                              "(<class>_test_splitN.txt), KITTI Eigen (train_files.txt, val_files.txt / "
                              "test_files.txt)", "hyper")
    split: int = _key(1, "video: which split N of --splits", "hyper", at_least=1)
    frames: int = _key(16, "video: frames per clip", "hyper", at_least=1)
    frame_stride: int = _key(2, "video: source frames between two clip frames", "hyper", at_least=1)
    eval_clips: int = _key(3, "video: clips per video at evaluation (video-level metrics average them)", "hyper",
                           at_least=1)
    codec_placement: str = _key(
        "native", "where the codec runs: native resolution, or after_resize (cheaper)", "hyper",
        ("native", "after_resize"),
    )
    crop_size: int = _key(224, "network input size", "hyper", at_least=1)
    input_size: str | None = _key(None, "detection / segmentation / pose / depth: network input as S or HxW "
                                  "(default: crop_size square)", "hyper")
    min_scale: float | None = _key(None, "train: random-resized crop's smallest area, as a fraction of the image "
                                   "(pose: of the person box); default: the task's own (classification 0.08; "
                                   "detection, segmentation, pose, depth 0.35)", "hyper", above=0, at_most=1)
    min_depth: float = _key(1e-3, "depth: smallest valid depth in metres", "hyper", above=0)
    max_depth: float | None = _key(None, "depth: largest valid depth in metres, prediction clamped to it (default from "
                                   "the layout: folder and kitti 80, nyu 10)", "hyper", above=0)
    eigen_crop: bool = _key(False, "depth: evaluate inside the Garg/Eigen KITTI crop only", "hyper")
    depth_scale: float | None = _key(None, "depth: 16-bit PNG value per metre (default from the layout: kitti and "
                                     "folder 256, nyu 1000)", "hyper", above=0)
    raw: str | None = _key(None, "depth, kitti: the KITTI raw data folder (<date>/<drive>_sync/image_02/data/)",
                           "hyper")
    mask_folder: str | None = _key(None, "segmentation: the label folder where a layout has several (voc: "
                                   "SegmentationClass | SegmentationClassAug; cityscapes: gtFine | gtCoarse)",
                                   "hyper")
    reduce_zero_label: bool | None = _key(None, "segmentation: label 0 is ignore and the other ids shift down by "
                                          "one (default: true for ade20k, false otherwise)", "hyper")
    resize_size: int = _key(256, "eval: shorter side before the center crop", "hyper", at_least=1)
    normalize: str = _key("imagenet", "input normalization: imagenet mean/std or inception (0.5/0.5)", "hyper",
                          ("imagenet", "inception"))
    # --- optimization (hyper-parameters) ---
    epochs: int = _key(1, "training epochs", "hyper", at_least=0)
    max_steps: int | None = _key(None, "stop after this many optimizer steps", "hyper", at_least=1)
    batch_size: int = _key(64, "samples per process per micro-batch", "hyper", at_least=1)
    eval_batch_size: int | None = _key(None, "evaluation batch size; default: batch_size", "hyper", at_least=1)
    grad_accum: int = _key(1, "micro-batches per optimizer step", "hyper", at_least=1)
    optimizer: str = _key("adamw", "optimizer", "hyper", ("adamw", "sgd"))
    lr: float = _key(1e-3, "peak learning rate", "hyper", above=0)
    weight_decay: float = _key(0.05, "weight decay", "hyper", at_least=0)
    momentum: float = _key(0.9, "SGD momentum", "hyper", at_least=0, at_most=1)
    warmup_steps: int = _key(0, "linear warm-up steps before the cosine decay", "hyper", at_least=0)
    label_smoothing: float = _key(0.0, "cross-entropy label smoothing", "hyper", at_least=0, at_most=1)
    freeze_bn: bool = _key(False, "keep BatchNorm statistics fixed while training (fine-tuning)", "hyper")
    train_layers: str | None = _key(None, "comma-separated parameter-name prefixes to train, the rest frozen "
                                    "(e.g. conv_stem,bn1,blocks.0); default: all", "hyper")
    seed: int = _key(0, "random seed (per rank and epoch streams derive from it)", "hyper", at_least=0)
    # --- protocol (hyper-parameters) ---
    levels: str | None = _key(None, "sweep: codec levels to evaluate, clean always added (default: the codec's, "
                              f"{_defaults('default_levels')})", "hyper")
    retrain_level: str | None = _key(None, "experiment: level spec for fine-tuning on compressed data (default: the "
                                     f"codec's, {_defaults('retrain_spec')})", "hyper")
    retrain_bpp: str | None = _key(None, "experiment: fine-tune at the levels whose mean bits per pixel on the val "
                                   "set lie in LOW-HIGH (e.g. 0.1-1.0), found through the codec's rate table; "
                                   "instead of retrain_level", "hyper")
    codecs: str | None = _key(None, "sweep / experiment: codecs to sweep, comma-separated (e.g. jpeg,webp,avif); "
                              "each at --levels, else at its own default levels (default: the codec)", "hyper")
    rate_images: int = _key(256, "sweep: val images whose encoded size gives each level's bits per pixel, evenly "
                            "spaced (0: all; clips: every clip's rung)", "hyper", at_least=0)
    bootstrap: int = _key(1000, "sweep: paired bootstrap resamples over the evaluation images (videos) behind each "
                          "metric's 95-percent interval and recovery's (COCO AP: at most 200; 0: no intervals)", "hyper",
                          at_least=0)
    at_bpp: str | None = _key(None, "report: bits per pixel at which each codec's metric is interpolated, "
                              "comma-separated (default with several codecs: 0.1,0.25,0.5,1,2)", "runtime")
    retrain_clean_prob: float = _key(0.1, "experiment: clean share while fine-tuning", "hyper", at_least=0, at_most=1)
    retrain_epochs: int | None = _key(None, "experiment: fine-tuning epochs; default: epochs", "hyper", at_least=0)
    retrain_max_steps: int | None = _key(None, "experiment: fine-tuning step cap; default: max_steps", "hyper",
                                         at_least=1)
    retrain_lr: float | None = _key(None, "experiment: fine-tuning learning rate; default: lr / 10", "hyper", above=0)
    retrain_loss: str = _key("task", "experiment: what fine-tuning minimises: the task's own loss on its labels "
                             "(task), or the error between the output of --retrain_layer on the compressed view and the "
                             "original network's on the clean view (features: no labels used, only that layer and "
                             "the ones before it train; classification)", "hyper", ("task", "features"))
    retrain_layer: str | None = _key(None, "experiment, --retrain_loss features: the module whose output is restored, "
                                     "by dotted name (e.g. blocks.2 of a timm EfficientNet, layer2 of a ResNet)",
                                     "hyper")
    retrain_mix: float | None = _key(None, "experiment: keep original + retrain_mix x (fine-tuned - original) as the "
                                     "retrained weights (WiSE-FT weight interpolation; default 1: the fine-tuned ones)",
                                     "hyper", at_least=0, at_most=1)
    retrain_mix_split: str | None = _key(None, "experiment: choose retrain_mix on this split of the dataset (not val, "
                                         "not train, e.g. a folder calib): the largest of 1, 0.9, ..., 0.1 whose "
                                         "clean-input metric there is at least the original network's, else 0",
                                         "hyper")
    # --- runtime settings ---
    out: str | None = _key(None, "run directory; default: runs/<command>-<time>", "runtime")
    checkpoint: str | None = _key(None, "model checkpoint (run or checkpoint dir, or weights file) to evaluate / "
                                  "start from", "runtime")
    resume: bool = _key(False, "continue from the last checkpoint in the run directory", "runtime")
    checkpoint_every: int = _key(500, "save a checkpoint every N optimizer steps (0: only at the end)", "runtime",
                                 at_least=0)
    keep_checkpoints: int = _key(2, "how many step checkpoints to keep", "runtime", at_least=1)
    log_every: int = _key(10, "log training metrics every N optimizer steps", "runtime", at_least=1)
    eval_every: int = _key(1, "evaluate on val every N epochs (0: only at the end of training)", "runtime", at_least=0)
    precision: str = _key("auto", "auto = bf16 autocast on GPU, fp32 on CPU", "runtime", ("auto", "bf16", "fp32"))
    num_threads: int | None = _key(None, "DALI CPU threads per process; default: cores / local processes", "runtime",
                                   at_least=1)
    prefetch: int = _key(2, "DALI prefetch queue depth", "runtime", at_least=1)
    channels_last: bool = _key(True, "channels-last memory format for the model and image batches (faster "
                               "convolutions on GPU and CPU)", "runtime")
    one_pass_sweep: bool = _key(True, "sweep JPEG levels in one pass: each image decoded once, every level's codec "
                                "stage in the same pipeline (false: one full pass per level)", "runtime")
    skip_nonfinite: bool = _key(False, "skip optimizer steps whose loss is NaN or inf (counted; one host sync per "
                                "step) instead of stopping at the next log line or checkpoint with the last good "
                                "checkpoint named", "runtime")
    strict: bool = _key(False, "stop on the first unreadable image instead of skipping it", "runtime")
    keep_damaged: bool = _key(False, "train on JPEGs whose compressed data is damaged (libjpeg decodes them with a "
                              "warning, into partly garbage pixels); default: skip and count them", "runtime")
    max_image_pixels: int = _key(178_956_970, "an image with more pixels than this is a bad file (skipped and "
                                 "counted, or stops a --strict run): a decompression-bomb guard (default: "
                                 "Pillow's own error limit)", "runtime", at_least=1)
    wandb: str = _key("online", "W&B mode (online falls back to offline without an API key)", "runtime",
                      ("online", "offline", "disabled"))
    wandb_project: str = _key("codecloop", "W&B project", "runtime")
    progress: bool = _key(True, "show a progress bar on rank 0", "runtime")

    def validate(self) -> "Config":
        """Check every value; raise ValueError naming the key."""
        for codec in check_codec_list(self):
            problem = codec.missing() if codec.missing else None
            if problem:
                raise ValueError(f"config key 'codec': codec {codec.name!r} cannot run: {problem}")
            for spec_key in ("level", "eval_level", "retrain_level"):
                try:
                    codec.parse_spec(getattr(self, spec_key))
                except ValueError as error:
                    raise ValueError(f"config key {spec_key!r}: {error}") from error
        for name in sweep_codec_names(self):
            try:
                swept = get_codec(name)
            except ValueError as error:
                raise ValueError(f"config key 'codecs': {error}") from error
            problem = swept.missing() if swept.missing else None
            if problem:
                raise ValueError(f"config key 'codecs': codec {name!r} cannot run: {problem}")
            try:
                sweep_levels(self.replace(codec=name))
            except ValueError as error:
                raise ValueError(f"config key 'levels': {error}") from error
        if self.at_bpp is not None:
            bpp_list(self.at_bpp, "at_bpp")
        if self.retrain_bpp is not None:
            bpp_range(self.retrain_bpp)
            if self.retrain_level is not None:
                raise ValueError("config keys 'retrain_bpp' and 'retrain_level' both say what fine-tuning draws: "
                                 "give one")
            if len(config_codecs(self)) > 1:
                raise ValueError(f"config key 'retrain_bpp': a rate range maps to one codec's levels, and codec "
                                 f"{self.codec!r} mixes several: give --retrain_level (read on each codec's scale)")
        if self.retrain_loss == "features" and not self.retrain_layer:
            raise ValueError("config key 'retrain_layer': --retrain_loss features restores one module's output: "
                             "name it (e.g. blocks.2)")
        if self.retrain_layer and self.retrain_loss != "features":
            raise ValueError("config key 'retrain_layer': only --retrain_loss features restores a layer's output "
                             f"(retrain_loss is {self.retrain_loss!r})")
        if self.retrain_mix is not None and self.retrain_mix_split is not None:
            raise ValueError("config keys 'retrain_mix' and 'retrain_mix_split' both set the weight mix: give one")
        if self.retrain_mix_split in ("train", "val"):
            raise ValueError(f"config key 'retrain_mix_split': the mix is chosen on a split that is neither trained on "
                             f"nor reported (the sweep's), not {self.retrain_mix_split!r}")
        for item in dataclasses.fields(self):
            choices = item.metadata.get("choices")
            if choices and getattr(self, item.name) not in choices:
                raise ValueError(f"config key {item.name!r}: {getattr(self, item.name)!r} is not one of {choices}")
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and out_of_range(value, item):
                raise ValueError(f"config key {item.name!r}: {value} is outside its range ({range_text(item)})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, for YAML and W&B."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


def config_codec(config: Config) -> Codec:
    """The registered codec ``codec`` names (the first, when it lists several for a ladder)."""
    return config_codecs(config)[0]


def config_codecs(config: Config) -> list[Codec]:
    """The registered codecs ``codec`` lists (``h264,hevc,av1``; usually one), in order, duplicates dropped."""
    names = [name.strip() for name in str(config.codec).split(",") if name.strip()]
    try:
        return [get_codec(name) for name in dict.fromkeys(names)] or [get_codec(str(config.codec))]
    except ValueError as error:
        raise ValueError(f"config key 'codec': {error}") from error


def check_codec_list(config: Config) -> list[Codec]:
    """`config_codecs`, refusing a list of several without a ladder: only ladder clips and frames draw a codec
    per sample; online image codecs take one (ValueError naming the key)."""
    codecs = config_codecs(config)
    if len(codecs) > 1 and not config.ladder:
        raise ValueError(f"config key 'codec': {config.codec!r} lists {len(codecs)} codecs, which only a ladder "
                         "(--ladder, clips or frames transcoded with `codecloop transcode --codecs ...`) can mix; "
                         "online image codecs take one codec")
    return codecs


def batch_codecs(config: Config) -> Codec | list[Codec]:
    """What a task's `batches` takes as ``codec``: the one codec, or the list a ladder draws from."""
    codecs = config_codecs(config)
    return codecs[0] if len(codecs) == 1 else codecs


def training_spec(config: Config) -> LevelSpec:
    """The spec training draws from: ``level`` with ``clean_prob``."""
    return config_codec(config).parse_spec(config.level, config.clean_prob)


def eval_spec(config: Config) -> LevelSpec:
    """The spec evaluation during training uses: ``eval_level``."""
    return config_codec(config).parse_spec(config.eval_level)


def level_spec(config: Config, level: int | None) -> LevelSpec:
    """The spec of one sweep level (None: clean)."""
    return config_codec(config).parse_spec("none" if level is None else str(level))


def sweep_levels(config: Config) -> list[int]:
    """The sweep's levels: ``levels``, or the codec's default list."""
    codec = config_codec(config)
    return codec.parse_levels(config.levels or list(codec.default_levels))


def sweep_codec_names(config: Config) -> list[str]:
    """The codecs a sweep evaluates: ``codecs``, else ``codec``."""
    names = [name.strip() for name in (config.codecs or config.codec).split(",") if name.strip()]
    if not names:
        raise ValueError(f"config key 'codecs': {config.codecs!r} names no codec")
    return list(dict.fromkeys(names))


def _positive(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"config key {key!r}: {text.strip()!r} is not a number of bits per pixel") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"config key {key!r}: bits per pixel must be positive and finite, not {text.strip()!r}")
    return value


def bpp_list(text: str, key: str = "at_bpp") -> list[float]:
    """A comma-separated list of bits-per-pixel values (``0.1,0.25,1``), sorted; errors name `key`."""
    values = [_positive(part, key) for part in str(text).split(",") if part.strip()]
    if not values:
        raise ValueError(f"config key {key!r}: {text!r} lists no bits per pixel")
    return sorted(set(values))


def bpp_range(text: str) -> tuple[float, float]:
    """``retrain_bpp`` as ``(low, high)``: ``LOW-HIGH`` with 0 < LOW <= HIGH."""
    parts = str(text).split("-")
    if len(parts) != 2:
        raise ValueError(f"config key 'retrain_bpp': {text!r} is not a range LOW-HIGH of bits per pixel (0.1-1.0)")
    low, high = (_positive(part, "retrain_bpp") for part in parts)
    if low > high:
        raise ValueError(f"config key 'retrain_bpp': {text!r} runs backwards ({low:g} > {high:g})")
    return low, high


def retrain_spec_text(config: Config) -> str:
    """The experiment's fine-tuning spec: ``retrain_level``, or the codec's default."""
    return config.retrain_level or config_codec(config).retrain_spec


def retrain_changes(config: Config, level: str | None = None) -> dict[str, Any]:
    """The keys the experiment's fine-tuning stage changes: the compressed spec (`level`, else
    `retrain_spec_text`) and its clean share."""
    return {"level": level or retrain_spec_text(config), "clean_prob": config.retrain_clean_prob}


def config_keys() -> dict[str, dataclasses.Field]:
    """Field objects by key name."""
    return {item.name: item for item in dataclasses.fields(Config)}


def coerce(key: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the type `key` takes, or raise naming the key."""
    item = config_keys()[key]
    kind = str(item.type)
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and "None" in kind):
        return None
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            text = str(value).lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"{value!r} is not a boolean")
            return text in ("true", "1", "yes")
        if (kind.startswith("int") or kind.startswith("float")) and isinstance(value, bool):
            raise ValueError(f"{value!r} is a boolean, not a number")
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"{value!r} is not an integer")
            return int(value)
        if kind.startswith("float"):
            return float(value)
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config key {key!r}: {error}") from error


def read_yaml_mapping(path: str | Path, kind: str, expected: str) -> dict[str, Any]:
    """The mapping a YAML file of `kind` (config, grid, sweep) holds; an empty file is ``{}``.
    A missing file, invalid YAML or another type is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{kind} file {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"{kind} file {path}: expected {expected}")
    return values


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML config; unknown keys are an error naming the key and the file."""
    values = read_yaml_mapping(path, "config", "a mapping of keys to values")
    known = config_keys()
    for key in values:
        if key not in known:
            raise ValueError(f"config file {path}: unknown key {key!r}")
    return {key: coerce(key, value) for key, value in values.items()}


def save_yaml(config: Config, path: str | Path) -> None:
    """Write the resolved config atomically: every generic key and the task's own section, so that the
    file given back as ``--config`` (say, with ``--resume``) sets no key of another task."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    values = config.to_dict()
    temporary.write_text(yaml.safe_dump({key: values[key] for key in run_keys(config.task)}, sort_keys=False))
    temporary.replace(path)


def task_sections() -> dict[str, tuple[str, ...]]:
    """Each registered task's config section (`Task.config_keys`), by task name."""
    from codecloop.tasks import get_task_class, task_names

    return {name: get_task_class(name).config_keys for name in task_names()}


def task_section(task: str) -> tuple[str, ...]:
    """The config keys `task` takes; an unknown task is an error naming it and the known ones."""
    from codecloop.tasks import get_task_class

    return get_task_class(task).config_keys


def run_keys(task: str) -> list[str]:
    """The keys a run of `task` has, in config order: the generic ones and the task's own section."""
    sections = task_sections()
    foreign = set().union(*sections.values()) - set(task_section(task))
    return [key for key in config_keys() if key not in foreign]


def check_task_keys(task: str, keys: Iterable[str], source: str = "") -> None:
    """Stop on a key among `keys` (those set for a run) that belongs to another task's section and not to
    `task`'s, naming the key, the task and what it takes; `source` says where the key was set."""
    sections = task_sections()
    own = task_section(task)
    for key in keys:
        if key not in own and any(key in section for section in sections.values()):
            takers = ", ".join(name for name, section in sections.items() if key in section)
            raise ValueError(f"{source}config key {key!r} is not taken by task {task!r} (it takes: "
                             f"{', '.join(own)}; {key!r} is taken by: {takers})")


def given_keys(config: Config) -> list[str]:
    """The keys of `config` whose value differs from the default (set by someone)."""
    values, defaults = config.to_dict(), Config().to_dict()
    return [key for key in values if values[key] != defaults[key]]
