"""World sizes 2 and 3 with gloo on CPU, on splits that do not divide evenly: sharded training,
every eval sample counted exactly once, seeds per rank and per run, and checkpoints that refuse
another world size or task."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.codecs import JPEG
from tests.conftest import TINY
from tests.datasets import write_image_folder

ONE_THREAD = [arg if arg != "2" else "1" for arg in TINY]  # one DALI thread per process on 2 cores
TRAIN_IMAGES, VAL_IMAGES, BATCH = 25, 13, 4
TRAIN_ARGS = [*ONE_THREAD, "--batch_size", str(BATCH), "--epochs", "1", "--level", "10-90", "--log_every", "1"]


def _torchrun(*args, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "codecloop", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _sweep_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "sweep.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def uneven_folder(tmp_path_factory) -> Path:
    """25 train and 13 val JPEGs in 3 classes: no split divides by 2 or 3, and with batches of 4 the
    smaller training shard fills whole batches while the larger one has one sample left over."""
    root = write_image_folder(tmp_path_factory.mktemp("uneven"), {"train": 9, "val": 5})
    for split, index in (("train", 8), ("val", 4)):
        for class_name in ("chelsea", "coffee"):
            (root / split / class_name / f"{class_name}_{index:03d}.jpg").unlink()
    assert len(list(root.rglob("train/*/*.jpg"))) == TRAIN_IMAGES
    assert len(list(root.rglob("val/*/*.jpg"))) == VAL_IMAGES
    return root


@pytest.fixture(scope="module")
def trained(uneven_folder, tmp_path_factory):
    """One epoch of training per world size (2 or 3), run once for the module."""
    runs: dict[int, Path] = {}

    def train(processes: int) -> Path:
        if processes not in runs:
            out = tmp_path_factory.mktemp(f"train{processes}") / "run"
            result = _torchrun("train", "--data", uneven_folder, *TRAIN_ARGS, "--out", out, processes=processes)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[processes] = out
        return runs[processes]

    return train


@pytest.mark.multiprocess
@pytest.mark.parametrize("processes", [2, 3])
def test_sharded_train_and_sweep_count_every_sample_once(processes, trained, uneven_folder, tmp_path, run_cli):
    train_dir = trained(processes)
    assert [r["eval/n"] for r in _records(train_dir) if "eval/n" in r] == [VAL_IMAGES]
    state = json.loads(next((train_dir / "checkpoints").glob("step_*/trainer_state.json")).read_text())
    steps = math.ceil(math.ceil(TRAIN_IMAGES / processes) / BATCH)  # every rank steps as often as the largest shard
    assert state["world_size"] == processes
    assert state["step"] == steps and state["epoch"] == 1
    assert state["samples"] == steps * BATCH * processes  # full batches on every rank: short shards repeat a sample
    sweeps = {}
    for world in (1, processes):
        arguments = ["sweep", "--data", uneven_folder, *ONE_THREAD, "--batch_size", BATCH, "--checkpoint", train_dir,
                     "--levels", "20,80", "--out", tmp_path / f"sweep{world}"]
        if world == 1:
            assert run_cli(*arguments)[0] == 0
        else:
            result = _torchrun(*arguments, processes=processes)
            assert result.returncode == 0, result.stderr[-3000:]
        sweeps[world] = _sweep_rows(tmp_path / f"sweep{world}")
    assert [row["n"] for row in sweeps[processes]] == [str(VAL_IMAGES)] * 3
    for one, many in zip(sweeps[1], sweeps[processes]):  # no sample dropped or counted twice
        assert float(one["top1"]) == pytest.approx(float(many["top1"]), abs=1e-6)
        assert float(one["loss"]) == pytest.approx(float(many["loss"]), rel=1e-4)


@pytest.mark.multiprocess
def test_same_seed_reruns_to_the_same_metrics(trained, uneven_folder, tmp_path):
    first = trained(2)
    result = _torchrun("train", "--data", uneven_folder, *TRAIN_ARGS, "--out", tmp_path / "again")
    assert result.returncode == 0, result.stderr[-3000:]
    expected, actual = _records(first), _records(tmp_path / "again")
    keys = ("step", "train/loss", "codec/level_mean", "eval/top1", "eval/loss", "eval/n")
    assert len(actual) == len(expected)
    for again, before in zip(actual, expected):
        assert {k: again[k] for k in keys if k in again} == pytest.approx({k: before[k] for k in keys if k in before})


@pytest.mark.multiprocess
def test_resume_with_another_world_size_is_refused(trained, uneven_folder, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(trained(2), run_dir)
    config = (run_dir / "config.yaml").read_text()
    status, _, err = run_cli("train", "--data", uneven_folder, *TRAIN_ARGS, "--epochs", "2", "--out", run_dir,
                             "--resume", "true")
    assert status == 2
    assert "codecloop train: error: checkpoint" in err
    assert "was written by 2 processes; this run has 1: resume with the same number of processes" in err
    assert (run_dir / "config.yaml").read_text() == config  # refused before anything is written


@pytest.fixture(scope="module")
def segmentation_data(tmp_path_factory) -> Path:
    from codecloop.synthetic.datasets import make_synthetic

    return make_synthetic("segmentation", tmp_path_factory.mktemp("seg") / "data", train=2, val=2, height=48,
                          width=64)


SEGMENTATION = ["--task", "segmentation", "--model", "unet_test_efficientnet", "--input_size", "48x64",
                "--batch_size", "2", "--wandb", "disabled", "--progress", "false", "--num_threads", "1"]


@pytest.mark.multiprocess
def test_checkpoint_of_another_task_is_refused(trained, segmentation_data, tmp_path, run_cli):
    classification_run = trained(2)
    status, _, err = run_cli("sweep", "--data", segmentation_data, *SEGMENTATION, "--checkpoint", classification_run,
                             "--levels", "10", "--out", tmp_path / "sweep")
    assert status == 2
    assert (f"codecloop sweep: error: checkpoint {classification_run} comes from a classification run "
            f"({classification_run / 'config.yaml'}); this run's task is segmentation") in err
    resumed = tmp_path / "resumed"
    shutil.copytree(classification_run, resumed)
    config = (resumed / "config.yaml").read_text()
    status, _, err = run_cli("train", "--data", segmentation_data, *SEGMENTATION, "--out", resumed, "--resume", "true")
    assert status == 2
    assert (f"codecloop train: error: run directory {resumed} holds a classification run ({resumed / 'config.yaml'}); "
            "this run's task is segmentation: resume with --task classification") in err
    assert (resumed / "config.yaml").read_text() == config


@pytest.mark.multiprocess
def test_weights_of_another_model_name_the_file_and_keys(trained, uneven_folder, tmp_path, run_cli):
    run_dir = trained(2)
    other_model = [arg if arg != "test_efficientnet" else "test_resnet" for arg in ONE_THREAD]
    status, _, err = run_cli("sweep", "--data", uneven_folder, *other_model, "--checkpoint", run_dir, "--levels", "20",
                             "--out", tmp_path / "sweep")
    assert status == 2
    assert f"codecloop sweep: error: {run_dir / 'model.safetensors'}: checkpoint from another model" in err
    assert "model keys not in the file (" in err and "file keys not in the model (" in err


@pytest.mark.multiprocess
def test_two_process_dense_sweep_counts_every_image_once(tmp_path, run_cli):
    """A confusion matrix gathered from 2 ranks over 5 images equals the one-process sweep."""
    from codecloop.synthetic.datasets import make_synthetic

    data = make_synthetic("segmentation", tmp_path / "data", train=4, val=5, height=48, width=64)
    options = ["--task", "segmentation", "--model", "unet_test_efficientnet", "--data", data, "--input_size",
               "48x64", "--batch_size", "2", "--wandb", "disabled", "--progress", "false", "--num_threads", "1"]
    assert run_cli("train", *options, "--max_steps", "2", "--out", tmp_path / "train")[0] == 0
    sweeps = {}
    for processes in (1, 2):
        out = tmp_path / f"sweep{processes}"
        arguments = ["sweep", *options, "--checkpoint", tmp_path / "train", "--levels", "10", "--out", out]
        if processes == 1:
            assert run_cli(*arguments)[0] == 0
        else:
            result = _torchrun(*arguments)
            assert result.returncode == 0, result.stderr[-3000:]
        sweeps[processes] = _sweep_rows(out)
    assert [row["n"] for row in sweeps[2]] == ["5", "5"]
    for one, two in zip(sweeps[1], sweeps[2]):
        assert abs(float(one["miou"]) - float(two["miou"])) < 1e-3


def _image_files(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.rglob("train/*/*.jpg"))


@pytest.mark.parametrize("num_shards", [2, 3])
def test_training_shards_step_together_on_full_batches(uneven_folder, num_shards):
    """Shards of 25 files differ by one: every rank still runs the same number of full batches
    (none empty, which would make a NaN loss), and one epoch covers every file."""
    from codecloop.dali_pipes import ImageBatches, ImageGeometry

    files = _image_files(uneven_folder)
    seen, lengths = set(), []
    for shard_id in range(num_shards):
        batches = ImageBatches(files, runtime=PipelineRuntime(batch_size=BATCH, shard_id=shard_id,
                               num_shards=num_shards, num_threads=1, seed=7), training=True,
                               spec=JPEG.parse_spec("10-90"), codec=JPEG, geometry=ImageGeometry(crop_size=32,
                               resize_size=40),)
        indices = [batch["index"].tolist() for batch in batches]
        assert [len(batch) for batch in indices] == [BATCH] * len(batches)
        lengths.append(len(batches))
        seen.update(index for batch in indices for index in batch)
    assert len(set(lengths)) == 1 and lengths[0] == math.ceil(math.ceil(len(files) / num_shards) / BATCH)
    assert seen == set(range(len(files)))


def test_ranks_share_the_plan_and_read_disjoint_shards(uneven_folder):
    """Every rank's pipeline gets the run's seed: one permutation per epoch dealt to all ranks, so in an epoch
    no two ranks read the same file (a per-rank seed would shuffle each shard from its own permutation)."""
    from codecloop.dali_pipes import ImageBatches, ImageGeometry
    from codecloop.trainers.config import Config
    from codecloop.trainers.loop import pipeline_runtime

    config = Config(data=str(uneven_folder), batch_size=BATCH, seed=5)
    task = SimpleNamespace(memory_format=None)
    ranks = [SimpleNamespace(process_index=rank, num_processes=3, local_process_index=rank, device=torch.device("cpu"))
             for rank in range(3)]
    runtimes = [pipeline_runtime(config, task, accelerator, True) for accelerator in ranks]
    assert {runtime.seed for runtime in runtimes} == {5}
    files = _image_files(uneven_folder)
    shards = []
    for runtime in runtimes:
        batches = ImageBatches(files, runtime=PipelineRuntime(batch_size=BATCH, shard_id=runtime.shard_id,
                               num_shards=runtime.num_shards, num_threads=1, seed=runtime.seed), training=True,
                               spec=JPEG.parse_spec("1-100"), codec=JPEG, geometry=ImageGeometry(crop_size=32,
                               resize_size=40),)
        shards.append([index for batch in batches for index in batch["index"].tolist()])
    owned = [set(shard[:len(range(rank, len(files), 3))]) for rank, shard in enumerate(shards)]  # then padding
    assert sum(map(len, owned)) == len(files) and set().union(*owned) == set(range(len(files)))


def test_pipeline_gpu_is_the_accelerator_device():
    """With one visible GPU per process (CUDA_VISIBLE_DEVICES per rank), local rank 3 runs on cuda:0."""
    from codecloop.trainers.config import Config
    from codecloop.trainers.loop import pipeline_runtime

    config = Config(data="unused", batch_size=BATCH)
    ranks = [SimpleNamespace(process_index=rank, num_processes=4, local_process_index=rank, device=device)
             for rank, device in ((3, torch.device("cuda", 0)), (2, torch.device("cuda", 2)), (1, torch.device("cpu")))]
    task = SimpleNamespace(memory_format=torch.channels_last)
    runtimes = [pipeline_runtime(config, task, accelerator, True) for accelerator in ranks]
    assert [runtime.device_id for runtime in runtimes] == [0, 2, None]
    assert all(runtime.channels_last for runtime in runtimes) == config.channels_last


@pytest.mark.multiprocess
def test_two_process_feature_restoration_trains_only_the_front_end(uneven_folder, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    result = _torchrun("experiment", "--data", uneven_folder, *TRAIN_ARGS, "--levels", "10", "--bootstrap", "0",
                       "--retrain_max_steps", "2", "--retrain_lr", "0.05", "--retrain_loss", "features",
                       "--retrain_layer", "blocks.0", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    before, after = load_file(out / "baseline" / "model.safetensors"), load_file(out / "retrain" / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("conv_stem", "bn1", "blocks.0")) for name in changed), changed
