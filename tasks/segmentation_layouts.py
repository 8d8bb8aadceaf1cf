"""Segmentation datasets in their native layouts: which image and label files pair up, class names, and
the lookup table that turns the values a label PNG stores into class ids.

Layouts (``--format``; detected from the folder in this order when it is not given):

- ``folder``: ``images/<split>/X.*`` with ``masks/<split>/X.png`` (class ids), ``classes.txt``.
- ``cityscapes``: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` (Cityscapes label ids 0..33, mapped to the 19
  train ids by cityscapesScripts' table, 255 = ignore), or ``<stem>_gtFine_labelTrainIds.png`` where it
  exists (preferred, read as is). ``--mask_folder gtCoarse`` reads ``gtCoarse/.../<stem>_gtCoarse_*``.
- ``voc``: ``VOCdevkit/VOC2012/JPEGImages/<name>.jpg`` with ``SegmentationClass/<name>.png`` (palette
  PNG, index = class id, 255 = boundary, ignored), named by ``ImageSets/Segmentation/{train,val}.txt``.
  ``--mask_folder SegmentationClassAug`` trains on SBD's augmented labels (see `VocLayout`).
- ``ade20k``: ADEChallengeData2016's ``images/{training,validation}/*.jpg`` with
  ``annotations/{training,validation}/*.png`` (0 = other, 1..150); ``reduce_zero_label`` (default on)
  makes 0 ignore and shifts k to k-1, as mmsegmentation does.

Why one lookup table per layout: decoding must stay cheap (one numpy gather per label file), and a
value a layout does not define must stop the run naming the file, the value and the class count,
never train on a silently wrong target.
"""

from __future__ import annotations

import csv
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from codecloop.tasks.dense_common import paired_files
from codecloop.tasks.layout_errors import MissingFilesError

IGNORE_INDEX = 255

# cityscapesScripts cityscapesscripts/helpers/labels.py: (name, label id, train id, colour) of the label ids
# a label image holds; 'license plate' (id -1) is never written into one and is left out.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)), ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)), ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)), ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)), ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)), ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)), ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)), ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)), ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)), ("train", 31, 16, (0, 80, 100)), ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)
CITYSCAPES_CLASSES = tuple(name for name, _, train_id, _ in sorted(CITYSCAPES_LABELS, key=lambda row: row[2])
                           if train_id != IGNORE_INDEX)
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
# mmsegmentation's ADE20KDataset class list (ids 1..150 of the stored annotations; 0 is "other objects").
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet", "sidewalk",
    "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water", "painting", "sofa",
    "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp",
    "bathtub", "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand",
    "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
)
ADE20K_OTHER = "other"
ADE20K_SPLITS = {"train": "training", "val": "validation"}
VOC_SPLIT_LISTS = ("trainaug.txt", "train_aug.txt")  # train + SBD - val: mmsegmentation's converter, DeepLab's list
VOC_SBD_EXTRA_LIST = "aug.txt"  # SBD - (train + val), which mmsegmentation reads together with train.txt


@dataclass(frozen=True)
class LabelTable:
    """How the values a label PNG stores become class ids: ``lookup[value]`` is the class id (255 =
    ignore); a value whose ``known[value]`` is False is an error, worded with `kind` and `limits`."""

    lookup: np.ndarray
    known: np.ndarray
    kind: str
    limits: str

    def __post_init__(self) -> None:
        self.lookup.setflags(write=False)  # tables are cached and shared by every sample and thread
        self.known.setflags(write=False)


@functools.lru_cache(maxsize=None)
def id_table(num_classes: int, reduce_zero_label: bool = False) -> LabelTable:
    """Stored values are the class ids 0..num_classes-1 (255 = ignore); with `reduce_zero_label`, 0 is
    ignore and 1..num_classes become 0..num_classes-1 (mmsegmentation's convention for ADE20K)."""
    lookup, known = np.full(256, IGNORE_INDEX, np.uint8), np.zeros(256, bool)
    first = int(reduce_zero_label)
    lookup[first:first + num_classes] = np.arange(num_classes)
    known[:first + num_classes] = known[IGNORE_INDEX] = True
    stored = f"stored ids 1..{num_classes} with reduce_zero_label, 0 and 255 = ignore" if reduce_zero_label \
        else f"ids 0..{num_classes - 1}, 255 = ignore"
    return LabelTable(lookup, known, "class id", f"the {num_classes} classes ({stored})")


@functools.lru_cache(maxsize=None)
def cityscapes_label_id_table(num_classes: int) -> LabelTable:
    """Cityscapes label ids 0..33 to their train ids by cityscapesScripts' table (255 for the ids not trained
    on; a stored 255 stays ignore)."""
    lookup, known = np.full(256, IGNORE_INDEX, np.uint8), np.zeros(256, bool)
    for _, label_id, train_id, _ in CITYSCAPES_LABELS:
        lookup[label_id], known[label_id] = train_id, True
    known[IGNORE_INDEX] = True
    count = len(CITYSCAPES_LABELS)
    return LabelTable(lookup, known, "Cityscapes label id", f"the {count} label ids (0..{count - 1}) that "
                      f"cityscapesScripts' table maps to the {num_classes} classes")


@functools.lru_cache(maxsize=None)
def cityscapes_train_id_table(num_classes: int) -> LabelTable:
    """A ``*_labelTrainIds.png`` holds the train ids themselves (0..18, 255 = ignore)."""
    table = id_table(num_classes)
    return LabelTable(table.lookup.copy(), table.known.copy(), "train id",
                      f"the {num_classes} classes (train ids 0..{num_classes - 1}, 255 = ignore)")


def check_label_mode(path: str, mode: str | None) -> None:
    """Anything but mode L or a palette PNG is an error naming the label file."""
    if mode not in ("L", "P"):
        hint = " (Cityscapes' *_color.png is a rendering for people: read *_labelIds.png)" \
            if path.endswith("_color.png") else ""
        raise ValueError(f"mask {path} is mode {mode}; expected class ids (mode L or a palette PNG){hint}")


def check_label_values(values: np.ndarray, table: LabelTable, path: str) -> None:
    """A stored value (of the sorted distinct `values` of a label file) that `table` does not define is an
    error naming `path`, the value and the classes."""
    unknown = values[~table.known.take(values)]
    if unknown.size:
        raise ValueError(f"mask {path} holds {table.kind} {int(unknown.min())}, beyond {table.limits}")


def read_label_png(path: str) -> np.ndarray:
    """The values of a label PNG as uint8 HxW; anything but mode L or a palette PNG is an error naming it."""
    with Image.open(path) as label:
        check_label_mode(path, label.mode)
        return np.asarray(label, dtype=np.uint8)


def decode_labels(values: np.ndarray, table: LabelTable, path: str) -> np.ndarray:
    """Class ids of a label image through `table` (two 256-entry gathers: a few ms for 2048x1024); a value
    the table does not define names `path`."""
    known = table.known.take(values)
    if not known.all():
        check_label_values(np.unique(values[~known]), table, path)
    return table.lookup.take(values)


@dataclass(frozen=True)
class LabelledImage:
    """One sample: its image, its label file, and the name of the table that decodes the label file."""

    image: str
    mask: str
    table: str = "ids"


class Layout(ABC):
    """A segmentation dataset laid out one way under `root`: its splits, labelled images and class names.

    `stored_names` names the stored ids 0..K-1 in order (before `reduce_zero_label`); `tables` gives the
    lookup tables its `LabelledImage.table` names refer to.
    """

    name = ""
    expected = ""
    mask_folders: tuple[str, ...] = ()
    reduce_zero_label = False

    def __init__(self, root: Path, mask_folder: str | None) -> None:
        self.root = root
        if mask_folder is not None and mask_folder not in self.mask_folders:
            choices = f"one of {', '.join(self.mask_folders)}" if self.mask_folders else "none: it has one label folder"
            raise ValueError(f"config key 'mask_folder': the {self.name} layout takes {choices}; not {mask_folder!r}")
        self.mask_folder = mask_folder or (self.mask_folders[0] if self.mask_folders else None)

    @staticmethod
    @abstractmethod
    def detect(root: Path) -> bool:
        """Whether `root` is laid out this way."""

    @abstractmethod
    def has_split(self, split: str) -> bool:
        """Whether the dataset has `split` ("train" or "val")."""

    @abstractmethod
    def samples(self, split: str) -> list[LabelledImage]:
        """Every labelled image of `split`; files the layout names and the disk lacks are an error."""

    @abstractmethod
    def split_folder(self, split: str) -> Path:
        """Where `split` is read from, for messages."""

    @abstractmethod
    def stored_names(self) -> tuple[list[str], str]:
        """Names of the stored ids in order, and where they come from (for messages); [] when unknown."""

    def tables(self, num_classes: int, reduce_zero_label: bool) -> dict[str, LabelTable]:
        return {"ids": id_table(num_classes, reduce_zero_label)}


class FolderLayout(Layout):
    """``images/<split>/X.*`` with ``masks/<split>/X.png`` and ``classes.txt``: this project's own layout."""

    name = "folder"
    expected = "images/<split>/ and masks/<split>/"

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    def has_split(self, split: str) -> bool:
        return (self.root / "images" / split).is_dir()

    def split_folder(self, split: str) -> Path:
        return self.root / "images" / split

    def samples(self, split: str) -> list[LabelledImage]:
        return [LabelledImage(image, mask) for image, mask in paired_files(self.root, split, "masks", (".png",))]

    def stored_names(self) -> tuple[list[str], str]:
        names_file = self.root / "classes.txt"
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()] \
            if names_file.is_file() else []
        return names, str(names_file)


class CityscapesLayout(Layout):
    """``leftImg8bit/<split>/<city>/`` images with their ``gtFine`` (or ``gtCoarse``) label files."""

    name = "cityscapes"
    expected = "leftImg8bit/<split>/<city>/ beside gtFine/ or gtCoarse/"
    mask_folders = ("gtFine", "gtCoarse")
    image_suffix = "_leftImg8bit.png"

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "leftImg8bit").is_dir()

    def has_split(self, split: str) -> bool:
        return self.split_folder(split).is_dir()

    def split_folder(self, split: str) -> Path:
        return self.root / "leftImg8bit" / split

    def samples(self, split: str) -> list[LabelledImage]:
        """Every ``<city>/<stem>_leftImg8bit.png`` with ``<stem>_<gt>_labelTrainIds.png`` where it exists, else
        ``<stem>_<gt>_labelIds.png``; images without either stop with `MissingFilesError` naming them."""
        folder = self.split_folder(split)
        images = sorted(folder.glob(f"*/*{self.image_suffix}"))
        if not images:
            raise ValueError(f"Cityscapes split {folder} holds no <city>/*{self.image_suffix}")
        samples, unlabelled, missing = [], [], []
        for image in images:
            labels = self.root / self.mask_folder / split / image.parent.name
            stem = f"{image.name[:-len(self.image_suffix)]}_{self.mask_folder}"
            train_ids, label_ids = labels / f"{stem}_labelTrainIds.png", labels / f"{stem}_labelIds.png"
            if train_ids.is_file():
                samples.append(LabelledImage(str(image), str(train_ids), "train_ids"))
            elif label_ids.is_file():
                samples.append(LabelledImage(str(image), str(label_ids), "label_ids"))
            else:
                unlabelled.append(image)
                missing.append(str(label_ids))
        if missing:
            raise MissingFilesError(folder, missing, f"{self.mask_folder} label file",
                                    f"The Cityscapes image {unlabelled[0]} has no label file {missing[0]}: unpack "
                                    f"{self.mask_folder}_trainvaltest.zip next to leftImg8bit/, or pass "
                                    f"--mask_folder for the label folder you have")
        return samples

    def stored_names(self) -> tuple[list[str], str]:
        return list(CITYSCAPES_CLASSES), "the Cityscapes train ids"

    def tables(self, num_classes: int, reduce_zero_label: bool) -> dict[str, LabelTable]:
        if reduce_zero_label:
            raise ValueError("config key 'reduce_zero_label': Cityscapes label ids map to train ids through "
                             "cityscapesScripts' table (0 is already ignore); leave it unset")
        return {"label_ids": cityscapes_label_id_table(num_classes),
                "train_ids": cityscapes_train_id_table(num_classes)}


class VocLayout(Layout):
    """Pascal VOC 2012 segmentation, read through its split lists; `root` may be the folder holding
    VOCdevkit, VOCdevkit itself or VOC2012.

    ``--mask_folder SegmentationClassAug`` (SBD's labels converted to PNG, ids as pixel values) changes
    the train split only: the names of ``ImageSets/Segmentation/trainaug.txt`` (mmsegmentation's
    converter) or ``train_aug.txt`` (DeepLab's list; its ``/JPEGImages/X.jpg /SegmentationClassAug/X.png``
    lines are read by their first path's stem), else ``train.txt`` plus mmsegmentation's ``aug.txt``;
    each label from SegmentationClassAug, or SegmentationClass for an image SBD lacks. val stays the
    official ``val.txt`` with SegmentationClass.
    """

    name = "voc"
    expected = "VOCdevkit/VOC2012/ (or VOC2012/, or the VOC2012 folder itself) holding JPEGImages/ and " \
        "ImageSets/Segmentation/"
    mask_folders = ("SegmentationClass", "SegmentationClassAug")

    def __init__(self, root: Path, mask_folder: str | None) -> None:
        super().__init__(self.devkit_year(root) or root, mask_folder)

    @staticmethod
    def devkit_year(root: Path) -> Path | None:
        """The VOC2012 folder under `root` (itself, ``VOC2012`` or ``VOCdevkit/VOC2012``), if any."""
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "ImageSets" / "Segmentation").is_dir() and (candidate / "JPEGImages").is_dir():
                return candidate
        return None

    @staticmethod
    def detect(root: Path) -> bool:
        return VocLayout.devkit_year(root) is not None

    def _lists(self, split: str) -> list[tuple[Path, str]]:
        """The split files `split` reads, each with the label folder its names take their labels from."""
        lists = self.root / "ImageSets" / "Segmentation"
        if split == "val" or self.mask_folder == "SegmentationClass":
            return [(lists / f"{split}.txt", "SegmentationClass")]
        for name in VOC_SPLIT_LISTS:
            if (lists / name).is_file():
                return [(lists / name, self.mask_folder)]
        if (lists / VOC_SBD_EXTRA_LIST).is_file():
            return [(lists / "train.txt", "SegmentationClass"), (lists / VOC_SBD_EXTRA_LIST, self.mask_folder)]
        raise FileNotFoundError(f"config key 'mask_folder': SegmentationClassAug trains on a list of "
                                f"{' or '.join(VOC_SPLIT_LISTS)} or {VOC_SBD_EXTRA_LIST} in {lists}; none is there "
                                f"(mmsegmentation's tools/dataset_converters/voc_aug.py writes them)")

    def has_split(self, split: str) -> bool:
        """val when ``val.txt`` exists; train always (a missing train list stops the run naming it)."""
        return split == "train" or (self.root / "ImageSets" / "Segmentation" / "val.txt").is_file()

    def split_folder(self, split: str) -> Path:
        return self._lists(split)[0][0]

    def samples(self, split: str) -> list[LabelledImage]:
        """The images each split file names with their labels; named files the disk lacks stop with
        `MissingFilesError` (all of them listed)."""
        samples: dict[str, LabelledImage] = {}
        for split_file, folder in self._lists(split):
            missing = []
            for name in read_voc_split_file(split_file):
                image, mask = self.root / "JPEGImages" / f"{name}.jpg", self._label(name, folder)
                missing += [str(path) for path in (image, mask) if not path.is_file()]
                samples.setdefault(name, LabelledImage(str(image), str(mask)))
            if missing:
                raise MissingFilesError(split_file, missing, "file", f"Unpack them under {self.root}, or point --data "
                                        f"at the folder holding VOCdevkit, at VOCdevkit or at VOC2012")
        if not samples:
            raise ValueError(f"split file {self._lists(split)[0][0]} names no image")
        return list(samples.values())

    def _label(self, name: str, folder: str) -> Path:
        """`folder`'s label file of `name`, or SegmentationClass's where SBD's folder lacks it."""
        label, official = self.root / folder / f"{name}.png", self.root / "SegmentationClass" / f"{name}.png"
        return official if not label.is_file() and official.is_file() else label

    def stored_names(self) -> tuple[list[str], str]:
        return list(VOC_CLASSES), "the Pascal VOC classes"


def read_voc_split_file(path: Path) -> list[str]:
    """Image names of a VOC split list: one name a line, or DeepLab's ``/JPEGImages/X.jpg /Seg.../X.png``."""
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    return [Path(line.split()[0]).stem for line in path.read_text().splitlines() if line.strip()]


class Ade20kLayout(Layout):
    """ADEChallengeData2016: ``images/{training,validation}/*.jpg`` with ``annotations/.../*.png``; `root`
    may be that folder or the one holding it."""

    name = "ade20k"
    expected = "images/training/ and annotations/training/ (in ADEChallengeData2016/ or directly)"
    reduce_zero_label = True
    folder_name = "ADEChallengeData2016"

    def __init__(self, root: Path, mask_folder: str | None) -> None:
        super().__init__(root / self.folder_name if self._holds(root / self.folder_name) else root, mask_folder)

    @staticmethod
    def _holds(root: Path) -> bool:
        return (root / "images" / "training").is_dir() and (root / "annotations" / "training").is_dir()

    @staticmethod
    def detect(root: Path) -> bool:
        return Ade20kLayout._holds(root) or Ade20kLayout._holds(root / Ade20kLayout.folder_name)

    def has_split(self, split: str) -> bool:
        return self.split_folder(split).is_dir()

    def split_folder(self, split: str) -> Path:
        return self.root / "images" / ADE20K_SPLITS[split]

    def samples(self, split: str) -> list[LabelledImage]:
        return [LabelledImage(image, mask)
                for image, mask in paired_files(self.root, ADE20K_SPLITS[split], "annotations", (".png",))]

    def stored_names(self) -> tuple[list[str], str]:
        """"other" and the 150 names: from ``objectInfo150.txt`` / ``.csv`` when the folder has one, else
        mmsegmentation's list."""
        for info in (self.root / "objectInfo150.txt", self.root / "objectInfo150.csv"):
            if info.is_file():
                return [ADE20K_OTHER, *read_object_info(info)], str(info)
        return [ADE20K_OTHER, *ADE20K_CLASSES], "the ADE20K SceneParsing classes"


def read_object_info(path: Path) -> list[str]:
    """Class names in id order from ADE20K's ``objectInfo150`` table: tab-separated (``Idx Ratio Train Val
    Name``, synonyms split by ``,``) or the CSV variant (``Idx,...,Name``, synonyms split by ``;``); each
    class is named by its first synonym."""
    lines = path.read_text().splitlines()
    rows = list(csv.reader(lines, delimiter="\t" if lines and "\t" in lines[0] else ","))
    header = [field.strip().lower() for field in rows[0]] if rows else []
    if "idx" not in header or "name" not in header:
        raise ValueError(f"{path}: expected a header with Idx and Name columns, got {lines[:1]}")
    position, name = header.index("idx"), header.index("name")
    entries = sorted((int(row[position]), row[name].replace(";", ",").split(",")[0].strip()) for row in rows[1:] if row)
    if [number for number, _ in entries] != list(range(1, len(entries) + 1)):
        raise ValueError(f"{path}: the Idx column must run 1..{len(entries)}")
    return [label for _, label in entries]


LAYOUTS: dict[str, type[Layout]] = {layout.name: layout for layout in (FolderLayout, CityscapesLayout, VocLayout,
                                                                      Ade20kLayout)}
DETECTORS = {name: layout.detect for name, layout in LAYOUTS.items()}


def open_layout(name: str, root: Path, mask_folder: str | None) -> Layout:
    """Layout `name` read from `root`; a folder not laid out that way (``--format`` given by hand) is an
    error saying what the layout expects."""
    layout = LAYOUTS[name]
    if not layout.detect(root):
        raise ValueError(f"config key 'format': the {name} layout expects {layout.expected} under {root}")
    return layout(root, mask_folder)
