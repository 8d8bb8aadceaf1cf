"""`codecloop bench`: each CPU mode, image and video, runs a few iterations and appends well-formed
CSV and JSON rows (no speed assertions)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from codecloop.dali_pipes.ladder import transcode
from tests.videos import moving_frames, write_video

FAST = ["--images", "12", "--batch_size", "4", "--crop", "48", "--iterations", "2", "--warmup", "1", "--repeats",
        "2", "--threads", "1", "--workers", "1", "--model", "test_efficientnet"]
COLUMNS = ["mode", "codec", "device", "precision", "torch", "torchvision", "dali", "cuda", "batch_size", "crop",
           "frames", "samples", "levels", "model", "iterations", "repeats", "time", "contender", "unit",
           "samples_per_sec", "min", "max", "ratio"]


def test_bench_modes_append_rows(tmp_path, run_cli):
    expected = {"data": ["codecloop", "dali-bare", "torch-dataloader"], "model": ["test_efficientnet"],
                "train": ["codecloop", "codecloop-clean"], "sweep": ["one-pass", "pass-per-level"]}
    for mode, contenders in expected.items():
        status, out, err = run_cli("bench", "--mode", mode, *FAST, "--out", tmp_path)
        assert status == 0, err
        assert "| contender | images/s (median) |" in out
    assert "skipped torchvision-nvjpeg: needs CUDA" in run_cli("bench", *FAST, "--out", tmp_path / "again")[1]
    (csv_path,) = tmp_path.glob("bench-*-fp32-torch*-dali*-cuda*.csv")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS
    assert [(row["mode"], row["contender"]) for row in rows] == [
        (mode, name) for mode, names in expected.items() for name in names]
    for row in rows:
        assert float(row["min"]) <= float(row["samples_per_sec"]) <= float(row["max"]) and float(row["min"]) > 0
        assert (row["codec"], row["unit"], row["frames"]) == ("jpeg", "images", "")
    assert [row["ratio"] for row in rows if row["mode"] == "data"][0] == "1.0"
    train = [row for row in rows if row["mode"] == "train"]
    assert train[1]["ratio"] == "1.0" and 0 < float(train[0]["ratio"])  # codec / clean
    assert rows[-1]["ratio"] == "1.0" and rows[-1]["levels"] == "5,10,15,20,30,50,75,90,95"
    records = json.loads(csv_path.with_suffix(".json").read_text())
    assert [{key: str(value) for key, value in record.items()} for record in records] == rows


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    """Two short clips at CRFs 0, 28 and 51."""
    src = tmp_path_factory.mktemp("videos")
    for index, count in enumerate([12, 9]):
        write_video(src / f"clip{index}.mp4", moving_frames(count, 64, 48, seed=index))
    dst = tmp_path_factory.mktemp("ladder")
    transcode(src, dst, crfs=(0, 28, 51), workers=2, progress=False)
    return dst


def test_video_bench_modes_append_rows(ladder, tmp_path, run_cli):
    video = ["--codec", "h264", "--data", ladder, "--crop", "32", "--frames", "4", "--model", "r3d_18"]
    expected = {"data": ["codecloop", "dali-bare", "torch-dataloader"], "model": ["r3d_18"],
                "train": ["codecloop", "codecloop-clean"]}
    for mode in expected:
        status, out, err = run_cli("bench", "--mode", mode, *FAST, *video, "--out", tmp_path)
        assert status == 0, err
        assert "| contender | clips/s (median) |" in out and "4x32x32, CRF 18-51" in out
    (csv_path,) = tmp_path.glob("bench-*.csv")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["contender"]) for row in rows] == [
        (mode, name) for mode, names in expected.items() for name in names]
    assert {(row["codec"], row["unit"], row["frames"], row["levels"]) for row in rows} == {("h264", "clips", "4", "18-51")}
    assert all(float(row["samples_per_sec"]) > 0 for row in rows)
    assert run_cli("bench", "--mode", "sweep", *FAST, *video, "--out", tmp_path)[2].count("JPEG sweeps") == 1


def test_video_bench_without_a_clean_rung_skips_bare_dali(tmp_path, run_cli):
    src = tmp_path / "videos"
    src.mkdir()
    write_video(src / "clip.mp4", moving_frames(8, 64, 48))
    transcode(src, tmp_path / "ladder", crfs=(28, 51), workers=1, progress=False)
    status, out, _ = run_cli("bench", *FAST, "--codec", "h264", "--data", tmp_path / "ladder", "--crop", "32",
                             "--frames", "4", "--contenders", "codecloop,dali-bare", "--out", tmp_path / "out")
    assert status == 0 and "skipped dali-bare: the ladder" in out and "has no clean CRF-0 rung" in out


@pytest.mark.parametrize("arguments, message", [
    (["--contenders", "pillow-simd"], "unknown contender 'pillow-simd'"),
    (["--level", "0-50"], "quality 0 is outside 1..100"),
    (["--codec", "h264", "--level", "60"], "CRF 60"),
    (["--contenders", "torchvision-nvjpeg"], "no contender could run: skipped torchvision-nvjpeg: needs CUDA"),
])
def test_bench_bad_input(arguments, message, tmp_path, run_cli):
    status, _, err = run_cli("bench", *FAST, *arguments, "--out", tmp_path)
    assert status == 2 and message in err


def test_batched_nvjpeg_peer_crops_like_torchvision_on_the_cpu(tmp_path):
    """The torchvision peer's batched pieces, run on the CPU: random-resized boxes follow torchvision's
    law, the one-roi_align crop matches torchvision's antialiased `resized_crop` of the same box (and not
    the box with x and y swapped), and whole batches come out normalized."""
    import torch
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as F

    from codecloop.dali_pipes.fidelity import write_photo_jpegs
    from codecloop.bench.throughput import nvjpeg_batches, random_resized_boxes, resized_crops

    heights, widths = torch.tensor([375, 100, 40] * 200), torch.tensor([500, 1000, 400] * 200)
    boxes = random_resized_boxes(heights, widths, torch.Generator().manual_seed(0))
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= widths).all() and (boxes[:, 3] <= heights).all()
    area = box_w * box_h / (heights * widths)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area[0::3].std() > 0.2  # spread over 0.08..1
    assert ((box_w / box_h)[0::3] - 1).abs().max() <= 1 / 3 + 0.02
    assert torch.equal(boxes[2::3][0], torch.tensor([180.0, 0.0, 220.0, 40.0])) or (area[2::3] < 1).any()

    files = write_photo_jpegs(tmp_path, 6)
    photo = decode_jpeg(read_file(files[0]))
    ours = resized_crops([photo, photo[:, :200, :300]], torch.tensor([[10.0, 20.0, 210.0, 320.0]] * 2), 64)
    same = F.resized_crop(photo.float(), 20, 10, 300, 200, [64, 64], antialias=True)
    swapped = F.resized_crop(photo.float(), 10, 20, 200, 300, [64, 64], antialias=True)
    assert (ours[0] - same).abs().mean() < 4 < (ours[0] - swapped).abs().mean()
    assert (ours[1, :, :30] - same[:, :30]).abs().mean() < 4  # a smaller image padded into the batch

    batches = nvjpeg_batches(files, (5, 95), 48, 4, torch.device("cpu"))
    first, second = next(batches), next(batches)
    assert first.shape == (4, 3, 48, 48) and second.shape == (2, 3, 48, 48)
    assert torch.isfinite(first).all() and -2.2 < first.mean() < 2.7 and first.std() > 0.3


def test_bench_repeats_a_small_dataset_and_steps_down_on_dali_out_of_memory(tmp_path, run_cli, monkeypatch):
    import codecloop.bench.throughput as bench

    measure, calls = bench._measure_images, []

    def out_of_memory_once(settings, *, files, notes):
        calls.append((settings.batch_size, len(files)))
        if len(calls) == 1:
            raise RuntimeError("Critical error in pipeline: CUDA allocation failed")
        return measure(settings, files=files, notes=notes)

    monkeypatch.setattr(bench, "_measure_images", out_of_memory_once)
    status, out, err = run_cli("bench", *FAST, "--contenders", "codecloop", "--out", tmp_path)
    assert status == 0, err
    assert calls == [(4, 84), (2, 84)]
    assert "12 images repeated to 84 per epoch" in out and "out of memory at batch 4: stepping down to 2" in out

    def other_failure(settings, *, files, notes):
        raise RuntimeError("Critical error in pipeline: nvJPEG could not decode")

    monkeypatch.setattr(bench, "_measure_images", other_failure)
    with pytest.raises(RuntimeError, match="could not decode"):  # not a reason to halve the batch
        run_cli("bench", *FAST, "--contenders", "codecloop", "--out", tmp_path)


def test_feeder_mode_plans_whole_epochs_and_appends_a_row(tmp_path, run_cli):
    for samples in ("3000", "30000"):
        status, out, err = run_cli("bench", "--mode", "feeder", "--samples", samples, "--batch_size", "64",
                                   "--repeats", "2", "--warmup", "1", "--out", tmp_path)
        assert status == 0, err
        assert "| sample-plan |" in out and "samples/s (median)" in out
    with next(tmp_path.glob("bench-*.csv")).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["mode"], row["contender"], row["samples"], row["unit"]) for row in rows] == \
        [("feeder", "sample-plan", "3000", "samples"), ("feeder", "sample-plan", "30000", "samples")]
    assert all(float(row["samples_per_sec"]) > 0 for row in rows)
    status, _, err = run_cli("bench", "--mode", "feeder", "--codec", "h264", "--out", tmp_path)
    assert status != 0 and "bench --mode sweep" not in err and "feeder" in err


@pytest.fixture
def unrunnable_codecs():
    """A ladder-only codec (no online image path) and a host codec whose encoder this machine lacks."""
    from codecloop.dali_pipes import Codec, LevelScale, register_codec, unregister_codec

    scale = LevelScale("Test", "level", 0, 9)
    register_codec(Codec(name="ladder-only", title="Ladder only", scale=scale, higher_is_better=False,
                         default_levels=(1, 5), retrain_spec="1-5", ladder_clean_rung=0))
    register_codec(Codec(name="absent", title="Absent", scale=scale, higher_is_better=True, default_levels=(1, 5),
                         retrain_spec="1-5", roundtrip=lambda image, level: image,
                         missing=lambda: "no Absent encoder here: pip install absent"))
    yield
    unregister_codec("ladder-only")
    unregister_codec("absent")


def test_codecs_mode_times_every_online_codec_and_lists_the_others_as_skipped(unrunnable_codecs, tmp_path, run_cli):
    from codecloop.dali_pipes.codecs import codec_names, get_codec

    online = [name for name in codec_names() if get_codec(name).on_images and not (
        get_codec(name).missing and get_codec(name).missing())]
    status, out, err = run_cli("bench", "--mode", "codecs", "--images", "2", "--level_count", "1", "--warmup", "1",
                               "--iterations", "1", "--repeats", "1", "--batch_size", "2", "--threads", "2",
                               "--gpu_images_per_sec", "1000", "--out", tmp_path)
    assert status == 0, err
    assert "skipped ladder-only: no online image path (runs as: ladder)" in out
    assert "skipped absent: no Absent encoder here: pip install absent" in out
    assert "GPU step: 1000 images/s (given (--gpu_images_per_sec))" in out and "A share above 1 means" in out
    (csv_path,) = tmp_path.glob("bench-codecs-*-dali*-pillow*-av*.csv")
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    timed = [row for row in rows if not row["skipped"]]
    assert {row["codec"] for row in timed} == set(online) and {"jpeg", "h264"} <= set(online)
    ladder_only = {name for name in codec_names() if not get_codec(name).on_images}  # hevc, the test's own
    assert {(row["codec"], row["skipped"].split(":")[0]) for row in rows if row["skipped"]} == {
        *((name, "no online image path (runs as") for name in ladder_only), ("absent", "no Absent encoder here")}
    for name in online:
        codec = get_codec(name)
        contenders = {row["contender"] for row in timed if row["codec"] == name}
        assert contenders == {"dali-cpu", "pillow-libjpeg"} if name == "jpeg" else {"host"}, (name, contenders)
        assert {row["size"] for row in timed if row["codec"] == name} == {"224x224", "native"}
        assert {int(row["level"]) for row in timed if row["codec"] == name} <= set(codec.default_levels)
        assert f"| {name} |" in out
    for row in timed:
        for key in ("ms_per_image", "images_per_sec", "gpu_step_fraction"):
            assert 0 < float(row[key]) < float("inf"), (row["codec"], key, row[key])
        share = pytest.approx(1000 / float(row["images_per_sec"]), rel=1e-2, abs=1e-3)
        assert float(row["gpu_step_fraction"]) == share
        assert int(row["threads_to_keep_up"]) >= 1 and row["threads"] == "2" and row["photos"] == "2"
    assert json.loads(csv_path.with_suffix(".json").read_text())[0]["mode"] == "codecs"
    status, _, err = run_cli("bench", "--mode", "codecs", "--level", "5-95", "--out", tmp_path)
    assert status == 2 and "--level_count" in err
