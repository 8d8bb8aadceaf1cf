"""Action recognition on UCF101's and HMDB51's native layouts: split files, classes, missing videos, wrong layouts,
and the synthetic writers that make-synthetic uses (real MPEG-4 AVI files)."""

from __future__ import annotations

import csv
import hashlib
import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from codecloop.tasks.action import ActionTask, read_hmdb_split_file
from codecloop.tasks.layout_errors import MissingFilesError
from codecloop.synthetic.datasets import make_synthetic
from codecloop.synthetic.action import HMDB_CLASSES, LAYOUTS, UCF_CLASSES

FAST = ["--model", "mc3_18", "--frames", "4", "--frame_stride", "2", "--eval_clips", "2", "--crop_size", "32",
        "--resize_size", "40", "--batch_size", "3", "--wandb", "disabled", "--progress", "false", "--num_threads", "2"]
TASK = {"model": "mc3_18", "frames": 4, "crop_size": 32}


def _layout(out: Path, layout: str) -> tuple[Path, Path]:
    videos, lists = LAYOUTS[layout]
    return out / videos, out / lists


@pytest.fixture(scope="module")
def hmdb(tmp_path_factory, run_cli_module):
    """A synthetic HMDB51 copy (3 classes; 2 train, 1 test and 1 unused video each in split 1) and its ladder."""
    out = make_synthetic("action", tmp_path_factory.mktemp("hmdb") / "hmdb51", format="hmdb51", train=6, val=3,
                         height=48, width=64)
    videos, lists = _layout(out, "hmdb51")
    ladder = out / "ladder"
    status, printed, err = run_cli_module("transcode", "--src", videos, "--dst", ladder, "--crfs", "0,23,51",
                                          "--workers", "2")
    assert status == 0 and "12 clips: 36 rungs written" in printed, err
    return videos, lists, ladder


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    """A synthetic UCF101 copy (videos and split files; no ladder)."""
    out = make_synthetic("action", tmp_path_factory.mktemp("ucf") / "ucf101", format="ucf101", train=6, val=3,
                         height=48, width=64)
    return _layout(out, "ucf101")


def test_hmdb51_split_file_ids(tmp_path):
    path = tmp_path / "brush_hair_test_split1.txt"
    path.write_bytes(b"a_brush_hair_0.avi 1 \r\nb_brush_hair_1.avi 2 \r\n\r\nc_brush_hair_2.avi 0 \r\n"
                     b"(Rad)Schlag_die_Bank!_brush_hair_3.avi 1\n")
    assert read_hmdb_split_file(path, 1) == ["a_brush_hair_0.avi", "(Rad)Schlag_die_Bank!_brush_hair_3.avi"]
    assert read_hmdb_split_file(path, 2) == ["b_brush_hair_1.avi"]
    assert read_hmdb_split_file(path, 0) == ["c_brush_hair_2.avi"]
    path.write_text("a.avi 1\nb.avi 3\n")
    with pytest.raises(ValueError, match=r"brush_hair_test_split1.txt line 2: expected '<video>.avi <id>'"):
        read_hmdb_split_file(path, 1)


def test_hmdb51_layout_detected_with_classes_and_splits(hmdb):
    videos, lists, ladder = hmdb
    task = ActionTask(videos, ladder=ladder, splits=lists, **TASK)
    assert task.format == "hmdb51"
    assert task.classes == sorted(HMDB_CLASSES) == ["brush_hair", "cartwheel", "climb_stairs"]
    train, val = task.sample_index("train"), task.sample_index("val")
    assert len(train) == 6 and len(val) == 3
    assert val.files == [f"{name}/synthetic00_{name}_f_nm_np1_fr_med_0" for name in HMDB_CLASSES]
    assert torch.equal(val.targets["label"], torch.tensor([0, 1, 2]))
    assert torch.equal(train.targets["label"], torch.tensor([0, 0, 1, 1, 2, 2]))
    unused = {f"{name}/synthetic03_{name}_f_nm_np1_fr_med_0" for name in HMDB_CLASSES}
    assert not unused & set(train.files + val.files)
    second = ActionTask(videos, ladder=ladder, splits=lists, split=2, format="hmdb51", **TASK)
    assert second.sample_index("val").files == [f"{name}/synthetic01_{name}_f_nm_np1_fr_med_0"
                                                for name in HMDB_CLASSES]
    assert set(second.sample_index("train").files) | set(second.sample_index("val").files) == set(
        train.files + val.files)


def test_hmdb51_train_then_sweep(hmdb, tmp_path, run_cli):
    videos, lists, ladder = hmdb
    layout = ["--task", "action", "--codec", "h264", "--data", videos, "--splits", lists, "--ladder", ladder, *FAST]
    status, _, err = run_cli("train", *layout, "--level", "23-51", "--epochs", "1", "--out", tmp_path / "train")
    assert status == 0, err
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/n"] for r in records if "eval/top1" in r] == [3]
    assert [r["step"] for r in records if "train/loss" in r][-1] == 2  # 6 train videos, batch 3
    status, _, err = run_cli("sweep", *layout, "--checkpoint", tmp_path / "train", "--levels", "23,51",
                             "--out", tmp_path / "sweep")
    assert status == 0, err
    with (tmp_path / "sweep" / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["level"], row["n"]) for row in rows] == [("clean", "3"), ("23", "3"), ("51", "3")]


def test_split_file_naming_missing_videos(hmdb, tmp_path, run_cli):
    videos, lists, ladder = hmdb
    splits = tmp_path / "splits"
    shutil.copytree(lists, splits)
    gone = [f"gone_{i}_cartwheel_f_nm_np1_fr_med_0.avi" for i in range(5)]
    with (splits / "cartwheel_test_split1.txt").open("a") as handle:
        handle.writelines(f"{name} 1\n" for name in gone)
    task = ActionTask(videos, ladder=ladder, splits=splits, **TASK)
    with pytest.raises(MissingFilesError) as caught:
        task.sample_index("train")
    message = str(caught.value)
    assert "cartwheel_test_split1.txt names 5 missing video(s)" in message
    assert f"first: {videos / 'cartwheel' / gone[0]}" in message and gone[3] not in message
    assert "`codecloop check-data`" in message and "neither under --data" in message
    assert task.sample_index("val") is not None  # the test videos are all there
    status, printed, _ = run_cli("check-data", "--task", "action", "--codec", "h264", "--data", videos,
                                 "--splits", splits, "--ladder", ladder)
    assert status == 2
    assert "cartwheel_test_split1.txt names 5 missing file(s)" in printed
    assert all(str(videos / "cartwheel" / name) in printed for name in gone)
    assert "val: 3 samples, 0 file(s) skipped" in printed
    status, _, err = run_cli("train", "--task", "action", "--codec", "h264", "--data", videos, "--splits", splits,
                             "--ladder", ladder, *FAST, "--out", tmp_path / "run")
    assert status == 2 and "names 5 missing video(s)" in err


def test_video_in_data_but_not_in_ladder_names_the_transcode(hmdb, tmp_path):
    videos, lists, ladder = hmdb
    stale = tmp_path / "ladder"
    shutil.copytree(ladder, stale)
    manifest = (stale / "manifest.csv").read_text().splitlines()
    (stale / "manifest.csv").write_text("\n".join(line for line in manifest if "synthetic00_cartwheel" not in line))
    task = ActionTask(videos, ladder=stale, splits=lists, **TASK)
    with pytest.raises(MissingFilesError, match=r"names 1 missing ladder clip\(s\) \(first: "
                                                r"cartwheel/synthetic00_cartwheel_f_nm_np1_fr_med_0\)") as caught:
        task.sample_index("val")
    assert f"are in {videos} but not in the ladder {stale}" in str(caught.value)
    assert f"codecloop transcode --src {videos} --dst {ladder}" in str(caught.value)


def test_format_mismatch_names_what_was_expected(ucf, hmdb, tmp_path, run_cli):
    (ucf_videos, ucf_lists), (hmdb_videos, hmdb_lists, ladder) = ucf, hmdb
    with pytest.raises(ValueError, match=r"config key 'format': --format hmdb51 expects HMDB51 split files "
                                         r"\(<class>_test_splitN.txt.* which holds UCF101 split files .* use "
                                         r"--format ucf101"):
        ActionTask(ucf_videos, splits=ucf_lists, format="hmdb51", **TASK)
    status, _, err = run_cli("train", "--task", "action", "--codec", "h264", "--data", hmdb_videos, "--splits",
                             hmdb_lists, "--format", "ucf101", "--ladder", tmp_path, *FAST, "--out", tmp_path / "r")
    assert status == 2 and "--format ucf101 expects UCF101 split files" in err and "use --format hmdb51" in err
    with pytest.raises(ValueError, match="config key 'split': .* for split 4; UCF101 and HMDB51 ship splits 1, 2"):
        ActionTask(hmdb_videos, splits=hmdb_lists, split=4, **TASK)
    with pytest.raises(ValueError, match="config key 'splits': --format folders reads"):
        ActionTask(hmdb_videos, splits=hmdb_lists, format="folders", **TASK)
    with pytest.raises(ValueError, match="config key 'splits': --format hmdb51 needs its HMDB51 split files"):
        ActionTask(hmdb_videos, format="hmdb51", **TASK)
    with pytest.raises(ValueError, match=r"train does not exist: .*--splits DIR"):
        ActionTask(hmdb_videos, **TASK)
    with pytest.raises(ValueError, match="holds neither UCF101 split files .* nor HMDB51 split files"):
        ActionTask(hmdb_videos, splits=tmp_path, **TASK)
    mixed = tmp_path / "annotations"  # mmaction2 writes UCF101-style lists beside HMDB51's own files
    shutil.copytree(hmdb_lists, mixed)
    (mixed / "trainlist01.txt").write_text("brush_hair/x.avi 1\n")
    assert ActionTask(hmdb_videos, splits=mixed, ladder=ladder, **TASK).format == "hmdb51"


def _digests(root: Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_ucf101_writer_layout_and_determinism(ucf, tmp_path):
    import av

    videos, lists = ucf
    assert sorted(path.name for path in videos.iterdir()) == sorted(UCF_CLASSES)
    assert (lists / "classInd.txt").read_bytes() == b"1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n"
    assert (lists / "testlist01.txt").read_text().splitlines()[2] == \
        "HandstandPushups/v_HandStandPushups_g01_c01.avi"
    assert all((lists / f"{kind}list0{n}.txt").is_file() for kind in ("train", "test") for n in (1, 2, 3))
    with av.open(str(videos / "Archery" / "v_Archery_g02_c01.avi")) as container:
        stream = container.streams.video[0]
        assert (container.format.name, stream.codec_context.name, stream.width, stream.height) == \
            ("avi", "mpeg4", 64, 48)
        assert sum(1 for _ in container.decode(stream)) == 32
    again = make_synthetic("action", tmp_path / "again", format="ucf101", train=6, val=3, height=48, width=64)
    assert _digests(again) == _digests(videos.parent)
    other = make_synthetic("action", tmp_path / "other", format="ucf101", train=6, val=3, height=48, width=64,
                           seed=1)
    assert _digests(other) != _digests(videos.parent)


def test_make_synthetic_hint_runs(tmp_path, run_cli):
    status, printed, err = run_cli("make-synthetic", "--task", "action", "--format", "ucf101", "--out",
                                   tmp_path / "ucf", "--train", "3", "--val", "3", "--size", "48x64")
    assert status == 0, err
    transcode, experiment = (shlex.split(part) for part in printed.split("try: ")[1].strip().split(" && "))
    assert transcode[:2] == ["codecloop", "transcode"] and experiment[:2] == ["codecloop", "experiment"]
    assert run_cli(*transcode[1:], "--crfs", "0,23,51", "--workers", "2")[0] == 0
    status, _, err = run_cli(*experiment[1:], *FAST, "--epochs", "1", "--max_steps", "1", "--levels", "51",
                             "--retrain_level", "23-51", "--retrain_max_steps", "1", "--out", tmp_path / "run")
    assert status == 0, err
    assert (tmp_path / "run" / "recovery.csv").is_file()
