"""95% paired-bootstrap intervals: the resamples, each metric's replicates against an independent recomputation
on the resampled images, recovery's interval against a hand computation, and the intervals in a sweep's and an
experiment's files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from codecloop.tasks.bootstrap import interval, mean_replicates, resample_counts
from codecloop.tasks.dense_metrics import ConfusionMatrix, coco_box_metrics, coco_box_results
from codecloop.tasks.segmentation import ConfusionAccumulator
from codecloop.trainers.report import NOT_SIGNIFICANT, read_csv, recovery_rows
from tests.conftest import TINY


def test_resamples_are_reproducible_and_draw_every_sample_set_once_per_row():
    first = np.concatenate(list(resample_counts(50, 300)))
    again = np.concatenate(list(resample_counts(50, 300)))
    assert first.shape == (300, 50) and (first.sum(axis=1) == 50).all()
    assert (first == again).all()
    assert (first[:120] == np.concatenate(list(resample_counts(50, 120)))).all()
    assert not (np.concatenate(list(resample_counts(51, 10)))[:, :50] == first[:10]).all()


def test_a_mean_interval_matches_the_normal_approximation_and_leaves_nan_out():
    correct = np.array([1.0] * 320 + [0.0] * 80)
    half_width = 1.96 * math.sqrt(0.8 * 0.2 / 400)
    low, high = interval(mean_replicates(correct, 2000)[:, 0])
    assert low == pytest.approx(0.8 - half_width, abs=0.006) and high == pytest.approx(0.8 + half_width, abs=0.006)
    with_nan = np.concatenate([correct, np.full(40, np.nan)])
    low_nan, high_nan = interval(mean_replicates(with_nan, 2000)[:, 0])
    assert high_nan - low_nan == pytest.approx(high - low, abs=0.01)


def _masks(images: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, (images, 12, 16), generator=generator)
    target[:, :2] = 255  # ignored rows
    logits = torch.randn(images, classes, 12, 16, generator=generator)
    logits.scatter_add_(1, target.clamp_max(classes - 1)[:, None], torch.full((images, 1, 12, 16), 1.5))
    return logits, target


def test_miou_replicates_recount_the_resampled_images():
    classes, images = 4, 7
    logits, target = _masks(images, classes)
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])  # two ranks, each holding samples out of index order
    ranks = []
    for part in (order[:4], order[4:]):
        accumulator = ConfusionAccumulator(classes)
        accumulator.update(logits[part], {"index": part, "mask": target[part]})
        ranks.append(accumulator.state())
    whole = ConfusionMatrix(classes)
    whole.update(logits.argmax(1), target)
    assert ConfusionAccumulator(classes).compute(ranks) == pytest.approx(whole.compute())
    replicates = ConfusionAccumulator(classes).replicates(ranks, 6)
    for row, counts in enumerate(next(resample_counts(images, 6))):
        picks = torch.from_numpy(np.repeat(np.arange(images), counts))
        resampled = ConfusionMatrix(classes)
        resampled.update(logits[picks].argmax(1), target[picks])
        expected = resampled.compute()
        assert replicates["miou"][row] == pytest.approx(expected["miou"])
        assert replicates["pixel_acc"][row] == pytest.approx(expected["pixel_acc"])


def _detections() -> tuple[list[dict], list[dict]]:
    """Five images: ground-truth boxes and detections of mixed quality (misses, a false positive, loose boxes)."""
    truth, found = [], []
    for image in range(5):
        boxes = torch.tensor([[10.0 + image, 10.0, 60.0, 50.0], [70.0, 20.0, 120.0, 90.0 - image]])
        truth.append({"image_id": image, "boxes": boxes, "labels": torch.tensor([1, 2])})
        shift = torch.tensor([[0.0, 0.0, 4.0 * image, 0.0], [3.0 * image, 0.0, 0.0, 0.0]])
        keep = slice(0, 1) if image == 2 else slice(0, 2)
        predicted = (boxes + shift)[keep]
        scores = torch.tensor([0.9 - 0.1 * image, 0.5 + 0.05 * image])[keep]
        labels = torch.tensor([1, 2])[keep]
        if image == 4:
            predicted = torch.cat([predicted, torch.tensor([[150.0, 150.0, 180.0, 190.0]])])
            scores, labels = torch.cat([scores, torch.tensor([0.95])]), torch.cat([labels, torch.tensor([1])])
        found.append({"image_id": image, "boxes": predicted, "scores": scores, "labels": labels})
    return truth, found


def test_coco_ap_replicates_match_pycocotools_on_the_duplicated_images():
    truth, found = _detections()
    metrics, replicates = coco_box_results(truth, found, resamples=5)
    assert metrics == pytest.approx(coco_box_metrics(truth, found))
    for row, counts in enumerate(next(resample_counts(5, 5))):
        copies = [(image, copy) for image in range(5) for copy in range(counts[image])]
        expected = coco_box_metrics([{**truth[image], "image_id": image * 100 + copy} for image, copy in copies],
                                    [{**found[image], "image_id": image * 100 + copy} for image, copy in copies])
        assert replicates["map"][row] == pytest.approx(expected["map"])
        assert replicates["ap50"][row] == pytest.approx(expected["ap50"], nan_ok=True)


def test_recovery_interval_matches_a_hand_computation():
    rows = lambda label, values: [{"codec": "none", "level": "clean", "model": label, "top1": 0.9}] + [
        {"codec": "jpeg", "level": level, "model": label, "top1": value} for level, value in values]
    replicates = {
        ("baseline", "clean"): {"top1": np.array([0.9, 0.8, 0.85, 0.95])},
        ("baseline", "jpeg 10"): {"top1": np.array([0.5, 0.4, 0.45, 0.6])},
        ("retrained", "jpeg 10"): {"top1": np.array([0.7, 0.5, 0.5, 0.8])},
        ("baseline", "jpeg 50"): {"top1": np.array([0.7, 0.6, 0.65, 0.75])},
        ("retrained", "jpeg 50"): {"top1": np.array([0.72, 0.58, 0.66, 0.73])},
    }
    table = recovery_rows(rows("baseline", [(10, 0.5), (50, 0.7)]), rows("retrained", [(10, 0.65), (50, 0.7)]),
                          "top1", replicates)
    # level 10, per resample: (tuned - base) / (clean - base) = 50, 25, 12.5, 57.14 %; numpy's linear percentile
    # of four values: 2.5% at position 0.075, 97.5% at 2.925 of the sorted values.
    assert table[0]["recovery_pct"] == pytest.approx(37.5)
    assert table[0]["recovery_pct_lo"] == pytest.approx(12.5 + 0.075 * 12.5)
    assert table[0]["recovery_pct_hi"] == pytest.approx(50 + 0.925 * (400 / 7 - 50))
    assert table[0]["significance"] == "significant"
    # level 50: 10, -10, 5, -10 %: the interval holds 0
    assert table[1]["recovery_pct_lo"] < 0 < table[1]["recovery_pct_hi"]
    assert table[1]["significance"] == NOT_SIGNIFICANT
    assert "recovery_pct_lo" not in recovery_rows(rows("baseline", [(10, 0.5)]), rows("retrained", [(10, 0.6)]),
                                                  "top1")[0]


def test_sweep_and_experiment_files_carry_intervals(run_cli, tmp_path, image_folder):
    out = tmp_path / "experiment"
    status, _, err = run_cli("experiment", "--data", image_folder, *TINY, "--batch_size", "6", "--epochs", "1",
                             "--levels", "5,50", "--retrain_max_steps", "2", "--bootstrap", "300", "--out", out)
    assert status == 0, err
    sweep = read_csv(out / "sweep.csv")
    for row in sweep:
        assert float(row["top1_lo"]) <= float(row["top1"]) <= float(row["top1_hi"])
        assert float(row["loss_lo"]) <= float(row["loss"]) <= float(row["loss_hi"]) and row["ci_resamples"] == "300"
    assert any(float(row["top1_hi"]) > float(row["top1_lo"]) for row in sweep)
    recovery = read_csv(out / "recovery.csv")
    report = (out / "report.md").read_text()
    assert {"recovery_pct_lo", "recovery_pct_hi", "significance"} <= set(recovery[0])
    assert f"{float(sweep[0]['top1']):.4f} [{float(sweep[0]['top1_lo']):.4f}, {float(sweep[0]['top1_hi']):.4f}]" \
        in report
    assert "Brackets: 95% percentile-bootstrap interval over the 15 evaluation samples (300 resamples" in report
    (out / "recovery.csv").unlink()
    assert run_cli("report", out)[0] == 0
    assert read_csv(out / "recovery.csv") == recovery
    assert run_cli("report", out, "--metric", "loss")[0] == 0  # the loss moves at every level: recovery defined
    by_loss = read_csv(out / "recovery.csv")
    assert all(float(row["recovery_pct_lo"]) <= float(row["recovery_pct"]) <= float(row["recovery_pct_hi"])
               and row["significance"] in ("significant", NOT_SIGNIFICANT) for row in by_loss)
    plain = tmp_path / "plain"
    assert run_cli("sweep", "--data", image_folder, *TINY, "--levels", "50", "--bootstrap", "0", "--out", plain)[0] == 0
    assert "top1_lo" not in read_csv(plain / "sweep.csv")[0]


def _dense_run(root, model: str, clean: np.ndarray, compressed: np.ndarray) -> None:
    """A depth experiment directory as `codecloop experiment` leaves it: abs rel per resample at clean and
    JPEG 5 (the point estimate is the first resample's value)."""
    from codecloop.trainers.progress import save_replicates
    from codecloop.trainers.report import write_csv

    directory = root / f"depth-{model}" / "jpeg"
    directory.mkdir(parents=True)
    write_csv([{"codec": "none", "level": "clean", "model": "baseline", "abs_rel": clean[0]},
               {"codec": "jpeg", "level": "5", "model": "baseline", "abs_rel": compressed[0]},
               {"codec": "none", "level": "clean", "model": "retrained", "abs_rel": clean[0]},
               {"codec": "jpeg", "level": "5", "model": "retrained", "abs_rel": compressed[0]}],
              directory / "sweep.csv")
    write_csv([{"codec": "jpeg", "level": "5", "clean_abs_rel": clean[0], "baseline_abs_rel": compressed[0],
                "retrained_abs_rel": compressed[0], "recovery_pct": 0.0}], directory / "recovery.csv")
    save_replicates(directory, {("baseline", "clean"): {"abs_rel": clean},
                                ("baseline", "jpeg 5"): {"abs_rel": compressed}})


def test_dense_table_shares_and_family_difference_match_a_hand_computation(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("dense_table", Path(__file__).parents[1] / "bench" / "dense_table.py")
    dense_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dense_table)
    rng = np.random.default_rng(0)
    clean = 0.2 + 0.01 * rng.random(400)
    unet, plain = clean * (1.25 + 0.05 * rng.random(400)), clean * (2.0 + 0.1 * rng.random(400))
    _dense_run(tmp_path, "unet_resnet18", clean, unet)
    _dense_run(tmp_path, "plain_resnet18", clean, plain)
    experiments = {}
    for directory in sorted(tmp_path.glob("*-*/*")):
        experiment = dense_table.Experiment(directory)
        experiments[(experiment.task, experiment.model)] = {"jpeg": experiment}
    point, resampled = experiments[("depth", "unet_resnet18")]["jpeg"].kept(["5"])
    assert point == pytest.approx(clean[0] / unet[0])  # an error metric: clean / level, so 80% kept is 0.8
    assert np.allclose(resampled, clean / unet)
    low, high = np.percentile(100 * (clean / unet - clean / plain), [2.5, 97.5])
    row = next(line for line in dense_table.family_differences(experiments) if "| JPEG |" in line)
    assert f"[{low:+.0f}, {high:+.0f}]" in row and "encoder-decoder more resilient" in row
    table = "\n".join(dense_table.resilience_table(experiments))
    assert f"{100 * clean[0] / plain[0]:.0f}% [" in table
    dense_table.keep(experiments, tmp_path / "kept")  # what the tables read, enough to rebuild them
    kept = {key: {"jpeg": dense_table.Experiment(tmp_path / "kept" / f"{key[0]}-{key[1]}" / "jpeg")}
            for key in experiments}
    assert dense_table.family_differences(kept) == dense_table.family_differences(experiments)
    assert dense_table.resilience_table(kept) == dense_table.resilience_table(experiments)
