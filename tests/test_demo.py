"""`codecloop demo` end to end on the packaged assets, with few fine-tuning steps."""

from __future__ import annotations

import csv

import torch
from safetensors.torch import load_file

from codecloop.demo.teacher import packaged_efficientnet_lite0_path
from codecloop.tasks.classification import ClassificationTask


def test_demo_runs_offline(tmp_path, run_cli):
    out = tmp_path / "demo"
    status, stdout, err = run_cli("demo", "--out", out, "--retrain_steps", "4")
    assert status == 0, err
    assert "agreement with the teacher" in stdout and "recovery_pct" in stdout
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 18 and {row["model"] for row in rows} == {"baseline", "retrained"}
    baseline = {row["level"]: row for row in rows if row["model"] == "baseline"}
    assert float(baseline["clean"]["top1"]) == 1.0  # the teacher agrees with itself on clean input
    with (out / "data" / "holdout.csv").open() as handle:
        holdout = list(csv.DictReader(handle))
    kept = [row for row in holdout if row["kept"] == "1"]
    assert all(float(row["margin"]) >= 0.15 for row in kept)  # margins written to 4 decimals
    assert all(float(row["margin"]) <= 0.15 for row in holdout if row["kept"] == "0")
    assert len(kept) >= 300 and len({row["source"] for row in kept}) >= 3
    assert all(row["n"] == str(len(kept)) for row in rows)
    assert float(baseline["5"]["top1_hi"]) < float(baseline["95"]["top1_lo"])  # intervals apart
    assert float(baseline["95"]["top1"]) > float(baseline["5"]["top1"])  # compression hurts
    assert float(baseline["5"]["kl"]) > float(baseline["95"]["kl"])
    rates = [float(baseline[level]["bpp"]) for level in ("5", "10", "15", "20", "30", "50", "75", "95")]
    assert rates == sorted(rates) and baseline["5"]["bpp_n"] == "256"  # the rate axis: JPEG bpp of the images
    with (out / "recovery.csv").open() as handle:
        recovery = list(csv.DictReader(handle))
    assert [row["level"] for row in recovery] == ["5", "10", "15", "20", "30", "50", "75", "95"]
    for name in ("report.md", "experiment.png", "config.yaml", "data/sources.csv", "data/teacher_outputs.pt",
                 "retrain/model.safetensors"):
        assert (out / name).exists(), name
    tuned = load_file(out / "retrain" / "model.safetensors")
    teacher = ClassificationTask(out / "data", model="tf_efficientnet_lite0", num_classes=1000,
                                 pretrained=str(packaged_efficientnet_lite0_path())).create_model().state_dict()
    changed = {name for name in tuned if not torch.equal(tuned[name], teacher[name])}
    front = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2.")
    assert changed and all(name.startswith(front) for name in changed)  # feature restoration: only the front end
    mixed = load_file(out / "mixed" / "model.safetensors")  # the midpoint of the teacher and the fine-tuned copy
    assert all(torch.allclose(mixed[name], (teacher[name] + tuned[name]) / 2) for name in changed)
    assert all(torch.equal(mixed[name], teacher[name]) for name in mixed if name not in changed)
    status, _, err = run_cli("demo", "--out", out, "--retrain_steps", "1")  # data and teacher cache reused
    assert status == 0, err


def test_h264_demo_runs_offline(tmp_path, run_cli):
    out = tmp_path / "demo"
    status, stdout, err = run_cli("demo", "--codec", "h264", "--out", out, "--retrain_steps", "2")
    assert status == 0, err
    assert "fine-tuning on H.264" in stdout
    with (out / "recovery.csv").open() as handle:
        recovery = list(csv.DictReader(handle))
    assert [row["codec"] for row in recovery] == ["h264"] * 9
    assert [row["level"] for row in recovery] == ["18", "23", "28", "33", "37", "40", "43", "46", "51"]
    baseline = {row["level"]: float(row["baseline_top1"]) for row in recovery}
    assert float(recovery[0]["clean_top1"]) == 1.0  # the teacher agrees with itself on the clean rung
    assert baseline["51"] < baseline["18"]  # compression hurts
    rates = [float(row["bpp"]) for row in recovery]
    assert rates == sorted(rates, reverse=True)  # the ladder rungs' bits per pixel fall as the CRF rises
    assert (out / "ladder" / "manifest.csv").is_file() and (out / "experiment.png").is_file()


def test_demo_codecs_are_checked_before_any_work(tmp_path, run_cli):
    status, _, err = run_cli("demo", "--codecs", "webp,nope", "--out", tmp_path / "demo")
    assert status == 2 and "config key 'codecs': unknown codec 'nope'" in err
    assert not (tmp_path / "demo").exists()
