"""The one-pass JPEG sweep (each image decoded once, every level in one pipeline) equals one pass per level."""

from __future__ import annotations

import csv

import pytest

from tests.conftest import TINY


def _rows(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("placement", ["native", "after_resize"])
def test_one_pass_sweep_equals_a_pass_per_level(image_folder, tmp_path, run_cli, placement):
    sweeps = {}
    for one_pass in ("true", "false"):
        out = tmp_path / one_pass
        status, _, err = run_cli("sweep", "--data", image_folder, *TINY, "--batch_size", "4", "--levels", "5,20,90",
                                 "--codec_placement", placement, "--one_pass_sweep", one_pass, "--out", out)
        assert status == 0, err
        sweeps[one_pass] = _rows(out / "sweep.csv")
    assert [row["level"] for row in sweeps["true"]] == ["clean", "5", "20", "90"]
    for fast, slow in zip(sweeps["true"], sweeps["false"]):
        assert fast["n"] == slow["n"] == "15"
        assert fast["top1"] == slow["top1"] and fast["top5"] == slow["top5"]
        assert float(fast["loss"]) == pytest.approx(float(slow["loss"]), abs=1e-5)
