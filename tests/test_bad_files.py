"""Bad image files found by the scan: decompression-bomb headers, damaged JPEG data, the scan cache.

Every file here is written in its real format: a photo JPEG whose entropy-coded data has flipped
bytes (markers intact), JPEG / PNG headers rewritten to claim 60000x60000 pixels.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from codecloop.dali_pipes import validate
from codecloop.dali_pipes.validate import BadImageError, ScanPolicy, read_facts, scan_images
from tests.conftest import TINY
from tests.datasets import claim_size, damage_jpeg_data, write_photo_jpeg

BOMB_REASON = "image is 60000x60000 = 3,600,000,000 pixels, above max_image_pixels = 178,956,970"


def _bomb_png(path: Path) -> Path:
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(path)
    return claim_size(path, 60000, 60000)


@pytest.fixture(scope="module")
def bad_folder(image_folder, tmp_path_factory) -> dict[str, Path]:
    """The image folder plus a damaged photo JPEG and a JPEG bomb in train/, a PNG bomb in val/."""
    root = tmp_path_factory.mktemp("bad") / "data"
    shutil.copytree(image_folder, root)
    return {"root": root,
            "damaged": damage_jpeg_data(write_photo_jpeg(root / "train" / "chelsea" / "damaged.jpg")),
            "jpeg_bomb": claim_size(write_photo_jpeg(root / "train" / "coffee" / "bomb.jpg", (64, 48)), 60000, 60000),
            "png_bomb": _bomb_png(root / "val" / "astronaut" / "bomb.png")}


def _skipped(out: Path) -> dict[str, str]:
    """Path -> reason of the skipped files logged with the last epoch of a run."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epoch = [record for record in records if "data/skipped_files" in record][-1]
    reasons = dict(line.split(": ", 1) for line in epoch.get("data/skipped_paths", []))
    assert len(reasons) == epoch["data/skipped_files"]
    return reasons


# --- the files themselves ------------------------------------------------------------------------


def test_damaged_jpeg_has_intact_markers_and_libjpeg_warns(tmp_path):
    clean = write_photo_jpeg(tmp_path / "clean.jpg")
    damaged = damage_jpeg_data(write_photo_jpeg(tmp_path / "damaged.jpg"))
    data = damaged.read_bytes()
    assert data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9") and len(data) == clean.stat().st_size
    with Image.open(damaged) as image:  # Pillow decodes it without a word ...
        pixels = np.asarray(image.convert("RGB"))
    assert read_facts(damaged).problem is None  # ... and the header / end-marker checks pass it
    with pytest.raises(ValueError, match="Corrupt JPEG data"):  # libjpeg warns
        simplejpeg.decode_jpeg(data, strict=True)
    with Image.open(clean) as image:  # into partly garbage pixels
        assert np.abs(pixels.astype(int) - np.asarray(image.convert("RGB"))).max() > 100


def test_bomb_headers_claim_the_size_and_keep_their_data(tmp_path):
    jpeg = claim_size(write_photo_jpeg(tmp_path / "bomb.jpg", (64, 48)), 60000, 60000)
    png = _bomb_png(tmp_path / "bomb.png")
    for path, image_format in ((jpeg, "JPEG"), (png, "PNG")):
        facts = read_facts(path)
        assert (facts.format, facts.width, facts.height, facts.problem) == (image_format, 60000, 60000, None)
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)  # what killed the scan before
    result = scan_images([jpeg, png], cache=False)
    assert result.good == [] and [reason for _, reason in result.skipped] == [BOMB_REASON + " (a decompression-bomb "
                                                                               "guard; raise it to keep the file)"] * 2


def test_max_image_pixels_is_the_limit(tmp_path):
    photo = str(write_photo_jpeg(tmp_path / "photo.jpg"))  # 500x375 = 187,500 pixels
    result = scan_images([photo], ScanPolicy(max_image_pixels=187_499), cache=False)
    assert result.skipped[0][1].startswith("image is 500x375 = 187,500 pixels, above max_image_pixels = 187,499")
    assert scan_images([photo], ScanPolicy(max_image_pixels=187_500), cache=False).sizes == {photo: (500, 375)}
    with pytest.raises(BadImageError, match=f"{photo}: image is 500x375 = 187,500 pixels"):
        scan_images([photo], ScanPolicy(strict=True, max_image_pixels=1000), cache=False)


# --- classification end to end -------------------------------------------------------------------


def test_bombs_and_damaged_jpeg_skipped_and_counted(bad_folder, tmp_path, run_cli):
    out = tmp_path / "run"
    status, _, err = run_cli("train", "--data", bad_folder["root"], *TINY, "--batch_size", "4", "--epochs", "1",
                             "--out", out)
    assert status == 0, err
    reasons = _skipped(out)
    assert set(reasons) == {str(bad_folder[name]) for name in ("damaged", "jpeg_bomb", "png_bomb")}
    assert reasons[str(bad_folder["jpeg_bomb"])].startswith(BOMB_REASON)
    assert reasons[str(bad_folder["png_bomb"])].startswith(BOMB_REASON)
    assert reasons[str(bad_folder["damaged"])].startswith("damaged JPEG data: Corrupt JPEG data")


def test_keep_damaged_trains_on_the_damaged_jpeg(bad_folder, tmp_path, run_cli):
    out = tmp_path / "run"
    status, _, err = run_cli("train", "--data", bad_folder["root"], *TINY, "--batch_size", "5", "--epochs", "1",
                             "--keep_damaged", "--out", out)  # 25 train images: no last batch of one
    assert status == 0, err
    assert set(_skipped(out)) == {str(bad_folder["jpeg_bomb"]), str(bad_folder["png_bomb"])}


def test_strict_stops_naming_the_bomb(image_folder, tmp_path, run_cli):
    root = Path(shutil.copytree(image_folder, tmp_path / "data"))
    bomb = claim_size(write_photo_jpeg(root / "train" / "coffee" / "bomb.jpg", (64, 48)), 60000, 60000)
    status, _, err = run_cli("train", "--data", root, *TINY, "--strict", "--out", tmp_path / "run")
    assert status == 2 and f"{bomb}: {BOMB_REASON}" in err, err
    assert "Traceback" not in err and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_strict_stops_naming_the_damaged_jpeg(image_folder, tmp_path, run_cli):
    root = Path(shutil.copytree(image_folder, tmp_path / "data"))
    damaged = damage_jpeg_data(write_photo_jpeg(root / "val" / "chelsea" / "damaged.jpg"))
    status, _, err = run_cli("train", "--data", root, *TINY, "--strict", "--out", tmp_path / "run")
    assert status == 2 and f"{damaged}: damaged JPEG data: Corrupt JPEG data" in err, err


# --- the cache -----------------------------------------------------------------------------------


@pytest.fixture
def counted_decodes(monkeypatch, tmp_path) -> list[str]:
    """Every path the damage check decodes, with the cache in a fresh folder."""
    monkeypatch.setenv("CODECLOOP_CACHE_DIR", str(tmp_path / "cache"))
    decoded, lock, check = [], threading.Lock(), validate.jpeg_damage

    def counting(path):
        with lock:
            decoded.append(str(path))
        return check(path)

    monkeypatch.setattr(validate, "jpeg_damage", counting)
    return decoded


def _folder_of_jpegs(root: Path) -> list[str]:
    paths = [write_photo_jpeg(root / f"photo{i}.jpg", (120 + i, 90)) for i in range(3)]
    paths.append(damage_jpeg_data(write_photo_jpeg(root / "damaged.jpg")))
    truncated = root / "truncated.jpg"
    truncated.write_bytes(paths[0].read_bytes()[:500])
    return [str(path) for path in [*paths, truncated]]


def test_scan_cache_decodes_each_jpeg_once(tmp_path, counted_decodes):
    paths = _folder_of_jpegs(tmp_path / "data")
    first = scan_images(paths)
    assert sorted(counted_decodes) == sorted(paths[:4])  # the truncated file is never decoded
    assert [Path(path).name for path, _ in first.skipped] == ["damaged.jpg", "truncated.jpg"]
    counted_decodes.clear()
    assert scan_images(paths) == first and counted_decodes == []  # a second run reads the verdicts
    stat = os.stat(paths[1])
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a changed file is checked again
    assert scan_images(paths) == first and counted_decodes == [paths[1]]
    kept = scan_images(paths, ScanPolicy(keep_damaged=True))
    assert paths[3] in kept.good and counted_decodes == [paths[1]]
    cache_files = list((tmp_path / "cache" / "scan").iterdir())
    assert sorted(path.suffix for path in cache_files) == [".json", ".lock"]  # no temporary left behind
    payload = json.loads(next(path for path in cache_files if path.suffix == ".json").read_text())
    assert payload["root"] == str(tmp_path / "data") and len(payload["files"]) == 5


def test_concurrent_scans_decode_each_jpeg_once(tmp_path, counted_decodes):
    paths = _folder_of_jpegs(tmp_path / "data")
    results = []
    threads = [threading.Thread(target=lambda: results.append(scan_images(paths, workers=2))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and results[0] == results[1] == results[2]
    assert sorted(counted_decodes) == sorted(paths[:4])


def test_unwritable_cache_is_not_fatal(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CODECLOOP_CACHE_DIR", str(blocker))
    paths = _folder_of_jpegs(tmp_path / "data")
    with pytest.warns(UserWarning, match="image scan cache .* not written"):
        result = scan_images(paths)
    assert len(result.good) == 3 and len(result.skipped) == 2


def test_corrupt_cache_file_is_checked_again(tmp_path, counted_decodes):
    paths = _folder_of_jpegs(tmp_path / "data")
    first = scan_images(paths)
    (cache_file,) = (tmp_path / "cache" / "scan").glob("*.json")
    payload = json.loads(cache_file.read_text())
    payload["files"]["photo0.jpg"] = ["not", "an", "entry"]
    cache_file.write_text(json.dumps(payload))
    counted_decodes.clear()
    assert scan_images(paths) == first and counted_decodes == [paths[0]]  # the bad entry is checked again
    cache_file.write_text('{"version": 1, "files": [')
    counted_decodes.clear()
    with pytest.warns(UserWarning, match="unreadable, checking again"):
        assert scan_images(paths) == first
    assert sorted(counted_decodes) == sorted(paths[:4])
