"""W&B: one offline run per command holding the sweep and recovery tables, their plots and the
artifacts; an unreachable server falls back to offline; a W&B failure never stops the work."""

from __future__ import annotations

import csv
import json
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import TINY

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

BASE = [arg for pair in zip(TINY[::2], TINY[1::2]) if pair[0] != "--wandb" for arg in pair]
BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks of records with 7-byte headers
FULL, LAST = 1, 4


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """Every record of a ``run-*.wandb`` file (what `wandb sync` uploads)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, chunks, offset = [], [], 7
    while offset + 7 <= len(data):
        left = BLOCK - offset % BLOCK
        if left < 7:
            offset += left
            continue
        length, kind = int.from_bytes(data[offset + 4:offset + 6], "little"), data[offset + 6]
        if offset + 7 + length > len(data):  # still being written
            break
        chunks.append(data[offset + 7:offset + 7 + length])
        offset += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def finished_records(path: Path, timeout: float = 30.0) -> list[wandb_internal_pb2.Record]:
    """The records of a finished run file; W&B's service may still be writing it when `finish`
    returns, so wait for its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def logged(records, kind: str) -> dict[str, str]:
    """Flattened ``key -> JSON value`` of every history or summary item."""
    items = {}
    for record in records:
        if record.WhichOneof("record_type") == kind:
            for item in (record.history.item if kind == "history" else record.summary.update):
                items["/".join([item.key] if item.key else item.nested_key)] = item.value_json
    return items


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """W&B offline and silent, its caches and staging under `tmp_path`."""
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path / "wandb-home"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_offline_experiment_is_one_syncable_run_with_tables_and_artifacts(image_folder, tmp_path, run_cli,
                                                                          offline_wandb):
    out = tmp_path / "experiment"
    status, _, err = run_cli("experiment", "--data", image_folder, *BASE, "--wandb", "offline", "--batch_size", "6",
                             "--levels", "10,50", "--retrain_max_steps", "2", "--log_every", "1", "--out", out)
    assert status == 0, err
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # the training stages logged into the command's run
    assert not list(out.glob("*/wandb")), "a training stage opened a W&B run of its own"
    run_files = list(runs[0].glob("run-*.wandb"))
    assert len(run_files) == 1
    run_id = run_files[0].stem.removeprefix("run-")
    records = finished_records(run_files[0])

    history = logged(records, "history")
    for key in ("baseline/train/loss", "baseline/step", "retrain/train/loss", "retrain/codec/level_mean",
                "retrain/eval/top1"):
        assert key in history, key
    assert json.loads(history["sweep/_type"]) == "table-file"
    assert json.loads(history["recovery/_type"]) == "table-file"
    assert json.loads(history["sweep_plot_table/_type"]) == "table-file"  # the line plot's data

    sweep_rows = _rows(out / "sweep.csv")
    table = json.loads((runs[0] / "files" / json.loads(history["sweep/path"])).read_text())
    assert table["columns"] == list(sweep_rows[0])
    columns = [table["columns"].index(name) for name in ("codec", "level", "model")]
    assert [[str(line[column]) for column in columns] for line in table["data"]] == \
        [[row["codec"], row["level"], row["model"]] for row in sweep_rows]
    assert [line[table["columns"].index("bpp")] for line in table["data"]] == \
        pytest.approx([float(row["bpp"]) if row["bpp"] else None for row in sweep_rows])
    assert [line[table["columns"].index("loss")] for line in table["data"]] == \
        pytest.approx([float(row["loss"]) for row in sweep_rows])

    summary = logged(records, "summary")
    clean = next(row for row in sweep_rows if row["model"] == "retrained" and row["level"] == "clean")
    assert float(summary["sweep/retrained/top1_clean"]) == pytest.approx(float(clean["top1"]))

    artifacts = {record.artifact.name: record.artifact for record in records
                 if record.WhichOneof("record_type") == "artifact"}
    report = artifacts[f"{run_id}-report"]
    assert report.type == "report"
    staged = {entry.path: Path(entry.local_path) for entry in report.manifest.contents}
    assert set(staged) >= {"report.md", "sweep.csv", "recovery.csv", "experiment.png", "config.yaml"}
    assert staged["sweep.csv"].read_bytes() == (out / "sweep.csv").read_bytes()  # a staged copy, kept to sync
    model = artifacts[f"{run_id}-model"]
    assert model.type == "model"
    assert {entry.path for entry in model.manifest.contents} == {"baseline/model.safetensors",
                                                                 "retrain/model.safetensors"}


def test_resumed_sweep_continues_its_wandb_run(image_folder, tmp_path, run_cli, offline_wandb, monkeypatch):
    import codecloop.trainers.protocol as protocol

    out = tmp_path / "sweep"
    command = ["sweep", "--data", image_folder, *BASE, "--wandb", "offline", "--levels", "10,50",
               "--one_pass_sweep", "false", "--out", out]
    evaluate = protocol.evaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_cli(*command)
    monkeypatch.setattr(protocol, "evaluate", evaluate)
    status, _, err = run_cli(*command, "--resume", "true")
    assert status == 0, err
    runs = sorted((out / "wandb").glob("offline-run-*"))
    run_files = [next(run.glob("run-*.wandb")) for run in runs]
    assert len(run_files) == 2 and len({path.name for path in run_files}) == 1  # one run id: synced as one run
    assert any("sweep/_type" in logged(finished_records(path), "history") for path in run_files)


def test_unreachable_server_falls_back_to_offline(image_folder, tmp_path, run_cli, offline_wandb, monkeypatch):
    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    monkeypatch.delenv("WANDB_MODE")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="logging offline"):
        status, _, err = run_cli("train", "--data", image_folder, *BASE, "--wandb", "online", "--max_steps", "2",
                                 "--log_every", "1", "--out", out)
    assert status == 0, err
    assert any("train/loss" in json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
    offline = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1
    assert "train/loss" in logged(finished_records(offline[0]), "history")


def test_wandb_failure_mid_run_warns_once_and_logging_goes_on(tmp_path, offline_wandb, monkeypatch):
    from codecloop.trainers.logger import MetricsLogger

    logger = MetricsLogger(tmp_path, {"lr": 0.1}, is_main=True, wandb_mode="offline")
    assert logger.wandb_active

    def broken_table(*args, **kwargs):
        raise RuntimeError("table service down")

    monkeypatch.setattr(wandb, "Table", broken_table)
    with pytest.warns(UserWarning, match="table service down"):
        logger.log_table("sweep", [{"level": 10, "top1": 0.5}], x="level", y="top1")
    assert not logger.wandb_active
    logger.log_artifact("report", "report", [tmp_path / "metrics.jsonl"], tmp_path)
    logger.log({"train/loss": 1.0}, step=1)
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["train/loss"] == 1.0


def test_without_wandb_tables_and_artifacts_are_no_ops(tmp_path):
    from codecloop.trainers.logger import MetricsLogger

    logger = MetricsLogger(tmp_path, {}, is_main=True, wandb_mode="disabled")
    logger.log_table("sweep", [{"level": 10, "top1": 0.5}], x="level", y="top1")
    logger.log_summary({"recovery/mean_pct": 50.0})
    logger.log_artifact("report", "report", [tmp_path], tmp_path)
    logger.close()
    assert not logger.wandb_active and list(tmp_path.iterdir()) == []


def test_table_cells_make_mixed_columns_text():
    from codecloop.trainers.logger import table_cells

    columns, data = table_cells([{"level": "clean", "top1": 0.9}, {"level": 10, "top1": float("nan"), "n": 5}])
    assert columns == ["level", "top1", "n"]
    assert data == [["clean", 0.9, None], ["10", None, 5]]
