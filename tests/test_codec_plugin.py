"""A codec is a plug-in: one object and its registration, here from inside this test file, and codecloop
trains and sweeps with it, touching no project file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from codecloop.dali_pipes import Codec, LevelScale, register_codec, unregister_codec
from codecloop.trainers.report import read_csv
from tests.conftest import TINY


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """Keep the top `bits` bits of every channel value: 8 is the identity, 1 leaves two grey levels."""
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    return image & mask


@pytest.fixture
def posterize_codec():
    codec = register_codec(Codec(name="posterize", title="Posterize", scale=LevelScale("Posterize", "bits", 1, 8),
                                 higher_is_better=True, default_levels=(1, 2, 4), retrain_spec="1-4",
                                 roundtrip=posterize))
    yield codec
    unregister_codec("posterize")


def test_registering_a_name_twice_is_refused(posterize_codec):
    with pytest.raises(ValueError, match="codec 'posterize' is already registered"):
        register_codec(posterize_codec)


def test_a_codec_that_runs_nowhere_is_refused():
    with pytest.raises(ValueError, match="codec 'idle' runs nowhere"):
        Codec(name="idle", title="Idle", scale=LevelScale("Idle", "level", 0, 1), higher_is_better=True,
              default_levels=(1,), retrain_spec="0-1")


def test_a_registered_codec_trains_and_sweeps(posterize_codec, run_cli, image_folder, tmp_path):
    status, _, err = run_cli("train", "--data", image_folder, *TINY, "--codec", "posterize", "--level", "1-4",
                             "--clean_prob", "0.25", "--max_steps", "4", "--batch_size", "6", "--log_every", "1",
                             "--out", tmp_path / "train")
    assert status == 0, err
    steps = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in steps if "codec/level_mean" in record]
    assert len(steps) == 4
    assert all(1 <= record["codec/level_mean"] <= 4 for record in steps if record["codec/clean_frac"] < 1)
    assert all(len(record["codec/level_hist"]) == 10 for record in steps)

    status, _, err = run_cli("sweep", "--data", image_folder, *TINY, "--codec", "posterize", "--levels", "1,8",
                             "--checkpoint", tmp_path / "train", "--out", tmp_path / "sweep")
    assert status == 0, err
    rows = {row["level"]: row for row in read_csv(tmp_path / "sweep" / "sweep.csv")}
    assert set(rows) == {"clean", "1", "8"} and rows["1"]["codec"] == "posterize"
    assert float(rows["8"]["loss"]) == float(rows["clean"]["loss"])  # 8 bits is the identity
    assert float(rows["1"]["loss"]) != float(rows["clean"]["loss"])  # 1 bit is not: the codec ran
    assert (tmp_path / "sweep" / "report.md").read_text().startswith("# Posterize sweep")


def test_a_task_refuses_a_codec_that_cannot_serve_it(posterize_codec, run_cli, tmp_path):
    status, _, err = run_cli("train", "--task", "action", "--data", tmp_path, "--codec", "posterize",
                             "--wandb", "disabled", "--out", tmp_path / "run")
    assert status == 2
    assert ("task 'action' compresses clips from a ladder, which codec 'posterize' cannot (it runs: host); "
            "codecs that can: h264") in err
