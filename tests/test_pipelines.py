"""Image pipelines through the real DALI CPU backend: layout, sharding, codec placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from codecloop.dali_pipes.runtime import PipelineRuntime
from codecloop.dali_pipes import ImageBatches, ImageGeometry, jpeg_roundtrip
from codecloop.dali_pipes.codecs import H264, JPEG

GEOMETRY = ImageGeometry(crop_size=48, resize_size=56)


@pytest.fixture(scope="module")
def png_files(tmp_path_factory) -> list[str]:
    """Lossless sources at their native (odd, varied) sizes, so only the codec stage compresses."""
    folder = tmp_path_factory.mktemp("png")
    paths = []
    for index, name in enumerate(["astronaut", "chelsea", "coffee", "rocket"] * 3):
        photo = getattr(skdata, name)()[: 151 + 10 * index, : 203 + 7 * index]
        path = folder / f"{index:02d}_{name}.png"
        Image.fromarray(photo).save(path)
        paths.append(str(path))
    return paths


def _batches(files, training=False, spec="none", shard_id=0, num_shards=1, **kwargs) -> ImageBatches:
    runtime = PipelineRuntime(batch_size=5, num_threads=2, shard_id=shard_id, num_shards=num_shards)
    return ImageBatches(files, runtime=runtime, training=training,
                        spec=JPEG.parse_spec(spec), codec=JPEG, geometry=GEOMETRY, **kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_batch_layout(png_files, training):
    labels = torch.arange(len(png_files)) * 10
    batches = _batches(png_files, training, "5-95", targets={"label": labels})
    assert len(batches) == 3
    seen = []
    for batch in batches:
        assert batch["image"].dtype == torch.float32 and batch["image"].device.type == "cpu"
        assert batch["image"].shape[1:] == (3, 48, 48)
        assert batch["codec_level"].dtype == torch.int32
        assert ((batch["codec_level"] >= 5) & (batch["codec_level"] <= 95)).all()
        assert torch.equal(batch["label"], batch["index"] * 10)
        seen += batch["index"].tolist()
    if training:  # every training batch is full: the last one repeats the epoch's first samples
        assert set(seen) == set(range(len(png_files))) and len(seen) == 3 * 5
    else:
        assert sorted(seen) == list(range(len(png_files)))
    assert abs(float(batch["image"].mean())) < 3.0  # normalized, not raw 0..255


@pytest.mark.parametrize("num_shards", [2, 3, 5])
def test_eval_shards_count_every_sample_once(png_files, num_shards):
    seen, lengths = [], []
    for shard_id in range(num_shards):
        batches = _batches(png_files, shard_id=shard_id, num_shards=num_shards)
        lengths.append(len(batches))
        seen += [index for batch in batches for index in batch["index"].tolist()]
    assert sorted(seen) == list(range(len(png_files)))
    assert len(set(lengths)) == 1  # every rank runs the same number of batches


def test_codec_runs_at_native_resolution_before_resize(png_files, tmp_path):
    quality = 10
    in_loop = torch.cat([b["image"] for b in _batches(png_files, spec=str(quality))])
    manual_files = []
    for path in png_files:
        compressed = jpeg_roundtrip([np.asarray(Image.open(path).convert("RGB"))], quality)[0]
        manual_files.append(str(tmp_path / Path(path).name))
        Image.fromarray(compressed).save(manual_files[-1])
    manual = torch.cat([b["image"] for b in _batches(manual_files)])
    torch.testing.assert_close(in_loop, manual)
    after_resize = torch.cat([b["image"] for b in _batches(png_files, spec=str(quality),
                             codec_placement="after_resize")])
    clean = torch.cat([b["image"] for b in _batches(png_files)])
    assert not torch.allclose(after_resize, in_loop)
    assert (in_loop - clean).abs().mean() > 0.01


def test_codec_on_the_crop_window_equals_the_whole_image(png_files):
    """The CPU training path compresses only the crop's 16-pixel-grid region (`tile_window`): inside it the
    codec is bit-identical to the whole image's, and the resized crop within one grey level."""
    from nvidia.dali import fn, pipeline_def, types

    from codecloop.dali_pipes.codec import jpeg_stage
    from codecloop.dali_pipes.images import tile_window
    from codecloop.dali_pipes.sample_plan import crop_boxes, uniforms

    sizes = [Image.open(path).size for path in png_files]
    boxes = crop_boxes(uniforms(3, 0, np.arange(len(png_files))), np.array([(0, 0, w, h) for w, h in sizes]), 0.08)
    windows = list(zip(*tile_window(boxes, np.array(sizes), 16)))
    qualities = [np.int32(5 + 7 * i) for i in range(len(png_files))]

    @pipeline_def
    def both():
        encoded, _ = fn.readers.file(files=png_files)
        start, shape, quality = (fn.external_source(source=_fixed(values), batch=True)
                                 for values in ([w[0] for w in windows], [w[1] for w in windows], qualities))
        roi_start, roi_end = (fn.external_source(source=_fixed(values), batch=True) for values in (
            [np.float32([b[1], b[0]]) for b in boxes], [np.float32([b[3], b[2]]) for b in boxes]))
        whole = jpeg_stage(fn.decoders.image(encoded, output_type=types.RGB), quality)
        region = jpeg_stage(fn.decoders.image_slice(encoded, start, shape, axes=[0, 1], output_type=types.RGB), quality)
        offset = fn.cast(start, dtype=types.FLOAT)
        size = [GEOMETRY.crop_size] * 2
        return (fn.slice(whole, start, shape, axes=[0, 1]), region,
                fn.resize(whole, roi_start=roi_start, roi_end=roi_end, size=size, antialias=True),
                fn.resize(region, roi_start=roi_start - offset, roi_end=roi_end - offset, size=size, antialias=True))

    pipe = both(batch_size=len(png_files), num_threads=2, device_id=None, seed=7)
    pipe.build()
    whole, region, whole_crop, region_crop = (
        [np.asarray(out[i]).astype(int) for i in range(len(png_files))] for out in pipe.run())
    for sample in range(len(png_files)):
        assert whole[sample].shape == region[sample].shape
        assert np.array_equal(whole[sample][1:-1, 1:-1], region[sample][1:-1, 1:-1])
        assert np.abs(whole_crop[sample] - region_crop[sample]).max() <= 1
    assert any((window[0] > 0).all() for window in windows)  # some windows start inside the image


def _fixed(batch: list) -> callable:
    """An external source that returns `batch` every time."""
    return lambda: batch


def test_jpeg_and_h264_runs_of_one_seed_see_the_same_crops_and_flips(png_files):
    """The sample plan is one law for every codec: the samples both runs leave clean (the same clean draw) come
    out bit-identical, crops and flips included, though one codec runs in the graph and one on the host."""
    runs = {}
    for codec, spec in ((JPEG, "5-95"), (H264, "18-51")):
        batches = ImageBatches(png_files, runtime=PipelineRuntime(batch_size=4, num_threads=2, seed=11), training=True,
                               spec=codec.parse_spec(spec, clean_prob=0.5), codec=codec, geometry=GEOMETRY,)
        runs[codec.name] = {index: (image, level) for batch in batches
                            for index, image, level in zip(batch["index"].tolist(), batch["image"],
                                                           batch["codec_level"].tolist())}
    clean = [index for index, (_, level) in runs["jpeg"].items() if level == -1]
    assert clean and sorted(clean) == sorted(i for i, (_, level) in runs["h264"].items() if level == -1)
    assert len(clean) < len(png_files)
    for index in clean:
        assert torch.equal(runs["jpeg"][index][0], runs["h264"][index][0]), index
    views = [runs["jpeg"][index][0] for index in clean]
    assert len({view.numpy().tobytes() for view in views}) == len(views)  # distinct crops, not one fixed view


def test_jpeg_roundtrip_checks_its_input():
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="quality 0"):
        jpeg_roundtrip([image], 0)
    with pytest.raises(ValueError, match="2 qualities given for 1 images"):
        jpeg_roundtrip([image], [5, 6])
    with pytest.raises(ValueError, match="expected HxWx3"):
        jpeg_roundtrip([np.zeros((16, 16), np.uint8)], 5)
    assert [out.shape for out in jpeg_roundtrip([image, image[:9, :7]], [5, 90])] == [(16, 16, 3), (9, 7, 3)]
