"""The CPU reference codec, and the in-loop codec stage's fidelity to it on real photographs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import __version__ as dali_version

from codecloop.dali_pipes.fidelity import (
    DEFAULT_QUALITIES,
    fidelity_table,
    format_markdown,
    main,
    packaged_photos,
)
from codecloop.dali_pipes.reference import encode_jpeg, mean_abs_diff, psnr, reference_jpeg_roundtrip

MAD_BOUND = 5.0  # DALI's own test bound for jpeg_compression_distortion vs a real codec


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return packaged_photos()


@pytest.fixture(scope="module")
def table(photos) -> dict[int, dict]:
    return {row["quality"]: row for row in fidelity_table(photos, DEFAULT_QUALITIES, device="cpu")}


def test_packaged_photos_are_even_rgb_uint8(photos):
    assert {"astronaut", "chelsea", "coffee", "rocket", "china", "flower"} <= set(photos)
    for name, image in photos.items():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert image.shape[0] % 2 == 0 and image.shape[1] % 2 == 0, name
        assert image.std() > 20, f"{name} looks flat, not a photograph"


def test_reference_roundtrip_shape_and_dtype(photos):
    image = photos["chelsea"]
    decoded = reference_jpeg_roundtrip(image, 50)
    assert decoded.shape == image.shape
    assert decoded.dtype == np.uint8
    assert 0 < mean_abs_diff(image, decoded) < 10


def test_reference_roundtrip_odd_size():
    image = np.random.default_rng(0).integers(0, 256, size=(17, 23, 3), dtype=np.uint8)
    assert reference_jpeg_roundtrip(image, 75).shape == (17, 23, 3)


def test_psnr_rises_with_quality(photos):
    image = photos["astronaut"]
    scores = {q: psnr(image, reference_jpeg_roundtrip(image, q)) for q in (5, 50, 95)}
    assert scores[95] > scores[50] > scores[5], scores


def test_encoded_size_rises_with_quality(photos):
    image = photos["coffee"]
    assert len(encode_jpeg(image, 10)) < len(encode_jpeg(image, 90))
    assert encode_jpeg(image, 50)[:2] == b"\xff\xd8"


def test_psnr_of_identical_images_is_inf(photos):
    image = photos["rocket"]
    assert psnr(image, image.copy()) == math.inf
    assert mean_abs_diff(image, image) == 0.0


def test_psnr_known_value():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.full((4, 4, 3), 255, dtype=np.uint8)
    assert psnr(a, b) == pytest.approx(0.0)
    assert mean_abs_diff(a, b) == 255.0


def test_metrics_refuse_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 4, 3), np.uint8))


@pytest.mark.parametrize("quality", [0, 101, -5])
def test_quality_out_of_range_is_named(quality):
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=f"got {quality}$"):
        reference_jpeg_roundtrip(image, quality)
    with pytest.raises(ValueError, match=f"got {quality}$"):
        encode_jpeg(image, quality)


def test_non_integer_quality_is_named():
    with pytest.raises(ValueError, match="got 50.5"):
        encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8), 50.5)


def test_reference_refuses_non_rgb():
    with pytest.raises(ValueError, match="HxWx3"):
        encode_jpeg(np.zeros((8, 8), dtype=np.uint8), 50)


@pytest.mark.parametrize("quality", DEFAULT_QUALITIES)
def test_inloop_stage_matches_reference_within_bound(table, quality):
    row = table[quality]
    assert row["max_mad"] < MAD_BOUND, (
        f"quality {quality}: in-loop vs reference mean abs diff {row['max_mad']:.3f} "
        f"on {row['worst_photo']} exceeds {MAD_BOUND}"
    )
    assert row["mad"] <= row["max_mad"]
    assert abs(row["psnr_inloop"] - row["psnr_reference"]) < 1.0, (
        f"quality {quality}: PSNR in-loop {row['psnr_inloop']:.2f} dB vs "
        f"reference {row['psnr_reference']:.2f} dB"
    )


def test_inloop_psnr_rises_with_quality(table):
    values = [table[q]["psnr_inloop"] for q in DEFAULT_QUALITIES]
    assert values == sorted(values), values


def test_markdown_names_versions_and_hardware(table, photos):
    text = format_markdown(list(table.values()), "test-device", photos)
    assert "test-device" in text
    assert dali_version in text
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        if models:
            assert models[0].split(":", 1)[1].strip() in text
    assert "numpy" in text and "pillow" in text and "python" in text
    assert "| 15 |" in text and "astronaut" in text


def test_main_writes_report_atomically(tmp_path, capsys):
    out = tmp_path / "bench" / "fidelity.md"
    assert main(["--device", "cpu", "--qualities", "50", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "| 50 |" in text and dali_version in text
    assert text == capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["fidelity.md"]
