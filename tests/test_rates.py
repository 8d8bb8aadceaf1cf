"""Bits per pixel: measured by real encoders on real photos, cached by file stamp, interpolated at equal rates,
and mapped back to levels for retraining."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision.io import encode_jpeg

from codecloop.dali_pipes import get_codec
from codecloop.dali_pipes import rates as rates_module
from codecloop.dali_pipes.rates import image_rates, levels_at_rates, RateSource
from codecloop.dali_pipes.reference import psnr
from codecloop.trainers.report import equal_rate_rows, metric_at_bpp, read_csv
from tests.conftest import TINY

PHOTOS = {"astronaut": skdata.astronaut, "coffee": skdata.coffee, "chelsea": skdata.chelsea}


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    """Three real photos as lossless PNG files (one at an odd size)."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, load in PHOTOS.items():
        image = load()
        if name == "coffee":
            image = image[:301, :399]
        paths.append(str(folder / f"{name}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def counting(codec):
    """`codec` with an encoder that counts its calls."""
    calls = []

    def encode(image, level):
        calls.append(level)
        return codec.encode(image, level)

    return dataclasses.replace(codec, encode=encode), calls


@pytest.mark.parametrize("name, levels", [("jpeg", [10, 40, 90]), ("webp", [10, 40, 90]), ("avif", [10, 40, 90]),
                                          ("h264", [45, 30, 18]), ("av1", [60, 40, 20])])
def test_rate_and_psnr_fall_as_the_level_worsens(name, levels, photo_files, tmp_path):
    codec = get_codec(name)
    levels = codec.worst_first(levels)
    measured = image_rates(photo_files, codec, levels, data_root=tmp_path)
    rates = [measured[level].bpp for level in levels]
    assert rates == sorted(rates) and rates[0] < rates[-1] / 2, rates
    assert all(measured[level].count == 3 and measured[level].bpp_std > 0 for level in levels)
    image = np.asarray(Image.open(photo_files[0]).convert("RGB"))
    scores = [psnr(image, codec.roundtrip(image, level)) if codec.roundtrip else
              psnr(image, np.asarray(Image.open(io.BytesIO(codec.encode(image, level))).convert("RGB")))
              for level in levels]
    assert scores == sorted(scores), scores


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision.io, deprecated for torchcodec
def test_jpeg_rate_agrees_with_torchvisions_libjpeg(photo_files, tmp_path):
    """An independent encoder (torchvision's encode_jpeg, 4:2:0 libjpeg) gives the same bits per pixel to 3%."""
    measured = image_rates(photo_files, get_codec("jpeg"), [15, 75], data_root=tmp_path)
    for quality in (15, 75):
        per_image = []
        for path in photo_files:
            image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1).contiguous()
            per_image.append(8 * len(encode_jpeg(image, quality=quality)) / (image.shape[1] * image.shape[2]))
        assert measured[quality].bpp == pytest.approx(np.mean(per_image), rel=0.03)
        assert measured[quality].bpp_std == pytest.approx(np.std(per_image, ddof=1), rel=0.1)


def test_rates_are_cached_and_a_changed_file_is_measured_again(photo_files, tmp_path):
    files = [str(tmp_path / f"{i}.png") for i in range(3)]
    for source, target in zip(photo_files, files):
        Image.open(source).save(target)
    codec, calls = counting(get_codec("jpeg"))
    first = image_rates(files, codec, [20, 60], data_root=tmp_path)
    assert sorted(calls) == [20, 20, 20, 60, 60, 60]
    assert list((tmp_path / ".codecloop").glob("rates-jpeg-*.json"))
    calls.clear()
    assert image_rates(files, codec, [20, 60], data_root=tmp_path) == first and calls == []
    image_rates(files, codec, [20, 30], data_root=tmp_path)
    assert calls == [30, 30, 30]  # only the new level
    calls.clear()
    Image.fromarray(np.asarray(Image.open(files[0]))[::2, ::2]).save(files[0])  # other content, other stamp
    changed = image_rates(files, codec, [20], data_root=tmp_path)
    assert calls == [20] and changed[20].bpp != first[20].bpp


def test_a_cache_from_other_encoder_versions_is_rebuilt(photo_files, tmp_path, monkeypatch):
    codec, calls = counting(get_codec("jpeg"))
    image_rates(photo_files[:1], codec, [50], data_root=tmp_path)
    monkeypatch.setattr(rates_module, "encoder_versions", lambda: {"pillow": "0.1", "av": None})
    calls.clear()
    image_rates(photo_files[:1], codec, [50], data_root=tmp_path)
    assert calls == [50]
    cached = json.loads(next((tmp_path / ".codecloop").glob("rates-jpeg-*.json")).read_text())
    assert cached["header"]["encoders"]["pillow"] == "0.1"


def test_rate_images_takes_evenly_spaced_files():
    files = [f"/data/{i:03d}.jpg" for i in range(10)] * 2  # duplicates count once
    assert rates_module.rate_images(files, 4) == ["/data/000.jpg", "/data/003.jpg", "/data/006.jpg", "/data/009.jpg"]
    assert len(rates_module.rate_images(files, None)) == 10


def test_interpolation_at_equal_rate_matches_a_hand_computation():
    points = [(0.2, 0.5), (0.8, 0.9), (3.2, 0.95)]
    # log-linear: 0.4 is halfway between 0.2 and 0.8 in log2 (ln 2 / ln 4), so halfway between 0.5 and 0.9
    assert metric_at_bpp(points, 0.4) == pytest.approx(0.7)
    # 1.6 is halfway between 0.8 and 3.2 in log2
    assert metric_at_bpp(points, 1.6) == pytest.approx(0.925)
    assert metric_at_bpp(points, 0.8) == pytest.approx(0.9)
    assert metric_at_bpp(points, 0.1) is None and metric_at_bpp(points, 4.0) is None
    share = (math.log(0.3) - math.log(0.2)) / (math.log(0.8) - math.log(0.2))
    assert metric_at_bpp(points, 0.3) == pytest.approx(0.5 + share * 0.4)


def test_the_equal_rate_table_names_the_winner():
    rows = [{"codec": "none", "level": "clean", "model": "baseline", "bpp": "", "top1": 0.9}]
    rows += [{"codec": "jpeg", "level": q, "model": "baseline", "bpp": b, "top1": m}
             for q, b, m in ((10, 0.3, 0.4), (50, 1.2, 0.8))]
    rows += [{"codec": "webp", "level": q, "model": "baseline", "bpp": b, "top1": m}
             for q, b, m in ((10, 0.15, 0.5), (50, 0.6, 0.85))]
    table = equal_rate_rows(rows, "top1", [0.2, 0.6, 2.0], higher_is_better=True)
    assert [row["bpp"] for row in table] == [0.2, 0.6, 2.0]
    assert table[0]["jpeg_top1"] is None and table[0]["best"] == ""  # one codec reaches 0.2 bpp: no contest
    assert table[1]["jpeg_top1"] == pytest.approx(0.6) and table[1]["webp_top1"] == pytest.approx(0.85)
    assert table[1]["best"] == "webp"
    assert table[2]["best"] == ""
    assert equal_rate_rows(rows, "top1", [0.6], higher_is_better=False)[0]["best"] == "jpeg"


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_a_bitrate_range_maps_to_the_levels_inside_it(name, photo_files, tmp_path):
    codec = get_codec(name)
    source = RateSource(images=tuple(photo_files), data_root=str(tmp_path))
    spec = levels_at_rates(source, codec, 0.5, 1.5)
    low, high = map(int, spec.split("-"))

    def rate(level):  # independently of the cache: Pillow's encoder on the files
        images = [np.asarray(Image.open(path).convert("RGB")) for path in photo_files]
        return np.mean([8 * len(codec.encode(image, level)) / image.shape[0] / image.shape[1] for image in images])

    assert 0.5 <= rate(low) <= rate(high) <= 1.5
    assert rate(low - 1) < 0.5 and rate(high + 1) > 1.5
    with pytest.raises(ValueError, match=f"no {codec.title} quality has a mean rate in 50-60 bits per pixel"):
        levels_at_rates(source, codec, 50, 60)


def test_several_codecs_sweep_with_rates_and_an_equal_rate_report(run_cli, tmp_path, image_folder):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=3).state_dict(), weights)
    out = tmp_path / "sweep"
    status, _, err = run_cli("sweep", "--data", image_folder, *TINY, "--checkpoint", weights, "--codecs", "jpeg,webp",
                             "--levels", "10,50,90", "--out", out)
    assert status == 0, err
    rows = read_csv(out / "sweep.csv")
    assert [(row["codec"], row["level"]) for row in rows] == [("none", "clean")] + [
        (codec, level) for codec in ("jpeg", "webp") for level in ("10", "50", "90")]
    for codec in ("jpeg", "webp"):
        rates = [float(row["bpp"]) for row in rows if row["codec"] == codec]
        assert rates == sorted(rates) and all(row["bpp_n"] == "15" for row in rows if row["codec"] == codec)
    table = read_csv(out / "equal_rate.csv")
    assert [float(row["bpp"]) for row in table] == [0.1, 0.25, 0.5, 1.0, 2.0]
    assert {"jpeg_top1", "webp_top1", "best"} <= set(table[0])
    report = (out / "report.md").read_text()
    assert report.startswith("# JPEG and WebP sweep") and "top1 at equal bitrate" in report
    assert run_cli("report", out, "--at_bpp", "0.7,1.1")[0] == 0
    assert [float(row["bpp"]) for row in read_csv(out / "equal_rate.csv")] == [0.7, 1.1]


@pytest.mark.parametrize("flags, message", [
    (["--codecs", "jpeg,nope"], "config key 'codecs': unknown codec 'nope'"),
    (["--codecs", "jpeg,webp", "--levels", "0,50"], "JPEG quality spec '0,50': quality 0 is outside 1..100"),
    (["--retrain_bpp", "1-0.1"], "config key 'retrain_bpp': '1-0.1' runs backwards"),
    (["--retrain_bpp", "0.1-1", "--retrain_level", "5-95"], "'retrain_bpp' and 'retrain_level' both"),
    (["--at_bpp", "0,1"], "config key 'at_bpp': bits per pixel must be positive"),
])
def test_bad_rate_settings_stop_before_any_work(run_cli, tmp_path, image_folder, flags, message):
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, *flags, "--out", tmp_path / "run")
    assert status == 2 and message in err, err
    assert not (tmp_path / "run" / "progress.json").exists()


def test_an_experiment_retrains_at_a_bitrate_range(run_cli, tmp_path, image_folder):
    out = tmp_path / "experiment"
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--batch_size", "6", "--epochs", "1",
                             "--levels", "10,50", "--retrain_max_steps", "2", "--retrain_bpp", "0.8-2.0",
                             "--out", out)
    assert status == 0, err
    low, high = map(int, re.search(r"JPEG quality `(\d+)-(\d+)`", (out / "report.md").read_text()).groups())
    files = sorted(str(path) for path in (image_folder / "val").rglob("*.jpg"))
    measured = image_rates(files, get_codec("jpeg"), [low, high], data_root=image_folder)
    assert 0.8 <= measured[low].bpp <= measured[high].bpp <= 2.0
    assert "(the levels whose mean rate is 0.8-2.0 bits per pixel)" in (out / "report.md").read_text()
    assert read_csv(out / "recovery.csv")[0]["bpp"]
