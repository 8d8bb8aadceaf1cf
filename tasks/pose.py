"""Human pose: COCO keypoints JSON (``annotations/person_keypoints_<split>*.json``), OKS keypoint AP.

Two families:

- ``simplebaseline_<timm encoder>``: top-down on ground-truth boxes. One sample per annotated
  person (crowds and people without a labelled keypoint left out): the view is the person box
  grown by 1.25 to the input's aspect, the network regresses Gaussian heatmaps (sigma 2 heatmap
  pixels), the prediction is each heatmap's peak, its score the mean peak value;
- ``keypointrcnn_resnet50_fpn``: one sample per image, all its people (boxes and keypoints).

Keypoints (and box corners) follow the crop, flip and resize through `fn.coord_transform`; a
flipped sample swaps its left / right keypoint ids (names ``left_*`` / ``right_*``). Targets are
built from the batch's host values and moved to the device in one copy. Predictions are mapped
back to the original image and scored by pycocotools against the JSON's keypoints (OKS AP, AP50,
AP75; COCO's sigmas for its 17 keypoints, 0.05 otherwise). Crowd regions (``iscrowd: 1``) are never
targets; they stay in the evaluation ground truth, where pycocotools ignores what matches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from codecloop.dali_pipes.dense import DenseLayout
from codecloop.dali_pipes.validate import DEFAULT_MAX_IMAGE_PIXELS, ScanPolicy
from codecloop.tasks.coco import CocoSplit, boxes_from_corners, boxes_of, checked_images, has_annotation_file, read_coco
from codecloop.tasks.dense_common import DenseTask, to_device
from codecloop.tasks.dense_metrics import COCO_KEYPOINT_SIGMAS, coco_keypoint_results
from codecloop.tasks.dense_models import check_model_name, model_names, create_pose_model
from codecloop.tasks.layout_errors import choose_format
from codecloop.tasks.registry import register_task
from codecloop.tasks.sample_index import SampleIndex

BOX_GROWTH = 1.25
HEATMAP_SIGMA = 2.0
OTHER_SIGMA = 0.05


def flip_permutation(names: Sequence[str]) -> list[int]:
    """For each keypoint, the id of its mirror image (``left_x`` <-> ``right_x``; others stay)."""
    swapped = [name.replace("left", "\0").replace("right", "left").replace("\0", "right") for name in names]
    return [names.index(name) if name in names else position for position, name in enumerate(swapped)]


def person_category(coco: CocoSplit) -> dict:
    """The split's keypoint category, which must be COCO's person category: another one (a category
    with keypoints named otherwise, or an annotation of another category) is refused, naming it."""
    keypointed = [category for category in coco.categories if category.get("keypoints")]
    if len(keypointed) != 1 or keypointed[0].get("name") != "person":
        found = ", ".join(f"{c.get('name')!r} (id {c.get('id')})" for c in keypointed) or "none"
        raise ValueError(f"{coco.json_path}: the pose task reads the person category's keypoints; keypoint "
                         f"categories found: {found}")
    person = keypointed[0]
    names = {int(category["id"]): category.get("name") for category in coco.categories}
    for annotation in (a for image in coco.annotations.values() for a in image):
        if int(annotation["category_id"]) != int(person["id"]):
            category = int(annotation["category_id"])
            raise ValueError(f"{coco.json_path}: annotation {annotation.get('id')} is of category "
                             f"{names.get(category)!r} (id {category}), not the person category (id {person['id']})")
    return person


def person_region(bbox: Sequence[float], aspect: float) -> tuple[float, float, float, float]:
    """A COCO ``[x, y, w, h]`` grown by `BOX_GROWTH` to width / height = `aspect`, as x0, y0, x1, y1."""
    x, y, w, h = (float(value) for value in bbox)
    center_x, center_y = x + w / 2, y + h / 2
    w, h = max(w, h * aspect, 1.0), max(h, w / aspect, 1.0)
    w, h = BOX_GROWTH * w, BOX_GROWTH * h
    return center_x - w / 2, center_y - h / 2, center_x + w / 2, center_y + h / 2


def to_image(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """View coordinates ``(..., 2)`` back to the original image through the inverse of ``[M T]`` (2x3)."""
    return (points - matrix[:, 2]) / matrix.diagonal()


class KeypointAccumulator:
    """Ground-truth people and predictions of one evaluation, in original image coordinates."""

    def __init__(self, sigmas: Sequence[float]) -> None:
        self.sigmas, self.ground_truth, self.predictions, self.images = list(sigmas), [], [], set()

    def update(self, people: list[dict[str, np.ndarray]], batch: dict[str, torch.Tensor]) -> None:
        self.images.update(batch["image_id"].tolist())
        for sample, image_id in enumerate(batch["image_id"].tolist()):
            for person in range(int(batch["gt_count"][sample])):
                self.ground_truth.append({"image_id": image_id,
                                          "keypoints": batch["gt_keypoints"][sample, person].cpu().numpy(),
                                          "bbox": batch["gt_bbox"][sample, person].cpu().numpy(),
                                          "area": float(batch["gt_area"][sample, person]),
                                          "iscrowd": int(batch["gt_crowd"][sample, person])})
        self.predictions += people

    def state(self) -> tuple[list, list, set]:
        return self.ground_truth, self.predictions, self.images

    def compute(self, states: Sequence[tuple[list, list, set]]) -> dict[str, float]:
        return self._results(states, 0)[0]

    def replicates(self, states: Sequence[tuple[list, list, set]], resamples: int) -> dict[str, np.ndarray]:
        return self._results(states, resamples)[1]

    def _results(self, states: Sequence[tuple[list, list, set]], resamples: int):
        """OKS AP of every rank's people, over every image evaluated (`coco_keypoint_results`)."""
        return coco_keypoint_results([g for truth, _, _ in states for g in truth],
                                     [p for _, found, _ in states for p in found], self.sigmas, resamples,
                                     sorted(set().union(*(images for _, _, images in states))))


@register_task("pose")
class PoseTask(DenseTask):
    """Keypoint estimation; owns its targets (heatmaps or Keypoint R-CNN's), loss and OKS metrics."""

    primary_metric = "oks_ap"
    higher_is_better = True
    model_help = model_names("pose")
    default_model = "simplebaseline_resnet18"
    config_keys = ("data", "model", "pretrained", "input_size", "crop_size", "min_scale", "strict", "keep_damaged",
                   "max_image_pixels", "format")

    def __init__(self, data: str | Path, model: str = default_model, pretrained: str | None = None,
                 input_size: str | None = None, crop_size: int = 224, min_scale: float = 0.35, strict: bool = False,
                 keep_damaged: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 format: str | None = None) -> None:
        choose_format("pose", Path(data), format, {"coco": lambda root: True})  # the only layout: COCO's
        top_down = check_model_name("pose", model) is not None
        super().__init__(data, input_size, crop_size, min_scale, normalized=top_down,
                         scan_policy=ScanPolicy(strict, keep_damaged, max_image_pixels))
        self.top_down = top_down
        self.model_name, self.pretrained = model, pretrained
        category = person_category(read_coco(self.root, "person_keypoints", "train"))
        self.keypoint_names = list(category["keypoints"])
        self.num_keypoints = len(self.keypoint_names)
        self.flip = torch.tensor(flip_permutation(self.keypoint_names))
        self.sigmas = COCO_KEYPOINT_SIGMAS if self.num_keypoints == 17 else (OTHER_SIGMA,) * self.num_keypoints
        self.layout = DenseLayout(points=True, extras=("visibility",))
        self.memory_format = torch.channels_last if self.top_down else None

    def has_split(self, split: str) -> bool:
        """Whether ``annotations/person_keypoints_<split>*.json`` exists."""
        return has_annotation_file(self.root, "person_keypoints", split)

    def sample_index(self, split: str) -> SampleIndex:
        """People (top-down) or images (Keypoint R-CNN) with keypoints, boxes and the original truth; an
        image that fails the scan is skipped with all its people."""
        coco = read_coco(self.root, "person_keypoints", split)
        person_category(coco)
        images, skipped = checked_images(coco, self.scan_policy)
        files, annotations, truth, counts = [], [], [], {"images_without_people": 0, **coco.counts}
        aspect = self.geometry.width / self.geometry.height
        for image_id, (path, width, height) in images.items():
            boxes, people = boxes_of(coco.annotations[image_id], width, height, counts)
            crowds = boxes_of(coco.annotations[image_id], width, height, counts, crowd=True)[1]
            keypoints = [np.asarray(p["keypoints"], np.float32).reshape(-1, 3) for p in people]
            if any(len(k) != self.num_keypoints for k in keypoints):
                raise ValueError(f"{coco.json_path}: image {image_id} has a person without {self.num_keypoints} "
                                 f"keypoints")
            counts["images_without_people"] += not people
            groups = [[i] for i, k in enumerate(keypoints) if (k[:, 2] > 0).any()] if self.top_down else [
                list(range(len(people)))]
            for position, group in enumerate(groups):
                files.append(path)
                annotations.append({
                    "region": person_region(people[group[0]]["bbox"], aspect) if self.top_down else None,
                    "points": np.concatenate([np.concatenate([boxes[i].reshape(2, 2), keypoints[i][:, :2]])
                                              for i in group]) if group else np.zeros((0, 2), np.float32),
                    "visibility": np.concatenate([keypoints[i][:, 2] for i in group]).astype(np.int64)
                    if group else np.zeros(0, np.int64),
                })
                crowd_truth = [(np.zeros((self.num_keypoints, 3), np.float32), crowd["bbox"],
                                float(crowd.get("area", 0.0)), True) for crowd in crowds] if position == 0 else []
                truth.append((image_id, [(keypoints[i], people[i]["bbox"], float(people[i].get("area", 0.0)), False)
                                         for i in group] + crowd_truth))
        if not files:
            raise ValueError(f"{coco.json_path} has no person with a labelled keypoint")
        return SampleIndex(split, files, self._truth_tensors(truth), skipped, annotations=annotations, counts=counts)

    def _truth_tensors(self, truth: list[tuple[int, list]]) -> dict[str, torch.Tensor]:
        """Original keypoints, boxes, areas and crowd flags per sample, padded to the most people in a
        sample. An image's crowd regions ride with its first sample: evaluation ground truth, never targets."""
        most = max(1, max(len(people) for _, people in truth))
        keypoints = torch.zeros(len(truth), most, self.num_keypoints, 3)
        bbox, area = torch.zeros(len(truth), most, 4), torch.zeros(len(truth), most)
        crowd = torch.zeros(len(truth), most, dtype=torch.bool)
        for sample, (_, people) in enumerate(truth):
            for person, (points, box, size, is_crowd) in enumerate(people):
                keypoints[sample, person] = torch.from_numpy(points)
                bbox[sample, person] = torch.tensor(box, dtype=torch.float32)
                area[sample, person] = size or box[2] * box[3]
                crowd[sample, person] = is_crowd
        return {"image_id": torch.tensor([image_id for image_id, _ in truth]), "gt_keypoints": keypoints,
                "gt_bbox": bbox, "gt_area": area, "gt_crowd": crowd,
                "gt_count": torch.tensor([len(people) for _, people in truth])}

    def load_targets(self, index: SampleIndex, position: int) -> dict[str, np.ndarray]:
        annotation = index.annotations[position]
        return {"points": annotation["points"], "visibility": annotation["visibility"]}

    def people(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per sample ``{boxes (N, 4), keypoints (N, K, 3)}`` in the view, mirrored ids swapped back
        (host tensors, from the batch's host values)."""
        out = []
        for points, count, visibility, mirror in zip(batch["points"], batch["num_points"].tolist(),
                                                     batch["visibility"], batch["mirror"].tolist()):
            per_person = points[:count].reshape(-1, self.num_keypoints + 2, 2)
            keypoints = torch.cat([per_person[:, 2:], visibility[:len(per_person) * self.num_keypoints]
                                   .reshape(-1, self.num_keypoints, 1).to(points.dtype)], dim=2)
            if mirror:
                keypoints = keypoints[:, self.flip]
            boxes, keep = boxes_from_corners(per_person[:, :2].reshape(-1, 2), self.geometry.height,
                                             self.geometry.width)
            inside = ((keypoints[..., 0] >= 0) & (keypoints[..., 0] < self.geometry.width)
                      & (keypoints[..., 1] >= 0) & (keypoints[..., 1] < self.geometry.height))
            keypoints[..., 2] = torch.where(inside, keypoints[..., 2], torch.zeros_like(keypoints[..., 2]))
            if not self.top_down:  # people the crop cut out leave Keypoint R-CNN's targets
                boxes, keypoints = boxes[keep], keypoints[keep]
            out.append({"boxes": boxes, "keypoints": keypoints})
        return out

    def create_model(self) -> torch.nn.Module:
        """SimpleBaseline or Keypoint R-CNN; `pretrained` is a weights file of its encoder / backbone."""
        return create_pose_model(self.model_name, self.num_keypoints, max(self.geometry.height, self.geometry.width),
                                 pretrained_encoder=self.pretrained)

    def heatmaps(self, keypoints: torch.Tensor, shape: tuple[int, int], stride: float) -> torch.Tensor:
        """Gaussian target heatmaps ``(B, K, h, w)`` of view keypoints ``(B, K, 3)``; zero where not visible."""
        rows = torch.arange(shape[0], device=keypoints.device, dtype=torch.float32)
        cols = torch.arange(shape[1], device=keypoints.device, dtype=torch.float32)
        centers = keypoints[..., :2] / stride - 0.5
        gauss_y = (-(rows - centers[..., 1, None]) ** 2 / (2 * HEATMAP_SIGMA**2)).exp()
        gauss_x = (-(cols - centers[..., 0, None]) ** 2 / (2 * HEATMAP_SIGMA**2)).exp()
        return gauss_y[..., :, None] * gauss_x[..., None, :] * (keypoints[..., 2] > 0)[..., None, None]

    def predict(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        """Heatmaps ``(B, K, h, w)`` (top-down) or Keypoint R-CNN's detections per image."""
        return model(batch["image"]) if self.top_down else model(list(batch["image"]))

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Heatmap MSE over visible keypoints, or Keypoint R-CNN's summed losses."""
        people, device = self.people(batch), batch["image"].device
        if not self.top_down:
            moved = to_device([value for person in people for value in (person["boxes"], person["keypoints"])], device)
            targets = [{"boxes": boxes, "keypoints": keypoints,
                        "labels": torch.ones(len(boxes), dtype=torch.int64, device=device)}
                       for boxes, keypoints in zip(moved[0::2], moved[1::2])]
            losses = model(list(batch["image"]), targets)
            return {"loss": sum(losses.values()), "outputs": None, **losses}
        heatmaps = self.predict(model, batch).float()
        (keypoints,) = to_device([torch.stack([person["keypoints"][0] for person in people])], device)
        target = self.heatmaps(keypoints, heatmaps.shape[-2:], self.geometry.width / heatmaps.shape[-1])
        return {"loss": (heatmaps - target).square().mean(), "outputs": heatmaps}

    def decode(self, outputs, batch: dict[str, torch.Tensor]) -> list[dict]:
        """COCO keypoint results in original image coordinates, one per predicted person (computed on
        the host, where the view's matrices are)."""
        results = []
        if self.top_down:
            heatmaps = outputs.float()
            peaks, where = heatmaps.flatten(2).max(dim=2)
            width = heatmaps.shape[-1]
            stride = self.geometry.width / width
            view = torch.stack([where % width, where // width], dim=2).float().add(0.5).mul(stride).cpu()
            peaks = peaks.cpu()
            people = [(view[i:i + 1], peaks[i:i + 1], peaks[i].clamp_min(0).mean()) for i in range(len(view))]
        else:
            people = [(found["keypoints"][:, :, :2].cpu(), found["keypoints_scores"].sigmoid().cpu(),
                       found["scores"].cpu()) for found in outputs]
        image_ids = batch["image_id"].tolist()
        for sample, (points, confidence, score) in enumerate(people):
            image = to_image(points.float(), batch["points_mt"][sample].float())
            scores = score.reshape(-1).expand(len(points))
            for person in range(len(points)):
                keypoints = torch.cat([image[person], confidence[person, :, None].float()], dim=1)
                results.append({"image_id": image_ids[sample], "keypoints": keypoints.cpu().numpy(),
                                "score": float(scores[person])})
        return results

    def sample_metrics(self, outputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """None: OKS AP is dataset-level (`metric_accumulator`)."""
        return {}

    def metric_accumulator(self) -> "_PoseAccumulator":
        return _PoseAccumulator(self)


class _PoseAccumulator(KeypointAccumulator):
    """Decodes the task's outputs before accumulating them."""

    def __init__(self, task: PoseTask) -> None:
        super().__init__(task.sigmas)
        self.task = task

    def update(self, outputs, batch: dict[str, torch.Tensor]) -> None:
        super().update(self.task.decode(outputs, batch), batch)

