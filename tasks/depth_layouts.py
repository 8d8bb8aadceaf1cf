"""Where a depth dataset keeps its images and depth maps: the folder, KITTI and NYU Depth v2 layouts.

A layout turns a split name ("train", "val") into (image, depth map) pairs, says where they came from
and counts what it left out on purpose. Files that a split names and the disk lacks raise
`MissingFilesError`, which carries them all for ``codecloop check-data``.

- folder: ``DATA/images/<split>/X.png|jpg`` with ``DATA/depth/<split>/X.png`` (16-bit) or ``X.npy`` (float metres).
- kitti (2017 depth prediction benchmark, data_depth_annotated): depth maps
  ``DATA/{train,val}/<drive>_sync/proj_depth/groundtruth/image_0{2,3}/<frame>.png`` with their images in the
  raw data, ``RAW/<date>/<drive>_sync/image_0{2,3}/data/<frame>.png`` (or ``.jpg``, as monodepth2 converts
  them); RAW is ``--raw``, by default ``DATA/raw``, and ``<date>`` the drive name's first 10 characters.
  ``--splits DIR`` reads the Eigen split files instead (``train_files.txt``; ``val_files.txt``, else
  ``test_files.txt``; lines ``<date>/<drive>_sync <frame> l|r``, l = image_02, r = image_03). Without
  ``DATA/val``, the val split is ``DATA[/depth_selection]/val_selection_cropped/{image,groundtruth_depth}``.
- nyu (mmsegmentation's NYU layout): ``DATA/images/{train,test}/X.jpg`` with
  ``DATA/annotations/{train,test}/X.png``; "val" reads ``test`` (or ``val`` where there is no ``test``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from codecloop.tasks.dense_common import list_images
from codecloop.tasks.layout_errors import MissingFilesError

DEFAULT_SCALES = {"folder": 256.0, "kitti": 256.0, "nyu": 1000.0}
DEFAULT_MAX_DEPTHS = {"folder": 80.0, "kitti": 80.0, "nyu": 10.0}  # metres: the Eigen-split and NYU evaluation caps
KITTI_CAMERAS = {"l": "image_02", "r": "image_03", "2": "image_02", "3": "image_03"}
KITTI_SPLIT_FILES = {"train": ("train_files.txt",), "val": ("val_files.txt", "test_files.txt")}
KITTI_RAW_SUFFIXES = (".png", ".jpg")
KITTI_GROUNDTRUTH = Path("proj_depth") / "groundtruth"
SELECTION = "val_selection_cropped"
SELECTION_IMAGE, SELECTION_DEPTH = "_sync_image_", "_sync_groundtruth_depth_"
NYU_SPLIT_FOLDERS = {"train": ("train",), "val": ("test", "val")}


@dataclass
class DepthPairs:
    """(image, depth map) paths of one split, where they were listed, and what was left out on purpose."""

    pairs: list[tuple[str, str]]
    source: str
    counts: dict[str, int] = field(default_factory=dict)


def pair_by_name(image_folder: Path, depth_folder: Path, depth_names: Callable[[Path], list[Path]]) -> DepthPairs:
    """Every image of `image_folder` with the first existing path of ``depth_names(relative image path)``
    under `depth_folder`; images without one raise `MissingFilesError` listing the depth maps they lack."""
    pairs, missing = [], []
    for image in list_images(image_folder):
        candidates = [depth_folder / name for name in depth_names(image.relative_to(image_folder))]
        depth = next((path for path in candidates if path.is_file()), None)
        if depth is None:
            missing.append(str(candidates[0]))
        else:
            pairs.append((str(image), str(depth)))
    if missing:
        raise MissingFilesError(image_folder, missing, "depth map",
                                f"every image of {image_folder} needs its depth map in {depth_folder}")
    return DepthPairs(pairs, str(image_folder))


def _same_stem(suffixes: tuple[str, ...]) -> Callable[[Path], list[Path]]:
    """Depth names of an image: its relative path with each of `suffixes`."""
    return lambda relative: [relative.with_suffix(suffix) for suffix in suffixes]


class FolderLayout:
    """``images/<split>/`` with ``depth/<split>/`` of the same stems."""

    name = "folder"

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "depth").is_dir()

    def has_split(self, split: str) -> bool:
        return (self.root / "images" / split).is_dir()

    def pairs(self, split: str) -> DepthPairs:
        return pair_by_name(self.root / "images" / split, self.root / "depth" / split, _same_stem((".png", ".npy")))


class NyuLayout:
    """mmsegmentation's NYU Depth v2 layout: ``images/{train,test}/*.jpg``, ``annotations/{train,test}/*.png``."""

    name = "nyu"

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "annotations").is_dir()

    def _folder(self, split: str) -> str | None:
        """The folder name holding `split` ("val" is NYU's test split), None when absent."""
        return next((name for name in NYU_SPLIT_FOLDERS.get(split, (split,))
                     if (self.root / "images" / name).is_dir()), None)

    def has_split(self, split: str) -> bool:
        return self._folder(split) is not None

    def pairs(self, split: str) -> DepthPairs:
        folder = self._folder(split)
        if folder is None:
            wanted = " or ".join(str(self.root / "images" / name) for name in NYU_SPLIT_FOLDERS.get(split, (split,)))
            raise FileNotFoundError(f"nyu layout: split {split!r} needs the image folder {wanted}")
        return pair_by_name(self.root / "images" / folder, self.root / "annotations" / folder, _same_stem((".png",)))


def _first_existing(base: Path, suffixes: tuple[str, ...]) -> Path | None:
    return next((base.with_suffix(suffix) for suffix in suffixes if base.with_suffix(suffix).is_file()), None)


def _selection_folder(root: Path) -> Path | None:
    """KITTI's ``val_selection_cropped`` folder inside `root` (as unpacked, or under ``depth_selection``)."""
    return next((folder for folder in (root / SELECTION, root / "depth_selection" / SELECTION)
                 if (folder / "image").is_dir()), None)


def _annotated_drives(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("*_sync") if (path / KITTI_GROUNDTRUTH).is_dir())


def _selection_depth_name(relative: Path) -> list[Path]:
    """``<drive>_sync_image_<frame>_image_02.png`` -> ``<drive>_sync_groundtruth_depth_<frame>_image_02.png``."""
    if SELECTION_IMAGE not in relative.name:
        raise ValueError(f"{relative}: a val_selection_cropped image name holds '{SELECTION_IMAGE}' "
                         f"(<drive>_sync_image_<frame>_image_02.png)")
    return [relative.with_name(relative.name.replace(SELECTION_IMAGE, SELECTION_DEPTH, 1))]


@dataclass(frozen=True)
class SplitLine:
    """One Eigen split file line: its drive folder (``<date>/<drive>_sync``), frame and camera folder."""

    drive_folder: str
    frame: str
    camera: str

    @property
    def drive(self) -> str:
        return Path(self.drive_folder).name


def read_split_file(path: Path) -> list[SplitLine]:
    """The lines of an Eigen split file (``2011_09_26/2011_09_26_drive_0002_sync 69 l``); a line of another
    form is an error naming the file and line."""
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 3 or "/" not in fields[0] or not fields[1].isdigit() or fields[2] not in KITTI_CAMERAS:
            raise ValueError(f"{path}:{number}: {text.strip()!r} is not an Eigen split line "
                             f"'<date>/<drive>_sync <frame> l|r'")
        lines.append(SplitLine(fields[0], f"{int(fields[1]):010d}", KITTI_CAMERAS[fields[2]]))
    return lines


class KittiLayout:
    """KITTI's annotated depth beside the raw images, chosen by the folder tree or by Eigen split files."""

    name = "kitti"

    def __init__(self, root: Path, raw: str | None = None, splits: str | None = None) -> None:
        self.root = root
        if raw is not None and not Path(raw).is_dir():
            raise FileNotFoundError(f"config key 'raw': {raw} is not a folder (the KITTI raw data, holding "
                                    f"<date>/<drive>_sync/image_02/data/)")
        self.raw = Path(raw) if raw is not None else root / "raw" if (root / "raw").is_dir() else None
        self.splits = Path(splits) if splits is not None else None
        if self.splits is not None and not any(self._split_file(split) for split in KITTI_SPLIT_FILES):
            raise FileNotFoundError(f"config key 'splits': {splits} holds none of the Eigen split files "
                                    f"{', '.join(name for names in KITTI_SPLIT_FILES.values() for name in names)}")
        self._frames: dict[tuple[str, str], tuple[Path, list[int]] | None] = {}

    @staticmethod
    def detect(root: Path) -> bool:
        trees = (next(root.glob(f"{split}/*_sync/{KITTI_GROUNDTRUTH.as_posix()}"), None) for split in ("train", "val"))
        return any(tree is not None for tree in trees) or _selection_folder(root) is not None

    def _split_file(self, split: str) -> Path | None:
        if self.splits is None:
            return None
        return next((self.splits / name for name in KITTI_SPLIT_FILES.get(split, ())
                     if (self.splits / name).is_file()), None)

    def has_split(self, split: str) -> bool:
        if self.splits is not None:
            return self._split_file(split) is not None
        selection = split == "val" and _selection_folder(self.root) is not None
        return bool(_annotated_drives(self.root / split)) or selection

    def pairs(self, split: str) -> DepthPairs:
        if self.splits is not None:
            return self._listed(split)
        selection = _selection_folder(self.root) if split == "val" and not _annotated_drives(self.root / split) \
            else None
        if selection is not None:
            return pair_by_name(selection / "image", selection / "groundtruth_depth", _selection_depth_name)
        return self._annotated(split)

    def _raw_root(self) -> Path:
        if self.raw is None:
            raise FileNotFoundError(f"config key 'raw': the kitti layout reads its images from the KITTI raw data "
                                    f"(<date>/<drive>_sync/image_02/data/); give --raw DIR, or put it at "
                                    f"{self.root / 'raw'}")
        return self.raw

    def _raw_image(self, drive_folder: str, camera: str, frame: str) -> tuple[Path, bool]:
        """The raw image of a frame and whether it exists (the ``.png`` path when neither suffix does)."""
        base = self._raw_root() / drive_folder / camera / "data" / frame
        found = _first_existing(base, KITTI_RAW_SUFFIXES)
        return (found, True) if found is not None else (base.with_suffix(".png"), False)

    def _raw_hint(self) -> str:
        return (f"--raw {self.raw} must hold the KITTI raw data (<date>/<drive>_sync/image_02/data/<frame>.png) of "
                f"every drive, --data {self.root} the annotated depth (train/, val/)")

    def _annotated(self, split: str) -> DepthPairs:
        """Every depth map of ``DATA/<split>`` with its raw image; depth maps without one stop the read."""
        folder = self.root / split
        depths = sorted(folder.glob(f"*_sync/{KITTI_GROUNDTRUTH.as_posix()}/image_0[23]/*.png"))
        if not depths:
            raise FileNotFoundError(f"kitti layout: {folder} holds no depth map "
                                    f"<drive>_sync/proj_depth/groundtruth/image_02/<frame>.png")
        pairs, missing = [], []
        for depth in depths:
            drive, camera = depth.parents[3].name, depth.parent.name
            image, found = self._raw_image(f"{drive[:10]}/{drive}", camera, depth.stem)
            (pairs if found else missing).append((str(image), str(depth)))
        if missing:
            raise MissingFilesError(folder, [image for image, _ in missing], "raw image", self._raw_hint())
        return DepthPairs(pairs, str(folder))

    def _annotated_frames(self, drive: str, camera: str) -> tuple[Path, list[int]] | None:
        """The ground-truth folder of a drive's camera in ``DATA/train`` or ``DATA/val`` and its frame numbers."""
        key = (drive, camera)
        if key not in self._frames:
            folders = [self.root / split / drive / KITTI_GROUNDTRUTH / camera for split in ("train", "val")]
            folder = next((path for path in folders if path.is_dir()), None)
            self._frames[key] = None if folder is None else (
                folder, sorted(int(path.stem) for path in folder.glob("*.png") if path.stem.isdigit()))
        return self._frames[key]

    def _groundtruth(self, line: SplitLine) -> tuple[str, str]:
        """("found" | "unannotated" | "missing", path) of a line's depth map. KITTI leaves the first and last
        frames of each drive unannotated: a frame outside the drive's annotated range has no depth map by design."""
        annotated = self._annotated_frames(line.drive, line.camera)
        if annotated is None:
            return "missing", str(self.root / "{train,val}" / line.drive / KITTI_GROUNDTRUTH / line.camera /
                                  f"{line.frame}.png")
        folder, frames = annotated
        path = folder / f"{line.frame}.png"
        if path.is_file():
            return "found", str(path)
        outside = bool(frames) and not frames[0] <= int(line.frame) <= frames[-1]
        return ("unannotated" if outside else "missing"), str(path)

    def _listed(self, split: str) -> DepthPairs:
        """The samples an Eigen split file names. A line whose raw image or depth map is missing stops the read
        (`MissingFilesError`, all of them listed); a line outside its drive's annotated frames (KITTI leaves out
        the first and last 5 of each drive) is skipped and counted, as the community does: the annotated depth
        covers 652 of the Eigen test split's 697 frames."""
        path = self._split_file(split)
        if path is None:
            raise FileNotFoundError(f"config key 'splits': {self.splits} has no "
                                    f"{' or '.join(KITTI_SPLIT_FILES.get(split, (split,)))} for the {split} split")
        pairs, missing, unannotated = [], [], 0
        for line in read_split_file(path):
            image, found = self._raw_image(line.drive_folder, line.camera, line.frame)
            state, depth = self._groundtruth(line)
            missing += ([] if found else [str(image)]) + ([depth] if state == "missing" else [])
            if found and state == "found":
                pairs.append((str(image), depth))
            unannotated += state == "unannotated"
        if missing:
            raise MissingFilesError(path, missing, "file", self._raw_hint())
        return DepthPairs(pairs, str(path), {"split_lines_without_groundtruth": unannotated})


LAYOUTS = {"folder": FolderLayout, "kitti": KittiLayout, "nyu": NyuLayout}
DETECTORS = {name: layout.detect for name, layout in LAYOUTS.items()}


def open_layout(format: str, root: Path, raw: str | None, splits: str | None) -> FolderLayout | KittiLayout | NyuLayout:
    """The reader of layout `format`; ``raw`` and ``splits`` are KITTI's, an error names them elsewhere."""
    if format == "kitti":
        return KittiLayout(root, raw, splits)
    for key, value in (("raw", raw), ("splits", splits)):
        if value is not None:
            raise ValueError(f"config key '{key}': only the kitti depth layout reads it; {root} is read as {format}")
    return LAYOUTS[format](root)
