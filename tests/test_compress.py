"""`compress_dataset`: real JPEG copies of a dataset tree, resumable, never a partial file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFile

from codecloop.dali_pipes import compress
from codecloop.dali_pipes.compress import compress_dataset

SIZE = (64, 48)


def _photo(name: str) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize(SIZE)


def _jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def tree(tmp_path) -> dict:
    """A small ImageFolder-style tree of real photos plus a corrupt, a truncated and a text file."""
    src = tmp_path / "src"
    (src / "cat" / "indoor").mkdir(parents=True)
    (src / "dog").mkdir()
    _photo("chelsea").save(src / "cat" / "chelsea.png")
    _photo("astronaut").save(src / "cat" / "indoor" / "astronaut.PNG")
    _photo("coffee").convert("L").save(src / "cat" / "grey.bmp")
    _photo("rocket").save(src / "dog" / "rocket.png")
    _photo("coffee").convert("RGBA").save(src / "dog" / "coffee.png")
    (src / "dog" / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(4096))
    whole = _jpeg_bytes(_photo("astronaut"))
    (src / "dog" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (src / "notes.txt").write_text("not an image\n")
    expected = {
        "cat/chelsea.jpg",
        "cat/indoor/astronaut.jpg",
        "cat/grey.jpg",
        "dog/rocket.jpg",
        "dog/coffee.jpg",
    }
    return {"src": src, "dst": tmp_path / "dst", "expected": expected}


def _outputs(dst: Path) -> set[str]:
    return {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}


def test_writes_decodable_jpegs_in_same_layout(tree):
    src, dst = tree["src"], tree["dst"]
    report = compress_dataset(src, dst, quality=50, progress=False)
    assert _outputs(dst) == tree["expected"]
    for relative in tree["expected"]:
        with Image.open(dst / relative) as image:
            image.load()
            assert image.format == "JPEG"
            assert image.size == SIZE
    assert report.written == len(tree["expected"])
    assert report.skipped_existing == 0
    assert report.total_pixels == len(tree["expected"]) * SIZE[0] * SIZE[1]
    assert report.total_bytes == sum((dst / r).stat().st_size for r in tree["expected"])
    assert report.bits_per_pixel == pytest.approx(8 * report.total_bytes / report.total_pixels)
    assert report.bits_per_pixel > 0
    assert "bpp" in report.summary()


def test_corrupt_and_truncated_are_failed_with_paths_and_text_is_skipped(tree):
    src = tree["src"]
    report = compress_dataset(src, tree["dst"], quality=50, progress=False)
    failed = {path: reason for path, reason in report.failed}
    assert set(failed) == {src / "dog" / "corrupt.jpg", src / "dog" / "truncated.jpg"}
    assert "truncated" in failed[src / "dog" / "truncated.jpg"]
    assert "cannot identify" in failed[src / "dog" / "corrupt.jpg"]
    assert report.skipped_non_image == [src / "notes.txt"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_opens_lazily_but_fails_to_load(tree):
    with Image.open(tree["src"] / "dog" / "truncated.jpg") as image:
        assert image.size == SIZE
        with pytest.raises(OSError, match="truncated"):
            image.load()


def test_lower_quality_gives_fewer_bits_per_pixel(tree, tmp_path):
    low = compress_dataset(tree["src"], tmp_path / "q10", quality=10, progress=False)
    high = compress_dataset(tree["src"], tmp_path / "q90", quality=90, progress=False)
    assert 0 < low.bits_per_pixel < high.bits_per_pixel


def test_rerun_skips_existing_and_overwrite_rewrites(tree):
    src, dst = tree["src"], tree["dst"]
    first = compress_dataset(src, dst, quality=30, progress=False)
    stamps = {r: (dst / r).stat().st_mtime_ns for r in tree["expected"]}
    again = compress_dataset(src, dst, quality=30, progress=False, workers=1)
    assert again.written == 0
    assert again.skipped_existing == len(tree["expected"])
    assert again.bits_per_pixel == pytest.approx(first.bits_per_pixel)
    assert {r: (dst / r).stat().st_mtime_ns for r in tree["expected"]} == stamps
    forced = compress_dataset(src, dst, quality=90, progress=False, overwrite=True)
    assert forced.written == len(tree["expected"])
    assert forced.bits_per_pixel > first.bits_per_pixel


def test_interrupted_encode_leaves_no_partial_output(tree, monkeypatch):
    src, dst = tree["src"], tree["dst"]
    real_save = compress._save_jpeg
    calls = []

    def save_then_die(image, path, quality, metadata):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(_jpeg_bytes(image)[:100])
            raise RuntimeError("simulated crash mid-encode")
        real_save(image, path, quality, metadata)

    monkeypatch.setattr(compress, "_save_jpeg", save_then_die)
    with pytest.raises(OSError, match="could not write .*simulated crash") as caught:
        compress_dataset(src, dst, quality=50, progress=False, workers=1)
    victim = Path(calls[2]).name.removeprefix(".").rsplit(".tmp-", 1)[0]
    assert victim in str(caught.value)
    written = _outputs(dst)
    assert written < tree["expected"], "only whole outputs, under their final names"
    assert victim not in {Path(name).name for name in written}
    for relative in written:
        with Image.open(dst / relative) as image:
            image.load()

    monkeypatch.setattr(compress, "_save_jpeg", real_save)
    resumed = compress_dataset(src, dst, quality=50, progress=False)
    assert resumed.skipped_existing == len(written)
    assert resumed.written == len(tree["expected"]) - len(written)
    assert _outputs(dst) == tree["expected"]


def test_failed_rename_leaves_no_file_under_final_name(tree, monkeypatch):
    src, dst = tree["src"], tree["dst"]

    def refuse(source, target):
        raise PermissionError(f"refused to rename to {target}")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="could not write"):
        compress_dataset(src, dst, quality=50, progress=False, workers=1)
    assert _outputs(dst) == set()


def test_stray_temp_file_from_a_killed_run_is_not_taken_as_output(tree):
    src, dst = tree["src"], tree["dst"]
    (dst / "cat").mkdir(parents=True)
    stray = dst / "cat" / ".chelsea.jpg.tmp-99999"
    stray.write_bytes(b"\xff\xd8 half a file")
    report = compress_dataset(src, dst, quality=50, progress=False)
    assert report.written == len(tree["expected"])
    assert report.skipped_existing == 0
    with Image.open(dst / "cat" / "chelsea.jpg") as image:
        image.load()


def test_two_sources_for_one_output_are_reported(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _photo("chelsea").save(src / "a.jpg")
    _photo("rocket").save(src / "a.png")
    report = compress_dataset(src, tmp_path / "dst", quality=50, progress=False)
    assert report.written == 1
    assert [path for path, _ in report.failed] == [src / "a.png"]
    assert "a.jpg" in report.failed[0][1]


def test_missing_source_is_named(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        compress_dataset(missing, tmp_path / "dst", quality=50, progress=False)


def test_source_file_is_refused(tmp_path):
    source = tmp_path / "photo.png"
    _photo("chelsea").save(source)
    with pytest.raises(NotADirectoryError, match="photo.png"):
        compress_dataset(source, tmp_path / "dst", quality=50, progress=False)


@pytest.mark.parametrize("quality", [0, 101])
def test_quality_out_of_range_is_named(tree, quality):
    with pytest.raises(ValueError, match=f"got {quality}$"):
        compress_dataset(tree["src"], tree["dst"], quality=quality, progress=False)
    assert not tree["dst"].exists()


def test_destination_inside_source_is_refused(tree):
    with pytest.raises(ValueError, match="inside source"):
        compress_dataset(tree["src"], tree["src"] / "out", quality=50, progress=False)


def test_zero_workers_is_refused(tree):
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        compress_dataset(tree["src"], tree["dst"], quality=50, progress=False, workers=0)
