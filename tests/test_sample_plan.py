"""The sample plan: draws that are a pure function of (seed, epoch, sample), one crop law checked against a
scalar computation written out here, and JPEG and H.264 runs of one seed seeing the same crops and flips."""

from __future__ import annotations

import math

import numpy as np

from codecloop.dali_pipes.codecs import H264, JPEG
from codecloop.dali_pipes import PipelineRuntime
from codecloop.dali_pipes.sample_plan import CROP, CROP_TRIES, SamplePlan, crop_boxes, uniforms
from codecloop.tasks.segmentation import SegmentationTask
from codecloop.synthetic.datasets import make_synthetic


def _epoch(plan: SamplePlan, epoch: int) -> dict[int, np.ndarray]:
    """Each real sample of one epoch on this plan's rank with its draws."""
    seen = {}
    for batch in range(plan.batches_per_epoch()):
        planned = plan.batch(epoch, batch)
        for sample, valid, draws in zip(planned.samples, planned.valid, planned.draws):
            if valid:
                seen.setdefault(int(sample), draws)
    return seen


def test_draws_are_the_samples_own_whatever_the_world_size():
    alone = _epoch(SamplePlan(101, training=True, batch_size=8, seed=5), epoch=2)
    shards = [SamplePlan(101, training=True, batch_size=8, shard_id=rank, num_shards=3, seed=5) for rank in range(3)]
    together = {}
    for plan in shards:
        together.update(_epoch(plan, epoch=2))
    assert sorted(alone) == sorted(together) == list(range(101))
    for sample, draws in alone.items():
        np.testing.assert_array_equal(draws, together[sample])
    assert {plan.batches_per_epoch() for plan in shards} == {5}
    other_epoch = _epoch(SamplePlan(101, training=True, batch_size=8, seed=5), epoch=3)
    assert not np.array_equal(other_epoch[0], alone[0])
    values = uniforms(5, 2, np.arange(20000))
    assert 0 <= values.min() and values.max() < 1 and abs(values.mean() - 0.5) < 0.005


def test_evaluation_keeps_the_order_and_pads_with_invalid_slots():
    plan = SamplePlan(10, training=False, batch_size=4, shard_id=1, num_shards=3)
    samples, valid = plan.shard(0)
    assert samples.tolist() == [1, 4, 7, 0] and valid.tolist() == [True, True, True, False]


def _crop_by_hand(draws: np.ndarray, region: tuple[float, float, float, float], min_scale: float):
    x0, y0, x1, y1 = region
    for attempt in range(CROP_TRIES):
        area_draw, aspect_draw, left_draw, top_draw = draws[CROP + 4 * attempt:CROP + 4 * attempt + 4]
        area = (x1 - x0) * (y1 - y0) * (min_scale + (1 - min_scale) * area_draw)
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * aspect_draw)
        width, height = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if 1 <= width <= x1 - x0 and 1 <= height <= y1 - y0:
            left, top = x0 + (x1 - x0 - width) * left_draw, y0 + (y1 - y0 - height) * top_draw
            return left, top, left + width, top + height
    return region


def test_crop_law_equals_a_scalar_computation():
    draws = uniforms(1, 0, np.arange(300))
    regions = np.array([(0, 0, 640, 480), (10.5, 20, 60, 400), (0, 0, 3, 3)] * 100, np.float64)
    boxes = crop_boxes(draws, regions, 0.08)
    fell_back = 0
    for row, region, box in zip(draws, regions, boxes):
        expected = _crop_by_hand(row, tuple(region), 0.08)
        np.testing.assert_allclose(box, expected, rtol=1e-12, atol=1e-9)
        fell_back += tuple(expected) == tuple(region)
    assert 0 < fell_back < 300  # the thin and the tiny regions do fall back sometimes


def test_jpeg_and_h264_runs_of_one_seed_see_the_same_crops_and_flips(tmp_path):
    root = make_synthetic("segmentation", tmp_path / "shapes", train=12, val=2, height=48, width=64, seed=2)
    task = SegmentationTask(root, input_size="32x48", min_scale=0.3)
    index = task.sample_index("train")
    masks = {}
    for codec, spec in ((JPEG, JPEG.parse_spec("5-95", clean_prob=0.5)), (H264, H264.parse_spec("18-51"))):
        name = codec.name
        batches = task.batches(index, training=True, spec=spec, codec=codec,
                               runtime=PipelineRuntime(batch_size=4, seed=7))
        seen = {}
        for batch in batches:
            for position, mask in zip(batch["index"].tolist(), batch["mask"].cpu().numpy()):
                seen[position] = mask
        masks[name] = seen
    assert sorted(masks["jpeg"]) == sorted(masks["h264"]) == list(range(12))
    for position, mask in masks["jpeg"].items():
        np.testing.assert_array_equal(mask, masks["h264"][position])
    assert len({mask.tobytes() for mask in masks["jpeg"].values()}) == 12
