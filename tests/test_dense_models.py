"""Dense-task model factories: output shapes, name validation, local encoder weights (CPU, tiny)."""

from __future__ import annotations

import time

import pytest
import timm
import torch

from codecloop.tasks.dense_models import (
    DETECTION_MODELS,
    POSE_MODELS,
    SEGMENTATION_MODELS,
    PlainHead,
    SimpleBaseline,
    UNet,
    create_depth_model,
    create_detection_model,
    create_pose_model,
    create_segmentation_model,
    load_encoder_weights,
    model_names,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("encoder", ["resnet18", "mobilenetv3_small_050"])
def test_unet_keeps_odd_input_size(encoder: str) -> None:
    model = UNet(encoder, out_channels=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 70, 90))
    assert out.shape == (2, 5, 70, 90)


def test_unet_trains_in_train_mode() -> None:
    model = UNet("efficientnet_lite0", out_channels=2, decoder_channels=(32, 16, 16, 8)).train()
    out = model(torch.randn(2, 3, 64, 96))
    out.mean().backward()
    assert out.shape == (2, 2, 64, 96)
    assert model.encoder.conv_stem.weight.grad is not None


def test_unet_rejects_unknown_encoder_and_short_decoder() -> None:
    with pytest.raises(ValueError, match="not_an_encoder"):
        UNet("not_an_encoder", out_channels=1)
    with pytest.raises(ValueError, match="decoder widths"):
        UNet("resnet18", out_channels=1, decoder_channels=(64, 32))


def test_simplebaseline_heatmaps() -> None:
    model = SimpleBaseline("resnet18", num_keypoints=17, deconv_channels=32).eval()
    assert model.heatmap_stride == 4
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 17, 16, 24)
    two_layers = SimpleBaseline("mobilenetv3_small_050", num_keypoints=3, deconv_channels=16, deconv_layers=2)
    assert two_layers.heatmap_stride == 8


def test_detection_model_eval_and_train() -> None:
    model = create_detection_model("fasterrcnn_mobilenet_v3_large_fpn", num_classes=3, image_size=96).eval()
    images = [torch.rand(3, 96, 96), torch.rand(3, 96, 96)]
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and all({"boxes", "labels", "scores"} <= set(d) for d in detections)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[0.0, 0.0, 30.0, 40.0]]), "labels": torch.tensor([2])}]
    losses = model.train()(images, targets)
    assert "loss_classifier" in losses and all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("name", [n for n in DETECTION_MODELS if n != "fasterrcnn_mobilenet_v3_large_fpn"])
def test_other_detection_models_build(name: str) -> None:
    start = time.perf_counter()
    model = create_detection_model(name, num_classes=4, image_size=128)
    assert time.perf_counter() - start < 10
    if name != "ssdlite320_mobilenet_v3_large":
        assert model.transform.min_size == (128,) and model.transform.max_size == 128


@pytest.mark.parametrize("name, channels", [("lraspp_mobilenet_v3_large", 4), ("unet_resnet18", 3)])
def test_segmentation_logits(name: str, channels: int) -> None:
    model = create_segmentation_model(name, num_classes=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert isinstance(out, torch.Tensor) and out.shape == (2, channels, 64, 96)


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "fcn_resnet50"])
def test_resnet50_segmentation_builds_without_aux(name: str) -> None:
    model = create_segmentation_model(name, num_classes=5)
    assert model.model.aux_classifier is None


def test_depth_is_positive() -> None:
    model = create_depth_model("unet_mobilenetv3_small_050").eval()
    with torch.no_grad():
        depth = model(torch.randn(2, 3, 70, 90))
    assert depth.shape == (2, 70, 90) and depth.dtype == torch.float32
    assert bool((depth > 0).all())


def test_pose_models() -> None:
    model = create_pose_model("simplebaseline_resnet18", num_keypoints=5, image_size=96).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5, 24, 24)
    rcnn = create_pose_model(POSE_MODELS[0], num_keypoints=5, image_size=96)
    assert rcnn.roi_heads.keypoint_predictor.kps_score_lowres.out_channels == 5
    assert rcnn.transform.min_size == (96,)


def test_plain_models_have_no_decoder() -> None:
    """The no-decoder family: one feature map at the encoder's stride, upsampled bilinearly."""
    segmentation = create_segmentation_model("plain_resnet18", num_classes=3).eval()
    assert isinstance(segmentation, PlainHead) and segmentation.encoder.feature_info.reduction() == [8]
    with torch.no_grad():
        assert segmentation(torch.randn(2, 3, 70, 90)).shape == (2, 3, 70, 90)
        pose = create_pose_model("plain_resnet18", num_keypoints=5, image_size=96).eval()
        assert pose(torch.randn(1, 3, 96, 72)).shape == (1, 5, 24, 18)  # stride 4, as SimpleBaseline's
        depth = create_depth_model("plain_mobilenetv3_small_050").eval()(torch.randn(2, 3, 70, 90))
    assert depth.shape == (2, 70, 90) and bool((depth > 0).all())


def test_single_scale_faster_rcnn_uses_the_stride_16_stage() -> None:
    model = create_detection_model("fasterrcnn_c4_resnet18", num_classes=3, image_size=96)
    assert model.backbone.body.feature_info.reduction() == [16]
    features = model.backbone(torch.rand(1, 3, 96, 128))
    assert list(features) == ["0"] and features["0"].shape == (1, 128, 6, 8)
    losses = model.train()([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]),
                                                      "labels": torch.tensor([2])}])
    assert all(torch.isfinite(value) for value in losses.values())
    with pytest.raises(ValueError, match="'fasterrcnn_c4_nope'"):
        create_detection_model("fasterrcnn_c4_nope", 3, 96)


@pytest.mark.parametrize("factory, task, bad", [
    (lambda n: create_detection_model(n, 2, 96), "detection", "yolo_v99"),
    (lambda n: create_segmentation_model(n, 2), "segmentation", "unet_no_such_encoder"),
    (lambda n: create_pose_model(n, 17, 96), "pose", "simplebaseline_no_such_encoder"),
    (lambda n: create_depth_model(n), "depth", "deeplabv3_resnet50"),
    (lambda n: create_depth_model(n), "depth", "plain_no_such_encoder"),
])
def test_unknown_names_list_valid_ones(factory, task: str, bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        factory(bad)
    message = str(caught.value)
    assert repr(bad) in message and model_names(task) in message


def test_model_names() -> None:
    assert model_names("segmentation") == (
        ", ".join(SEGMENTATION_MODELS) + ", unet_<timm encoder> (e.g. unet_resnet18), "
        "plain_<timm encoder> (e.g. plain_resnet18)")
    assert model_names("depth") == ("unet_<timm encoder> (e.g. unet_resnet18), "
                                    "plain_<timm encoder> (e.g. plain_resnet18)")
    assert model_names("detection") == (
        ", ".join(DETECTION_MODELS) + ", fasterrcnn_c4_<timm encoder> (e.g. fasterrcnn_c4_resnet18), "
        "fasterrcnn_<timm encoder> (e.g. fasterrcnn_resnet18)")
    with pytest.raises(ValueError, match="'nope'"):
        model_names("nope")


def test_pretrained_encoder_from_classifier_checkpoint(tmp_path) -> None:
    classifier = timm.create_model("resnet18", pretrained=False, num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(classifier.state_dict(), path)
    expected = classifier.layer2[0].conv1.weight
    unet = create_segmentation_model("unet_resnet18", 3, pretrained_encoder=str(path))
    assert torch.equal(unet.encoder.layer2[0].conv1.weight, expected)
    pose = create_pose_model("simplebaseline_resnet18", 17, 96, pretrained_encoder=str(path))
    assert torch.equal(pose.encoder.layer2[0].conv1.weight, expected)


def test_pretrained_encoder_by_order_when_names_differ(tmp_path) -> None:
    classifier = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "renamed.pth"
    torch.save({f"net.{key}": value for key, value in classifier.state_dict().items()}, path)
    unet = UNet("resnet18", out_channels=1)
    how = load_encoder_weights(unet.encoder, path)
    assert "order" in how
    assert torch.equal(unet.encoder.layer4[1].bn2.running_var, classifier.layer4[1].bn2.running_var)


def test_pretrained_encoder_from_other_architecture_fails(tmp_path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="mobilenet.pth"):
        UNet("resnet18", out_channels=1, pretrained_encoder=str(path))


def test_timm_faster_rcnn_loads_encoder_weights_and_trains(tmp_path):
    encoder = timm.create_model("resnet18", pretrained=False)
    torch.save(encoder.state_dict(), tmp_path / "resnet18.pth")
    model = create_detection_model("fasterrcnn_resnet18", num_classes=3, image_size=96,
                                   pretrained_encoder=tmp_path / "resnet18.pth")
    assert torch.equal(model.backbone.body.state_dict()["layer4.0.conv1.weight"], encoder.layer4[0].conv1.weight)
    assert model.transform.min_size == (96,) and model.backbone.out_channels == 128
    model.train()
    losses = model([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[8.0, 10.0, 40.0, 50.0]]),
                                             "labels": torch.tensor([2])}])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    model.eval()
    with torch.no_grad():
        assert model([torch.rand(3, 96, 96)])[0]["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="'fasterrcnn_nope'"):
        create_detection_model("fasterrcnn_nope", 3, 96)
