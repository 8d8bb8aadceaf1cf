"""`codecloop bench`: each CPU mode runs a few iterations and appends well-formed CSV and JSON rows."""

from __future__ import annotations

import csv
import json

import pytest

FAST = ["--images", "12", "--batch_size", "4", "--crop", "48", "--iterations", "2", "--warmup", "1", "--repeats",
        "2", "--threads", "1", "--workers", "1", "--model", "test_efficientnet"]
COLUMNS = ["mode", "device", "precision", "torch", "torchvision", "dali", "cuda", "batch_size", "crop", "images",
           "quality", "model", "iterations", "repeats", "time", "contender", "images_per_sec", "min", "max", "ratio"]


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
        assert float(row["min"]) <= float(row["images_per_sec"]) <= float(row["max"]) and float(row["min"]) > 0
    assert [row["ratio"] for row in rows if row["mode"] == "data"][0] == "1.0"
    train = [row for row in rows if row["mode"] == "train"]
    assert train[1]["ratio"] == "1.0" and 0 < float(train[0]["ratio"])  # codec / clean
    assert rows[-1]["ratio"] == "1.0" and rows[-1]["quality"] == "5,10,15,20,30,50,75,90,95"
    records = json.loads(csv_path.with_suffix(".json").read_text())
    assert [{key: str(value) for key, value in record.items()} for record in records] == rows


@pytest.mark.parametrize("arguments, message", [
    (["--contenders", "pillow-simd"], "unknown contender 'pillow-simd'"),
    (["--quality", "0-50"], "quality 0 is outside 1..100"),
    (["--contenders", "torchvision-nvjpeg"], "no contender could run: skipped torchvision-nvjpeg: needs CUDA"),
])
def test_bench_bad_input(arguments, message, tmp_path, run_cli):
    status, _, err = run_cli("bench", *FAST, *arguments, "--out", tmp_path)
    assert status == 2 and message in err
