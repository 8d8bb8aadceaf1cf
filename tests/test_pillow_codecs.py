"""WebP and AVIF as host codecs (Pillow's encoders): quality orders fidelity on real photos, a missing encoder
stops a run before any work with the install hint, and a run trains and sweeps with them."""

from __future__ import annotations


import numpy as np
import pytest
from skimage import data as skdata

from codecloop.dali_pipes import get_codec
from codecloop.dali_pipes.reference import psnr
from codecloop.trainers.report import read_csv
from tests.conftest import TINY


@pytest.mark.parametrize("name", ["webp", "avif"])
def test_psnr_falls_with_quality_on_real_photos(name):
    codec = get_codec(name)
    for photo in (skdata.astronaut()[:200, :300], skdata.coffee()[:151, :203]):  # odd sizes too
        scores = [psnr(photo, codec.roundtrip(photo, quality)) for quality in (5, 30, 90)]
        assert scores == sorted(scores) and scores[0] < scores[-1] - 3, (name, scores)
        assert codec.roundtrip(photo, 50).shape == photo.shape


def test_a_codec_pillow_lacks_stops_before_any_work(run_cli, tmp_path, image_folder, monkeypatch):
    from PIL import features

    monkeypatch.setattr(features, "check", lambda feature: feature != "avif")
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--codec", "avif", "--level", "30",
                             "--out", tmp_path / "run")
    assert status == 2 and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert "config key 'codec': codec 'avif' cannot run: the installed Pillow" in err and "pip install" in err


def test_webp_trains_and_sweeps(run_cli, tmp_path, image_folder):
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--codec", "webp", "--level", "5-95",
                             "--max_steps", "2", "--batch_size", "6", "--out", tmp_path / "train")
    assert status == 0, err
    status, _, err = run_cli("sweep", "--data", image_folder, *TINY, "--codec", "webp", "--levels", "5,95",
                             "--checkpoint", tmp_path / "train", "--out", tmp_path / "sweep")
    assert status == 0, err
    rows = {row["level"]: row for row in read_csv(tmp_path / "sweep" / "sweep.csv")}
    assert set(rows) == {"clean", "5", "95"} and rows["5"]["codec"] == "webp"
    assert np.isfinite(float(rows["5"]["loss"])) and float(rows["5"]["loss"]) != float(rows["clean"]["loss"])
