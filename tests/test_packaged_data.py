"""Packaged offline assets: the demo teacher, local weight loading, the demo dataset writer."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from codecloop.demo.packaged_data import DEMO_HOLDOUT, packaged_sources, read_photo, write_demo_dataset
from codecloop.demo.teacher import (
    DEMO_TEACHER_ARCH,
    DEMO_TEACHER_CROP,
    DEMO_TEACHER_MEAN,
    DEMO_TEACHER_RESIZE,
    DEMO_TEACHER_STD,
    demo_teacher,
    packaged_efficientnet_lite0_path,
)
from codecloop.tasks.weights import load_pretrained, load_state_dict_by_order

CATS = {281, 282, 285}


def _teacher_input(image: Image.Image) -> torch.Tensor:
    """Resize short side 256 (bicubic), center crop 224, normalize for the teacher."""
    scale = DEMO_TEACHER_RESIZE / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (image.width - DEMO_TEACHER_CROP) // 2, (image.height - DEMO_TEACHER_CROP) // 2
    image = image.crop((left, top, left + DEMO_TEACHER_CROP, top + DEMO_TEACHER_CROP))
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    return (x - torch.tensor(DEMO_TEACHER_MEAN)[:, None, None]) / torch.tensor(DEMO_TEACHER_STD)[:, None, None]


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {s.name: read_photo(s) for s in packaged_sources() if s.name in ("chelsea", "coffee")}


def test_teacher_predicts_cat_and_espresso(photos: dict[str, Image.Image]) -> None:
    """Chelsea: a cat class with Egyptian cat (285) in the top 3; coffee: espresso (967).

    With the weights' own normalization (mean = std = 0.5) tiger cat (282) and Egyptian cat (285)
    are within 0.01 of each other on chelsea, and which wins flips with the resize filter.
    """
    teacher = demo_teacher()
    batch = torch.stack([_teacher_input(photos["chelsea"]), _teacher_input(photos["coffee"])])
    with torch.no_grad():
        probs = teacher(batch).softmax(-1)
    assert int(probs[0].argmax()) in CATS
    assert 285 in probs[0].topk(3).indices.tolist()
    assert float(probs[0, sorted(CATS)].sum()) > 0.8
    assert int(probs[1].argmax()) == 967 and float(probs[1, 967]) > 0.8


def test_checkpoint_from_another_model_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="resnet18.pth.*another model"):
        load_pretrained(timm.create_model(DEMO_TEACHER_ARCH), path)


def test_head_mismatch_loads_the_body() -> None:
    model = timm.create_model(DEMO_TEACHER_ARCH, num_classes=3)
    how = load_pretrained(model, packaged_efficientnet_lite0_path())
    assert "head not loaded" in how and "1000 classes" in how
    reference = demo_teacher()
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(model.bn2.running_var, reference.bn2.running_var)
    assert model.classifier.weight.shape == (3, 1280)


def test_exact_keys_under_module_prefix(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in demo_teacher().state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "wrapped.pth")
    model = timm.create_model(DEMO_TEACHER_ARCH)
    assert load_pretrained(model, tmp_path / "wrapped.pth").startswith("exact keys")
    assert torch.equal(model.classifier.bias, state["module.classifier.bias"])


def test_by_order_without_counters_and_mismatch_message() -> None:
    packaged = torch.load(packaged_efficientnet_lite0_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in packaged.items() if not k.endswith("num_batches_tracked")}
    model = timm.create_model(DEMO_TEACHER_ARCH)
    load_state_dict_by_order(model, state)
    assert torch.equal(model.classifier.weight, state["_fc.weight"])
    state["_blocks.0._depthwise_conv.weight"] = torch.zeros(7)
    with pytest.raises(ValueError, match=r"#5: model 'blocks.0.0.conv_dw.weight'.*\(7,\)"):
        load_state_dict_by_order(model, state)


def test_write_demo_dataset_splits_by_source(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    dataset = write_demo_dataset(root, holdout_frames=8, holdout_crops=1, frames_per_clip_train=3, crops_per_photo=1,
                                 short_side=64)
    with open(root / "sources.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # held out: two clips (8 frames each), the 25 campus and 9 flower photos (whole and one crop each)
    assert dataset.count("val") == 2 * 8 + (25 + 9) * 2 == len(list((root / "val" / "all").glob("*.png")))
    assert dataset.count("train") == len(list((root / "train" / "all").glob("*.png"))) == len(rows) - 84
    train = {r["source"] for r in rows if r["split"] == "train"}
    val = {r["source"] for r in rows if r["split"] == "val"}
    assert val == set(DEMO_HOLDOUT) and not train & val
    assert {"chelsea", "bikes", "carphone", "castle", "penguins"} <= train
    assert not any("campus" in r["path"] or "flowers" in r["path"] or "P10705" in r["path"]
                   for r in rows if r["split"] == "train")
    assert not list(root.rglob("*.tmp"))
    for row in rows[::5]:
        width, height = Image.open(root / row["path"]).size
        assert min(width, height) == 64 and width % 2 == 0 and height % 2 == 0
        assert max(width, height) <= 128
    again = write_demo_dataset(root, holdout_frames=8, holdout_crops=1, frames_per_clip_train=3, crops_per_photo=1,
                               short_side=64)
    assert again.rows == dataset.rows
    with pytest.raises(ValueError, match="held-out source.s. nope not found; packaged here: .*bigbuckbunny"):
        write_demo_dataset(tmp_path / "other", holdout=("nope",))


def test_sequence_layout_writes_one_folder_of_equal_frames_per_source(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    write_demo_dataset(root, holdout=("bikes", "flowers"), holdout_frames=4, holdout_crops=3, frames_per_clip_train=3,
                       crops_per_photo=5, short_side=64, layout="sequences")
    held_out = sorted(path.name for path in (root / "val" / "all").iterdir())
    assert held_out == ["bikes"] + [f"flowers{n}" for n in range(1, 10)]
    assert len(list((root / "val" / "all" / "flowers3").glob("*.png"))) == 3
    folders = sorted(path.name for path in (root / "train" / "all").iterdir())
    assert "bigbuckbunny" in folders and "chelsea" in folders and "bikes" not in folders
    pan = sorted((root / "train" / "all" / "chelsea").glob("*.png"))
    assert len(pan) == 5 and len({Image.open(path).size for path in pan}) == 1
    assert not np.array_equal(np.asarray(Image.open(pan[0])), np.asarray(Image.open(pan[-1])))
    with pytest.raises(ValueError, match="layout 'frames' must be"):
        write_demo_dataset(tmp_path / "other", layout="frames")
