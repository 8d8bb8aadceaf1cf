"""Quality specs: parsing, errors naming the value, and what the real DALI pipeline draws."""

from __future__ import annotations

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from codecloop.dali_pipes import CLEAN_LEVEL, graph_codec, jpeg_stage
from codecloop.dali_pipes.codecs import JPEG

DRAWS = 2000


@pytest.mark.parametrize(
    ("text", "expected"),
    [("none", ()), ("30", (30,)), ("5-8", (5, 6, 7, 8)), ("15, 5,10,5", (5, 10, 15)), (" 100 ", (100,))],
)
def test_parse_forms(text, expected):
    assert JPEG.parse_spec(text).levels == expected


@pytest.mark.parametrize(
    ("text", "culprit"),
    [("0", "quality 0"), ("101", "quality 101"), ("5-200", "quality 200"), ("abc", "'abc'"),
     ("10-5", "range start 10"), ("5,x", "'x'"), ("-3", "'-3'")],
)
def test_bad_specs_name_the_value(text, culprit):
    with pytest.raises(ValueError, match=culprit.replace("(", r"\(")):
        JPEG.parse_spec(text)


def test_bad_clean_prob_and_levels():
    with pytest.raises(ValueError, match="clean_prob 1.5"):
        JPEG.parse_spec("30", clean_prob=1.5)
    with pytest.raises(ValueError, match="quality 0"):
        JPEG.parse_levels("0,5")
    assert JPEG.parse_levels("50,5,5") == [5, 50]


@pipeline_def(enable_conditionals=True)
def _draw_pipeline(spec):
    noise = fn.random.uniform(range=[0, 255], shape=[16, 16, 3])
    images = fn.reshape(fn.cast(noise, dtype=types.UINT8), layout="HWC")
    compressed, quality = graph_codec(images, spec, jpeg_stage)
    return images, compressed, quality


def _draw(spec_text: str, clean_prob: float = 0.0):
    spec = JPEG.parse_spec(spec_text, clean_prob)
    pipe = _draw_pipeline(spec, batch_size=DRAWS // 4, num_threads=2, device_id=None, seed=7)
    pipe.build()
    originals, outputs, qualities = [], [], []
    for _ in range(4):
        original, compressed, quality = pipe.run()
        qualities.append(np.array(quality.as_tensor()).ravel())
        originals += [np.array(t) for t in original]
        outputs += [np.array(t) for t in compressed]
    return np.concatenate(qualities), originals, outputs


def test_fixed_spec_draws_one_quality():
    qualities, _, _ = _draw("30")
    assert set(qualities.tolist()) == {30}


def test_range_spec_covers_both_ends_uniformly():
    qualities, _, _ = _draw("5-9")
    counts = np.bincount(qualities, minlength=10)[5:10]
    assert set(qualities.tolist()) == {5, 6, 7, 8, 9}
    assert counts.min() > DRAWS / 5 * 0.8, counts


def test_choice_spec_draws_only_listed():
    qualities, _, _ = _draw("5,10,15,30")
    assert set(qualities.tolist()) == {5, 10, 15, 30}


def test_clean_prob_passes_that_share_untouched():
    qualities, originals, outputs = _draw("5-95", clean_prob=0.3)
    clean = qualities == CLEAN_LEVEL
    share = clean.mean()
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / DRAWS), share
    for is_clean, original, output in zip(clean, originals, outputs):
        assert np.array_equal(original, output) == bool(is_clean)
    assert qualities[~clean].min() >= 5 and qualities[~clean].max() <= 95


def test_none_spec_reports_clean():
    qualities, originals, outputs = _draw("none")
    assert set(qualities.tolist()) == {CLEAN_LEVEL}
    assert all(np.array_equal(a, b) for a, b in zip(originals, outputs))
