"""Depth in the native layouts of KITTI and NYU Depth v2: detection, metres under each layout's scale, Eigen
split files, the val selection, the scale check (printed line, warning, dropped share) and bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from codecloop.tasks.depth import DepthTask, sample_positions
from codecloop.tasks.layout_errors import MissingFilesError
from codecloop.synthetic.datasets import make_synthetic

SIZE = "48x64"
GROUNDTRUTH = Path("proj_depth") / "groundtruth"
CLI = ["--model", "unet_test_efficientnet", "--input_size", SIZE, "--wandb", "disabled", "--progress", "false",
       "--num_threads", "2", "--batch_size", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, run_cli_module) -> dict[str, Path]:
    """kitti and nyu written through `codecloop make-synthetic` (its hint checked), and the folder layout."""
    root = tmp_path_factory.mktemp("depth-layouts")
    written = {}
    for format in ("kitti", "nyu"):
        status, out, err = run_cli_module("make-synthetic", "--task", "depth", "--format", format, "--out",
                                          root / format, "--train", "12", "--val", "4", "--size", SIZE)
        assert status == 0, err
        assert f"--data {root / format} --format {format}" in out and "--raw" not in out
        written[format] = root / format
    written["folder"] = make_synthetic("depth", root / "folder", train=2, val=2, height=48, width=64)
    return written


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def _png(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float64)


def _split_lines(path: Path) -> list[tuple[str, int, str]]:
    rows = (line.split() for line in path.read_text().splitlines())
    return [(folder, int(frame), side) for folder, frame, side in rows]


# --- detection and metres ---------------------------------------------------------------------------


def test_each_layout_detected_and_format_checked(data):
    for format, root in data.items():
        assert DepthTask(root, input_size=SIZE).format == format
    with pytest.raises(ValueError, match="config key 'format': the depth task reads folder, kitti, nyu; not 'voc'"):
        DepthTask(data["nyu"], format="voc")
    with pytest.raises(FileNotFoundError, match=r"needs the image folder .*images/train"):
        DepthTask(data["kitti"], format="nyu").sample_index("train")


def test_nyu_reads_millimetres_and_prints_the_scale(data, capsys):
    task = DepthTask(data["nyu"], input_size=SIZE)
    assert (task.depth_scale, task.max_depth) == (1000.0, 10.0)
    assert (DepthTask(data["kitti"]).max_depth, DepthTask(data["nyu"], max_depth=8.0).max_depth) == (80.0, 8.0)
    index = task.sample_index("val")
    assert all("/images/test/" in path for path in index.files) and len(index) == 4
    for position, annotation in enumerate(index.annotations):
        assert "/annotations/test/" in annotation["depth"]
        np.testing.assert_allclose(task.load_targets(index, position)["depth"], _png(annotation["depth"]) / 1000,
                                   rtol=1e-6)
    maps = sorted((data["nyu"] / "annotations" / "test").iterdir())
    metres = np.concatenate([_png(path).ravel() / 1000 for path in maps])
    median = np.median(metres[metres > 0])
    assert 1.0 < median < 5.0
    out = capsys.readouterr().out
    assert "depth val: scale 1000 per metre (the nyu layout's default); 4 of 4 depth maps sampled" in out
    assert f"median valid depth {median:.2f} m, 0.0% of valid pixels at or beyond max_depth 10 m" in out


def test_nyu_read_at_the_kitti_scale_warns_with_the_right_scale(data):
    with pytest.warns(UserWarning, match=r"depth scale 256 per metre \(--depth_scale\) looks wrong .*likely "
                                         r"--depth_scale 1000"):
        index = DepthTask(data["nyu"], input_size=SIZE, depth_scale=256, max_depth=10.0).sample_index("train")
    metres = np.concatenate([_png(path).ravel() / 256 for path in (data["nyu"] / "annotations" / "train").iterdir()])
    assert index.counts["sampled_valid_depth_pixels"] == (metres > 1e-3).sum()
    assert index.counts["sampled_depth_pixels_beyond_max_depth"] == (metres >= 10).sum() > 0
    with pytest.warns(UserWarning, match="implausible for a nyu dataset .*likely --depth_scale 1000"):
        DepthTask(data["nyu"], input_size=SIZE, depth_scale=256, max_depth=80.0).sample_index("train")


def test_dropped_share_matches_a_hand_count(tmp_path, capsys):
    """Three 40x48 maps: 1770 px at 2 m, 50 at exactly 10 m, 100 at 12 m | 100 at 50 m, the rest 0 | all 5 m."""
    for folder in ("images/val", "depth/val"):
        (tmp_path / folder).mkdir(parents=True)
    first = np.full(1920, 2.0)
    first[:100], first[100:150] = 12.0, 10.0
    second = np.zeros(1920)
    second[:100] = 50.0
    for name, metres in (("a", first), ("b", second), ("c", np.full(1920, 5.0))):
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(tmp_path / "images" / "val" / f"{name}.png")
        depth = (metres.reshape(40, 48) * 256).astype(np.uint16)
        Image.fromarray(depth).save(tmp_path / "depth" / "val" / f"{name}.png")
    index = DepthTask(tmp_path, input_size=SIZE, max_depth=10.0).sample_index("val")
    assert index.counts["sampled_valid_depth_pixels"] == 1920 + 100 + 1920
    assert index.counts["sampled_depth_pixels_beyond_max_depth"] == 50 + 100 + 100
    assert "median valid depth 5.00 m, 6.3% of valid pixels at or beyond max_depth 10 m" in capsys.readouterr().out


def test_sampled_maps_are_evenly_spaced():
    positions = sample_positions(1000)
    assert len(positions) == 32 and positions[0] == 0 and positions[-1] == 999
    assert max(np.diff(positions)) - min(np.diff(positions)) <= 1
    assert sample_positions(5) == [0, 1, 2, 3, 4] and sample_positions(0) == []


@pytest.mark.parametrize("format", ["kitti", "nyu"])
def test_synthetic_layouts_deterministic_in_the_seed(format, tmp_path):
    def files(seed: int, name: str) -> dict[str, bytes]:
        root = make_synthetic("depth", tmp_path / name, format=format, train=4, val=2, height=32, width=40, seed=seed)
        return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}

    first = files(1, "a")
    assert first == files(1, "b") and first != files(2, "c")
    if format == "nyu":
        assert {Image.open(tmp_path / "a" / name).format for name in first if name.startswith("images/")} == {"JPEG"}
        assert {Image.open(tmp_path / "a" / name).mode for name in first if name.startswith("annotations/")} == {"I;16"}


# --- KITTI ------------------------------------------------------------------------------------------


def test_kitti_tree_pairs_raw_images_and_reads_metres(data):
    root = data["kitti"]
    task = DepthTask(root, input_size=SIZE)
    index = task.sample_index("train")
    assert len(index) == 12
    for position, (image, annotation) in enumerate(zip(index.files, index.annotations)):
        depth = Path(annotation["depth"])
        drive, camera, frame = depth.parents[3].name, depth.parent.name, depth.name
        assert depth.parents[4] == root / "train" and len(depth.stem) == 10
        assert image == str(root / "raw" / drive[:10] / drive / camera / "data" / frame)
        stored = _png(depth)
        assert (stored == 0).mean() > 0.5, "projected LiDAR: most pixels have no measurement"
        np.testing.assert_allclose(task.load_targets(index, position)["depth"], stored / 256)


def test_eigen_split_files_choose_the_samples(data):
    root = data["kitti"]
    task = DepthTask(root, input_size=SIZE, splits=str(root / "splits" / "eigen_zhou"))
    lines = _split_lines(root / "splits" / "eigen_zhou" / "train_files.txt")
    camera = {"l": "image_02", "r": "image_03"}
    annotated = [line for line in lines if line[1] >= 5]
    index = task.sample_index("train")
    assert index.files == [str(root / "raw" / folder / camera[side] / "data" / f"{frame:010d}.png")
                           for folder, frame, side in annotated]
    assert [Path(a["depth"]).parent.name for a in index.annotations] == [camera[side] for _, _, side in annotated]
    assert {"l", "r"} <= {side for _, _, side in annotated}
    assert index.counts["split_lines_without_groundtruth"] == len(lines) - len(annotated) == 2
    test = DepthTask(root, input_size=SIZE, splits=str(root / "splits" / "eigen"))
    assert not test.has_split("train") and test.has_split("val")
    val = test.sample_index("val")
    assert len(val) == 2 and val.counts["split_lines_without_groundtruth"] == 1
    with pytest.raises(FileNotFoundError, match="config key 'splits': .*eigen has no train_files.txt"):
        test.sample_index("train")


def test_raw_images_as_jpeg_and_val_selection_without_raw(data, tmp_path):
    root = _copy(data["kitti"], tmp_path)
    raw = root / "raw" / "2011_09_26" / "2011_09_26_drive_0001_sync" / "image_02" / "data" / "0000000005.png"
    Image.open(raw).convert("RGB").save(raw.with_suffix(".jpg"), quality=95)
    raw.unlink()
    assert str(raw.with_suffix(".jpg")) in DepthTask(root, input_size=SIZE).sample_index("train").files
    shutil.rmtree(root / "val")
    shutil.rmtree(root / "raw")
    task = DepthTask(root, input_size=SIZE)
    index = task.sample_index("val")
    selection = root / "depth_selection" / "val_selection_cropped"
    assert len(index) == 4 and all(path.startswith(str(selection / "image")) for path in index.files)
    for position, (image, annotation) in enumerate(zip(index.files, index.annotations)):
        assert Path(annotation["depth"]).name == Path(image).name.replace("_sync_image_", "_sync_groundtruth_depth_")
        assert Image.open(image).size == Image.open(annotation["depth"]).size == (62, 45)
        np.testing.assert_allclose(task.load_targets(index, position)["depth"], _png(annotation["depth"]) / 256)
    with pytest.raises(FileNotFoundError, match="config key 'raw': the kitti layout reads its images from the KITTI"):
        task.sample_index("train")


# --- bad input --------------------------------------------------------------------------------------


def test_bad_depth_files_name_the_file(data, tmp_path):
    nyu = _copy(data["nyu"], tmp_path)
    depth = nyu / "annotations" / "test" / "bathroom_00001.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(depth)
    with pytest.raises(ValueError, match=f"{depth} is mode L \\(8-bit\\); expected a 16-bit PNG of metres x 1000"):
        DepthTask(nyu, input_size=SIZE).sample_index("val")
    depth.unlink()
    with pytest.raises(MissingFilesError, match=f"names 1 missing depth map\\(s\\) \\(first: {depth}\\)"):
        DepthTask(nyu, input_size=SIZE).sample_index("val")
    kitti = _copy(data["kitti"], tmp_path)
    depth = kitti / "train" / "2011_09_26_drive_0001_sync" / GROUNDTRUTH / "image_03" / "0000000006.png"
    Image.fromarray(np.zeros((30, 40), np.uint16)).save(depth)
    with pytest.raises(ValueError, match=f"{depth} is 40x30, not the size of its image .*0000000006.png \\(64x48\\)"):
        DepthTask(kitti, input_size=SIZE).sample_index("train")


def test_split_file_naming_missing_files(data, tmp_path, run_cli):
    root = _copy(data["kitti"], tmp_path)
    splits = tmp_path / "splits"
    splits.mkdir()
    good = (root / "splits" / "eigen_zhou" / "train_files.txt").read_text()
    absent = [f"2011_09_26/2011_09_26_drive_0099_sync {frame} l\n" for frame in range(10, 14)]
    (splits / "train_files.txt").write_text(good + "".join(absent))
    inside = root / "train" / "2011_09_26_drive_0001_sync" / GROUNDTRUTH / "image_02" / "0000000006.png"
    inside.unlink()  # frames 5 and 7 stay annotated: 6 is missing, not left out by KITTI
    drive = "2011_09_26_drive_0099_sync"
    missing = [str(root / "raw" / "2011_09_26" / drive / "image_02" / "data" / f"{frame:010d}.png")
               for frame in range(10, 14)]
    missing += [str(root / "{train,val}" / drive / GROUNDTRUTH / "image_02" / f"{frame:010d}.png")
                for frame in range(10, 14)]
    missing.append(str(inside))
    with pytest.raises(MissingFilesError, match=r"train_files.txt names 9 missing file\(s\) \(first: .*"
                                                r"`codecloop check-data` .* lists all 9") as caught:
        DepthTask(root, input_size=SIZE, splits=str(splits)).sample_index("train")
    assert sorted(caught.value.missing) == sorted(missing)
    status, out, _ = run_cli("check-data", "--task", "depth", "--data", root, "--splits", splits)
    assert status == 2 and "train_files.txt names 9 missing file(s):" in out and "val: absent" in out
    assert all(f"  {path}\n" in out for path in missing)
    (splits / "train_files.txt").write_text(good + "2011_09_26_drive_0001_sync 5\n")
    with pytest.raises(ValueError, match=r"train_files.txt:\d+: '2011_09_26_drive_0001_sync 5' is not an Eigen split "
                                         r"line '<date>/<drive>_sync <frame> l\|r'"):
        DepthTask(root, input_size=SIZE, splits=str(splits)).sample_index("train")


def test_kitti_keys_refused_elsewhere(data, tmp_path):
    with pytest.raises(ValueError, match="config key 'raw': only the kitti depth layout reads it"):
        DepthTask(data["nyu"], raw=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config key 'splits': .* holds none of the Eigen split files"):
        DepthTask(data["kitti"], splits=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="config key 'raw': .*nowhere is not a folder"):
        DepthTask(data["kitti"], raw=str(tmp_path / "nowhere"))


# --- train -> sweep through the CLI -----------------------------------------------------------------


@pytest.mark.parametrize("format", ["kitti", "nyu"])
def test_train_then_sweep_cli(format, data, tmp_path, run_cli):
    extra = {"kitti": ["--splits", data["kitti"] / "splits" / "eigen"], "nyu": ["--max_depth", "10"]}[format]
    status, out, err = run_cli("train", "--task", "depth", "--data", data[format], *CLI, "--max_steps", "1",
                               "--out", tmp_path / "train", *([] if format == "kitti" else extra))
    assert status == 0, err
    assert f"depth train: scale {256 if format == 'kitti' else 1000} per metre (the {format} layout's default)" in out
    status, out, err = run_cli("sweep", "--task", "depth", "--data", data[format], *CLI, "--checkpoint",
                               tmp_path / "train", "--levels", "10", "--out", tmp_path / "sweep", *extra)
    assert status == 0, err
    with (tmp_path / "sweep" / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["level"] for row in rows] == ["clean", "10"]
    assert all(row["n"] == ("2" if format == "kitti" else "4") for row in rows)
