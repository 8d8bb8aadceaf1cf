"""`codecloop demo`: the whole protocol offline, on packaged photos, clips and a pretrained network.

``--codec jpeg`` (default) compresses photos, crops and frames with JPEG in the loop; ``--codec
h264`` writes the clips and slow pans across the photos as frame sequences, transcodes them into a
CRF ladder and draws a rung per frame. The images carry no labels, so the metric is agreement with
the pretrained teacher's top-1 on the clean image (``top1``), with the mean KL divergence to its
clean-image output (``kl``).
The teacher's outputs on the clean evaluation views are computed once and cached. The held-out set
is the images of the held-out sources on which the teacher is decided: its top-1 probability at least
`DEMO_MARGIN` above its second (`stable_holdout`; elsewhere its top-1 flips under changes invisible to
the eye, and agreement measures noise). The fine-tuned copy learns feature restoration (``--retrain_loss
features``): its stem and first three stages (``blocks.2``, stride 8) learn to give, from the compressed copy of
each randomly cropped training view, the output the teacher's give on its clean copy; the rest of the network
stays the teacher's, with BatchNorm statistics frozen and a clean share. The retrained network is the
midpoint between the teacher's weights and the fine-tuned ones (``--retrain_mix 0.5``, WiSE-FT's default),
which keeps the teacher's clean-image decisions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import torch

from codecloop.dali_pipes.codecs import codec_title, get_codec
from codecloop.dali_pipes.ladder import transcode
from codecloop.demo.packaged_data import MANIFEST, write_demo_dataset
from codecloop.demo.teacher import DEMO_TEACHER_ARCH, packaged_efficientnet_lite0_path
from codecloop.tasks.classification import ClassificationTask
from codecloop.tasks.distillation import DistillationTask, TeacherOutputs
from codecloop.trainers.commands import opened_run
from codecloop.trainers.config import Config, level_spec, sweep_codec_names, sweep_levels
from codecloop.trainers.loop import build_batches, channels_last
from codecloop.trainers.protocol import make_task, run_experiment
from codecloop.trainers.report import markdown_table, read_csv, write_text

DEMO_MARGIN = 0.15  # the teacher's top-1 probability minus its second, at least, on a held-out image
DEMO_CONFIG = dict(
    task="classification",
    model=DEMO_TEACHER_ARCH,
    num_classes=1000,
    normalize="inception",
    crop_size=224,
    resize_size=256,
    min_scale=0.25,
    epochs=0,
    batch_size=16,
    eval_batch_size=25,
    optimizer="sgd",
    momentum=0.9,
    weight_decay=0.0,
    warmup_steps=10,
    freeze_bn=True,
    retrain_clean_prob=0.3,
    retrain_epochs=1000,
    retrain_max_steps=400,
    retrain_lr=3e-3,
    retrain_loss="features",
    retrain_layer="blocks.2",
    retrain_mix=0.5,
    checkpoint_every=0,
    log_every=10,
    eval_every=0,
)


# per codec: JPEG fine-tunes on qualities 5-95; H.264 on CRF 18-46 (at 51 nothing of the frames is left to restore)
DEMO_CODECS = {"jpeg": dict(retrain_level="5-95"), "h264": dict(retrain_level="18-46")}
DEMO_KEYINT = 5


@torch.no_grad()
def teacher_outputs(config: Config, task: ClassificationTask, accelerator, cache: Path) -> TeacherOutputs:
    """Teacher probabilities on the clean eval view of every train and val image, cached in `cache`."""
    indexes = {split: task.sample_index(split) for split in ("train", "val")}
    files = [config.codec] + [f for index in indexes.values() for f in index.files]
    key = hashlib.sha256("\n".join(files).encode()).hexdigest()
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored.get("key") == key:
            return {split: (indexes[split].files, stored[split]) for split in indexes}
    teacher = task.create_model().to(accelerator.device, memory_format=torch.channels_last).eval()
    outputs = {"key": key}
    for split, index in indexes.items():
        probs = torch.zeros(len(index), task.num_classes)
        for batch in build_batches(config, task, index, accelerator, False, level_spec(config, None)):
            batch = channels_last(batch)
            with accelerator.autocast():
                probs[batch["index"].cpu()] = teacher(batch["image"]).float().softmax(dim=1).cpu()
        outputs[split] = probs
    temporary = cache.with_name(cache.name + ".tmp")
    torch.save(outputs, temporary)
    temporary.replace(cache)
    return {split: (indexes[split].files, outputs[split]) for split in indexes}


def stable_holdout(outputs: TeacherOutputs, root: Path, margin: float = DEMO_MARGIN) -> tuple[TeacherOutputs, str]:
    """`outputs` with the val split cut to the images where the teacher's top-1 probability is at least
    `margin` above its second; ``holdout.csv`` (file, source, margin, kept) written beside the data; and a
    line saying how many each source kept."""
    files, probs = outputs["val"]
    top = probs.topk(2, dim=1).values
    margins = (top[:, 0] - top[:, 1]).tolist()
    with (root / MANIFEST).open(newline="") as handle:
        source_of = {row["path"]: row["source"] for row in csv.DictReader(handle)}
    kept = [index for index, value in enumerate(margins) if value >= margin]
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["path", "source", "margin", "kept"])
    counts: dict[str, list[int]] = {}
    for path, value in zip(files, margins):
        relative = Path(path).resolve().relative_to(root.resolve()).as_posix()
        source = source_of.get(relative, "")
        counts.setdefault(source, [0, 0])[0] += value >= margin
        counts[source][1] += 1
        writer.writerow([relative, source, f"{value:.4f}", int(value >= margin)])
    write_text(root / "holdout.csv", table.getvalue())
    if not kept:
        raise ValueError(f"the teacher is decided (margin >= {margin}) on none of the {len(files)} held-out images")
    line = (f"{len(kept)} of {len(files)} held-out images kept, where the teacher's top-1 probability is at least "
            f"{margin:g} above its second (" + ", ".join(f"{name} {k}/{n}" for name, (k, n) in counts.items()) + ")")
    return {**outputs, "val": ([files[index] for index in kept], probs[kept])}, line


def run_demo(out: Path, retrain_steps: int | None = None, wandb: str = "disabled", codec: str = "jpeg",
             codecs: str | None = None, seed: int = 0) -> list[dict]:
    """Build the dataset (and the CRF ladder), sweep the teacher, fine-tune on compressed images, sweep,
    report recovery; `codecs` (comma-separated) are swept besides `codec`, for the equal-rate table. `seed`
    draws the fine-tuning's crops, levels and order; the data and the held-out set do not change with it."""
    started = time.perf_counter()
    out = Path(out)
    if codec not in DEMO_CODECS:
        raise ValueError(f"the demo runs {' or '.join(DEMO_CODECS)}, not {codec!r}")
    on_ladder = get_codec(codec).ladder_clean_rung is not None
    settings = {**DEMO_CONFIG, **DEMO_CODECS[codec]}
    config = Config(**settings, data=str(out / "data"), pretrained=str(packaged_efficientnet_lite0_path()),
                    out=str(out), wandb=wandb, codec=codec, seed=seed,
                    codecs=",".join(dict.fromkeys([codec, *codecs.split(",")])) if codecs else None).validate()
    dataset = write_demo_dataset(out / "data", layout="sequences" if on_ladder else "images")
    print(f"demo data: {dataset.count('train')} train images ({len(dataset.sources('train'))} sources), "
          f"{dataset.count('val')} held-out images ({', '.join(sorted(dataset.sources('val')))}) in {out / 'data'}")
    if on_ladder:
        # a keyframe every 5 frames: a random frame costs the CPU decoder 3 frames on average, not 8
        built = out / "ladder" / "ladder.json"
        if built.is_file() and json.loads(built.read_text()).get("keyint") != DEMO_KEYINT:
            shutil.rmtree(out / "ladder")  # from an earlier version of the demo
        for name in sweep_codec_names(config):  # each swept codec's rungs at its own levels
            ladder = transcode(out / "data", out / "ladder", crfs=[0, *sweep_levels(config.replace(codec=name))],
                               keyint=DEMO_KEYINT, codecs=[name])
            print(f"{codec_title(name)} CRF ladder: {ladder.summary()}")
        config = config.replace(ladder=str(out / "ladder"))
    if retrain_steps is not None:
        config = config.replace(retrain_max_steps=retrain_steps)
    with opened_run("demo", config) as (accelerator, run_dir):
        for stage in ("baseline", "retrain"):
            shutil.rmtree(run_dir / stage, ignore_errors=True)
        student = make_task(config)
        targets, kept = stable_holdout(teacher_outputs(config, student, accelerator, out / "data" / "teacher_outputs.pt"),
                                       out / "data")
        accelerator.print(kept)
        task = DistillationTask(student, student.create_model(), targets)
        recovery = run_experiment(config, task, run_dir, accelerator)
    minutes = (time.perf_counter() - started) / 60
    if accelerator.is_main_process:
        print(f"\nagreement with the teacher's clean-image top-1, before and after fine-tuning on "
              f"{codec_title(codec)}:\n")
        print(markdown_table(recovery))
        if (run_dir / "equal_rate.csv").is_file() and config.codecs:
            print("\nagreement at equal bitrate (bits per pixel), interpolated per codec:\n")
            print(markdown_table(read_csv(run_dir / "equal_rate.csv")))
        print(f"\ndemo finished in {minutes:.1f} min; report: {run_dir / 'report.md'}, plot: {run_dir / 'experiment.png'}")
    return recovery
