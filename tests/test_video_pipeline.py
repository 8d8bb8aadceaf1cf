"""The H.264 video pipeline on the CPU path (PyAV decode through DALI's external source)."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes.codecs import H264
from codecloop.dali_pipes.levels import CLEAN_LEVEL
from codecloop.dali_pipes.ladder import SWSCALE_THREADS, load_ladder, transcode
from codecloop.dali_pipes.video import ClipSampling, VideoBatches, VideoGeometry, decode_frames
from tests.videos import moving_frames, write_video

SAMPLING = ClipSampling(frames=4, stride=2)
GEOMETRY = VideoGeometry(crop_size=32, resize_size=40)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """Seven clips of different lengths (5 to 40 frames), at CRFs 0, 23, 40, 51."""
    src = tmp_path_factory.mktemp("videos")
    for index, count in enumerate([40, 30, 20, 12, 8, 6, 5]):
        write_video(src / f"clip{index}.mp4", moving_frames(count, 72, 48, seed=index))
    dst = tmp_path_factory.mktemp("ladder")
    transcode(src, dst, crfs=(0, 23, 40, 51), workers=2, progress=False)
    return load_ladder(dst)


def _batches(ladder, spec="none", training=False, sampling=SAMPLING, shard_id=0, num_shards=1,
             **kwargs) -> VideoBatches:
    clips = sorted(ladder.rungs)
    runtime = PipelineRuntime(batch_size=3, num_threads=2, shard_id=shard_id, num_shards=num_shards)
    return VideoBatches(ladder, clips, runtime=runtime, training=training,
                        spec=H264.parse_spec(spec, kwargs.pop("clean_prob", 0.0)), codec=H264, sampling=sampling,
                        geometry=GEOMETRY, targets={"label": torch.arange(len(clips)) * 10}, **kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_batch_layout(ladder, training):
    batches = _batches(ladder, "23-51", training=training)
    assert len(batches) == 3
    seen = []
    for batch in batches:
        assert batch["video"].dtype == torch.float32 and batch["video"].shape[1:] == (3, 4, 32, 32)
        assert batch["codec_level"].dtype == torch.int32 and set(batch["codec_level"].tolist()) <= {23, 40, 51}
        assert torch.equal(batch["label"], batch["index"] * 10)
        seen += batch["index"].tolist()
    if training:  # full batches: the last one repeats the epoch's first clips
        assert set(seen) == set(range(7)) and len(seen) == 3 * 3
    else:
        assert sorted(seen) == list(range(7))
    assert abs(float(batch["video"].mean())) < 3.0


def test_several_clips_per_video_for_evaluation(ladder):
    batch = next(iter(_batches(ladder, sampling=ClipSampling(frames=4, stride=2, clips_per_video=3))))
    assert batch["video"].shape == (3, 3, 3, 4, 32, 32)
    first_clip = batch["video"][0]
    assert not torch.allclose(first_clip[0], first_clip[2])  # spans start at different frames


def test_crf_draws_follow_the_spec(ladder):
    crfs = []
    for epoch in range(12):
        crfs += [crf for batch in _batches(ladder, "30-45", training=True, clean_prob=0.3,
                                           checkpoint=f'{{"epoch": {epoch}, "batch": 0}}')
                 for crf in batch["codec_level"].tolist()]
    assert set(crfs) == {CLEAN_LEVEL, 23, 40}  # 30..45 snaps to the rungs 23 (30) and 40 (31..45)
    assert 0.1 < crfs.count(CLEAN_LEVEL) / len(crfs) < 0.5


def test_clean_is_the_lossless_rung_and_compression_shows(ladder):
    clean = torch.cat([b["video"] for b in _batches(ladder)])
    worst = torch.cat([b["video"] for b in _batches(ladder, "51")])
    same = torch.cat([b["video"] for b in _batches(ladder, "0")])
    assert torch.equal(clean, same)
    assert (clean - worst).abs().mean() > 0.05


@pytest.mark.parametrize("num_shards", [2, 3])
def test_shards_see_every_clip_once(ladder, num_shards):
    seen, lengths = [], []
    for shard_id in range(num_shards):
        batches = _batches(ladder, shard_id=shard_id, num_shards=num_shards)
        lengths.append(len(batches))
        seen += [index for batch in batches for index in batch["index"].tolist()]
    assert sorted(seen) == list(range(7))
    assert len(set(lengths)) == 1


def test_resume_repeats_the_same_draws(ladder):
    full = [batch["video"] for batch in _batches(ladder, "23-51", training=True)]
    resumed = _batches(ladder, "23-51", training=True, checkpoint=b'{"epoch": 0, "batch": 1}')
    rest = [batch["video"] for batch in resumed]
    assert len(rest) == 2
    for expected, actual in zip(full[1:], rest):
        torch.testing.assert_close(actual, expected)
    assert resumed.checkpoint() == b'{"epoch": 1, "batch": 0}'


def test_short_clips_loop():
    assert ClipSampling(frames=4, stride=2).frame_indices(5, None).tolist() == [0, 2, 4, 1]
    assert ClipSampling(frames=3, stride=1, clips_per_video=2).frame_indices(9, None).tolist() == [0, 1, 2, 6, 7, 8]


def test_decode_frames_matches_sequential_decode(ladder):
    path = ladder.path("clip0", 40)
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24", threads=SWSCALE_THREADS) for frame in container.decode(video=0)]
    indices = [33, 17, 18, 2, 39]
    decoded = decode_frames(path, indices, ladder.rung("clip0", 40).fps)
    np.testing.assert_array_equal(decoded, np.stack([frames[i] for i in indices]))


def test_clip_missing_from_the_ladder_is_named(ladder):
    with pytest.raises(ValueError, match="clip 'elsewhere' is not in the ladder"):
        VideoBatches(ladder, ["clip0", "elsewhere"], runtime=PipelineRuntime(batch_size=2), training=False,
                     spec=H264.parse_spec("none"), codec=H264)
    with pytest.raises(ValueError, match="CRF 28 is not a rung"):
        VideoBatches(ladder, ["clip0"], runtime=PipelineRuntime(batch_size=2), training=False,
                     spec=H264.parse_spec("28"), codec=H264)
