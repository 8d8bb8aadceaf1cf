"""Checks that keep unreadable, oversized and damaged image files out of a DALI reader, once per file.

A DALI decoder that meets a corrupt file fails the whole batch, and one that meets a JPEG whose
entropy-coded data is damaged decodes it into partly garbage pixels without a word. So every file
is checked when a task builds its sample index, before any pipeline:

- structure: the header must parse (Pillow reads only the header), a JPEG must end with its EOI
  marker, a PNG with its IEND chunk and every chunk must pass its CRC (a truncated download or a
  flipped bit fails that);
- size: an image with more than ``max_image_pixels`` pixels is a bad file, known from the header
  alone (a decompression-bomb guard; JPEG and PNG headers are read past Pillow's own, so a bomb is
  named with its size and the limit is one setting);
- damage: a JPEG is decoded once in full by libjpeg-turbo (simplejpeg, grey at 1/8 scale: every
  entropy-coded bit is read, little else is done) and any libjpeg warning ("Corrupt JPEG data:
  ...") marks it damaged: skipped unless ``keep_damaged``. About 0.35 ms per 500x375 photo on one
  core (`bench/image_scan.py`), against 0.06 ms for the header checks and 0.007 ms for a cache hit.

Label files (segmentation masks) are decoded once more for the set of 8-bit values they hold, so a
task checks class ids against its table when the index is built, not per sample and epoch; the
header's mode (``L``, ``P``, ``I;16``...) is kept for every file, so depth PNGs are checked too.

What the checks found about a file is cached by (path, size, mtime_ns): a changed file is checked
again, never silently reused. A task passes its data root, and the cache is written next to the
data (``<data root>/.codecloop/scan-<hash>.json``), where every stage, sweep, run and rank of an
experiment finds it; a data folder that cannot be written keeps it in the user's cache folder
(`scan_cache_dir`, with one warning saying so), as do scans that name no data root. Scans of the
same folder take turns under a file lock: the first process (on a distributed launch, whichever rank
comes first) checks the files, the others wait and read its verdicts, opening none. A cache that
cannot be read or written costs time, never the run.
Bad files are skipped and reported with their path and reason, or, in strict mode, stop the run
naming the file.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import struct
import threading
import warnings
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, PngImagePlugin

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own warning limit (it refuses twice that)
PIPELINE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM")
CACHE_VERSION = 2  # raise when a check changes: older verdicts are then ignored
_TAIL_BYTES = 1024  # camera files may pad after the end marker
_JPEG_SOI, _JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_SIGNATURE, _PNG_IEND = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_UNREADABLE = "cannot be read"  # an open or read that failed: not cached, permissions may change
_PARSE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error,
                 Image.DecompressionBombError)


class BadImageError(RuntimeError):
    """Raised in strict mode for the first bad image, naming it."""


@dataclass(frozen=True)
class ScanPolicy:
    """What makes a file bad, from the config keys of the same names."""

    strict: bool = False  # stop on the first bad file instead of skipping it
    keep_damaged: bool = False  # keep JPEGs whose compressed data libjpeg warns about (no decode check)
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class FileFacts:
    """What checking one file found, whatever the policy (so it can be cached): format, stored size
    (``width x height`` before any EXIF rotation), a structural problem, libjpeg's complaint about
    the compressed data ("" when it decoded cleanly, None while not decoded), the header's mode, and
    for a label file the 8-bit values it holds (a 256-bit set in hex; None while not decoded)."""

    format: str | None = None
    width: int = 0
    height: int = 0
    problem: str | None = None
    damage: str | None = None
    mode: str | None = None
    values: str | None = None

    def value_set(self) -> np.ndarray:
        """The sorted 8-bit values a label file holds (empty while not decoded)."""
        if self.values is None:
            return np.zeros(0, np.int64)
        return np.flatnonzero(np.unpackbits(np.frombuffer(bytes.fromhex(self.values), np.uint8)))


@dataclass
class ScanResult:
    """Files that passed (in the order given), ``(path, reason)`` for each file skipped, the stored
    ``(width, height)`` of each file that passed and its `FileFacts` (mode, label values)."""

    good: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    facts: dict[str, FileFacts] = field(default_factory=dict, compare=False)


def _open_header(path: str | Path, head: bytes) -> Image.Image:
    """The file opened for its header. JPEG and PNG go straight to their Pillow plugin, past
    `Image.open`'s decompression-bomb check: the pixel limit is ours (`ScanPolicy`), and a bomb's
    size must be read to be named. (A multi-picture JPEG then reads as the JPEG it starts with.)"""
    if head.startswith(_JPEG_SOI):
        return JpegImagePlugin.JpegImageFile(path)
    if head.startswith(_PNG_SIGNATURE):
        return PngImagePlugin.PngImageFile(path)
    return Image.open(path)


def read_facts(path: str | Path) -> FileFacts:
    """Header, end marker and (PNG) chunk CRCs of `path`; raises OSError only when the file cannot be
    read at all (a verdict that must not be cached: permissions may change)."""
    with open(path, "rb") as handle:
        head = handle.read(16)
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - _TAIL_BYTES))
        tail = handle.read()
    if len(head) < 8:
        return FileFacts(problem="file too short to be an image")
    try:
        with _open_header(path, head) as image:
            facts = FileFacts(image.format, *image.size, mode=image.mode)
            if image.format == "PNG" and _PNG_IEND in tail:
                image.verify()
    except _PARSE_ERRORS as error:
        return FileFacts(problem=f"not a readable image ({error.__class__.__name__}: {error})")
    if facts.width < 1 or facts.height < 1:
        facts.problem = f"image has size {facts.width}x{facts.height}"
    elif facts.format == "JPEG" and _JPEG_EOI not in tail:
        facts.problem = "truncated JPEG (no end-of-image marker)"
    elif facts.format == "PNG" and _PNG_IEND not in tail:
        facts.problem = "truncated PNG (no IEND chunk)"
    elif facts.format not in PIPELINE_FORMATS:
        facts.problem = f"image format {facts.format} is not decoded by the pipeline"
    return facts


@functools.cache
def _libjpeg_turbo():
    """simplejpeg, or None where it is not installed (say, a bare GPU machine): the damaged-JPEG check is
    then left out, with one warning, and files are not marked as decoded, so a later scan with it decodes."""
    try:
        import simplejpeg
    except ImportError:
        warnings.warn("damaged JPEG data is not looked for: simplejpeg is not installed (pip install simplejpeg)",
                      stacklevel=2)
        return None
    return simplejpeg


def jpeg_damage(path: str | Path) -> str:
    """libjpeg-turbo's first warning or error while decoding all of `path`'s compressed data, or "".

    Grey output at 1/8 scale: the entropy decoder still reads every coefficient of every component
    (that is where damage shows), while the inverse DCT, upsampling and colour work shrink."""
    simplejpeg = _libjpeg_turbo()
    data = Path(path).read_bytes()
    try:
        colorspace = simplejpeg.decode_jpeg_header(data)[2]
        target = "CMYK" if colorspace in ("CMYK", "YCCK") else "GRAY"
        simplejpeg.decode_jpeg(data, colorspace=target, min_height=1, min_width=1, strict=True)
    except (ValueError, RuntimeError) as error:
        return str(error).strip() or error.__class__.__name__
    return ""


LABEL_MODES = ("L", "P")  # 8-bit class ids: grey or palette indices


def label_values(path: str | Path) -> str | None:
    """The 8-bit values a label PNG holds as a 256-bit set in hex (`FileFacts.values`), or None when
    the file is not 8-bit (the task names it by its mode)."""
    with Image.open(path) as label:
        if label.mode not in LABEL_MODES:
            return None
        counts = np.bincount(np.asarray(label, np.uint8).ravel(), minlength=256)
    return np.packbits(counts > 0).tobytes().hex()


def verdict(facts: FileFacts, policy: ScanPolicy) -> str | None:
    """Why a file with these facts is bad under `policy`, or None when it is kept."""
    if facts.problem:
        return facts.problem
    pixels = facts.width * facts.height
    if pixels > policy.max_image_pixels:
        return (f"image is {facts.width}x{facts.height} = {pixels:,} pixels, above max_image_pixels = "
                f"{policy.max_image_pixels:,} (a decompression-bomb guard; raise it to keep the file)")
    if facts.damage and not policy.keep_damaged:
        return f"damaged JPEG data: {facts.damage}"
    return None


def needs_decode(facts: FileFacts, policy: ScanPolicy) -> bool:
    """Whether the damage check still has to decode this file: a JPEG kept so far, never decoded (and a
    decoder to do it)."""
    return (facts.format == "JPEG" and facts.damage is None and not policy.keep_damaged
            and verdict(facts, policy) is None and _libjpeg_turbo() is not None)


def file_problem(path: str | Path, policy: ScanPolicy = ScanPolicy()) -> str | None:
    """Why `path` is a bad file under `policy`, or None (no cache: for one file)."""
    try:
        facts = read_facts(path)
    except OSError as error:
        return f"{_UNREADABLE} ({error.__class__.__name__}: {error})"
    if needs_decode(facts, policy):
        facts.damage = jpeg_damage(path)
    return verdict(facts, policy)


def scan_cache_dir() -> Path:
    """Where scan results are cached when the data folder cannot hold them (and pipeline failures
    always): ``$CODECLOOP_CACHE_DIR``, else ``$XDG_CACHE_HOME/codecloop``, else ``~/.cache/codecloop``;
    a ``scan/`` folder below it."""
    if os.environ.get("CODECLOOP_CACHE_DIR"):
        return Path(os.environ["CODECLOOP_CACHE_DIR"]) / "scan"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codecloop" / "scan"


Stamp = tuple[int, int]  # (size, mtime_ns): a file whose stamp changed is checked again


DATA_CACHE_FOLDER = ".codecloop"  # inside a task's data root


@functools.cache
def _unwritable(folder: str, error: str, fallback: str) -> None:
    """Say once per data folder that its scan cache lives elsewhere."""
    warnings.warn(f"data folder {folder} cannot hold the image scan cache ({error}): keeping it in {fallback}",
                  stacklevel=3)


def cache_folder(data_root: str | Path | None) -> Path:
    """Where the scan cache of a dataset lives: ``<data_root>/.codecloop`` when it can be written there,
    else (saying so once) `scan_cache_dir`; `scan_cache_dir` too when no data root is given."""
    if data_root is None:
        return scan_cache_dir()
    folder = Path(data_root).resolve() / DATA_CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("not writable")
    except OSError as error:
        _unwritable(str(Path(data_root).resolve()), f"{error.__class__.__name__}: {error}", str(scan_cache_dir()))
        return scan_cache_dir()
    return folder


class StampedCache:
    """Per-file entries below one folder (``root``) in one JSON file, keyed by relative path and valid while
    the file's stamp (size, mtime_ns) is unchanged: what a scan or a rate measurement learned about it.
    `locked` holds an exclusive lock for a whole pass and writes what it learned atomically at the end;
    any failure there only costs the cache. A file written by another `version` or with another `header`
    (say, other encoder versions) is ignored and rebuilt."""

    kind = "scan"
    title = "image scan"
    version = CACHE_VERSION

    def __init__(self, root: str, folder: Path | None = None, header: dict | None = None) -> None:
        self.root = root
        name = hashlib.sha256(root.encode()).hexdigest()[:24]
        self.folder = folder or scan_cache_dir()
        plain = self.kind == "scan" and self.folder.name != DATA_CACHE_FOLDER
        self.path = self.folder / (f"{name}.json" if plain else f"{self.kind}-{name}.json")
        self.header = header or {}
        self.entries: dict[str, list] = {}
        self.dirty = False

    def entry(self, path: str, stamp: Stamp) -> list | None:
        """The cached entry of `path` past its stamp, or None when absent or the file changed since."""
        entry = self.entries.get(os.path.relpath(path, self.root))
        if not isinstance(entry, list) or len(entry) < 2 or tuple(entry[:2]) != stamp:
            return None
        return entry[2:]

    def set_entry(self, path: str, stamp: Stamp, values: list) -> None:
        """Remember `values` for `path` at this stamp."""
        self.entries[os.path.relpath(path, self.root)] = [*stamp, *values]
        self.dirty = True

    @contextmanager
    def locked(self) -> Iterator["StampedCache"]:
        """Load under the folder's lock (waiting while another process works on it), save on exit."""
        lock = self._lock()
        try:
            self._load()
            try:
                yield self
            finally:
                if self.dirty:
                    self._save()
        finally:
            if lock is not None:
                lock.close()  # releases the lock

    def _lock(self):
        """The exclusive lock of this cache file (held while open), or None where locks do not work:
        the pass then runs unlocked (at worst two processes do the same work)."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.path.with_suffix(".lock"), "a")
        except OSError:
            return None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            lock.close()
            return None
        return lock

    def _load(self) -> None:
        try:
            payload = json.loads(self.path.read_text())
            if payload.get("version") == self.version and payload.get("root") == self.root \
                    and payload.get("header", {}) == self.header and isinstance(payload.get("files"), dict):
                self.entries = payload["files"]
        except (FileNotFoundError, NotADirectoryError):  # nothing cached yet, or no cache folder
            pass
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            self._warn(f"unreadable, checking again ({error})")

    def _save(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        payload = {"version": self.version, "root": self.root, "files": self.entries}
        if self.header:
            payload["header"] = self.header
        try:
            temporary.write_text(json.dumps(payload))
            os.replace(temporary, self.path)
        except OSError as error:
            self._warn(f"not written ({error})")
            with suppress(OSError):
                temporary.unlink(missing_ok=True)

    def _warn(self, what: str) -> None:
        warnings.warn(f"{self.title} cache {self.path}: {what}; the next run works these files out again",
                      stacklevel=2)


class ScanCache(StampedCache):
    """The cached `FileFacts` of the files below one folder."""

    def get(self, path: str, stamp: Stamp) -> FileFacts | None:
        """The facts cached for `path` at this stamp, or None."""
        entry = self.entry(path, stamp)
        if entry is None or len(entry) != 7:
            return None  # not cached, changed since, or an entry this version did not write
        return FileFacts(*entry)

    def put(self, path: str, stamp: Stamp, facts: FileFacts) -> None:
        """Remember `facts` for `path` at this stamp."""
        self.set_entry(path, stamp, list(astuple(facts)))


FAILURES_FILE = "pipeline_failures.json"


def pipeline_failures() -> dict[str, list]:
    """Files a pipeline could not decode although they passed the scan: ``{path: [size, mtime_ns, reason]}``."""
    try:
        failures = json.loads((scan_cache_dir() / FAILURES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return failures if isinstance(failures, dict) else {}


def decode_failure(path: str | Path) -> str | None:
    """Why Pillow cannot decode all of `path` (None if it can): the check run on the files of a batch the
    pipeline failed on, to find the one to blame."""
    try:
        with Image.open(path) as image:
            image.load()
    except Exception as error:  # noqa: BLE001 - any decoder failure blames the file
        return f"{error.__class__.__name__}: {error}"
    return None


def record_pipeline_failure(path: str | Path, reason: str) -> bool:
    """Remember that the pipeline could not decode `path` (at its current size and time), so that every
    later scan, a ``--resume`` included, skips it instead of failing on it again; False if not recorded."""
    path = os.path.abspath(path)
    stamp = _stamp(path)
    if stamp is None:
        return False
    failures = {**pipeline_failures(), path: [*stamp, reason]}
    target = scan_cache_dir() / FAILURES_FILE
    temporary = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(failures, indent=1))
        os.replace(temporary, target)
    except OSError:
        return False
    return True


def _stamp(path: str) -> Stamp | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def _facts_or_unreadable(path: str) -> FileFacts:
    try:
        return read_facts(path)
    except OSError as error:
        return FileFacts(problem=f"{_UNREADABLE} ({error.__class__.__name__}: {error})")


def _values_or_none(path: str) -> str | None:
    try:
        return label_values(path)
    except (OSError, *_PARSE_ERRORS):  # a label PNG whose data is broken: the pipeline's decode names it
        return None


def _cache_root(paths: Sequence[str]) -> str:
    """The deepest folder holding every path: one cache file per dataset split (or dataset)."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])


def check_files(paths: Sequence[str], policy: ScanPolicy, cache: ScanCache | None, workers: int,
                labels: Collection[str] = ()) -> list[FileFacts]:
    """The facts of every path, from `cache` where its stamp matches, else checked (and decoded where
    `policy` needs it, or for the values of the `labels` files) on `workers` threads and put in `cache`."""
    stamps = [_stamp(path) for path in paths]
    facts: list[FileFacts | None] = [cache.get(path, stamp) if cache and stamp else None
                                     for path, stamp in zip(paths, stamps)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        todo = [i for i, found in enumerate(facts) if found is None]
        for i, found in zip(todo, pool.map(_facts_or_unreadable, [paths[i] for i in todo])):
            facts[i] = found
        decode = [i for i, found in enumerate(facts) if needs_decode(found, policy)]
        for i, damage in zip(decode, pool.map(jpeg_damage, [paths[i] for i in decode])):
            facts[i].damage = damage
        valued = [i for i, found in enumerate(facts) if paths[i] in labels and found.values is None
                  and found.mode in LABEL_MODES and not found.problem]
        for i, values in zip(valued, pool.map(_values_or_none, [paths[i] for i in valued])):
            facts[i].values = values
    if cache is not None:
        for i in sorted(set(todo) | set(decode) | set(valued)):
            if stamps[i] is not None and not (facts[i].problem or "").startswith(_UNREADABLE):
                cache.put(paths[i], stamps[i], facts[i])
    return facts


def scan_images(paths: Sequence[str], policy: ScanPolicy = ScanPolicy(), *, cache: bool = True,
                workers: int | None = None, data_root: str | Path | None = None,
                labels: Collection[str] = ()) -> ScanResult:
    """Check every path (`ScanPolicy`); skip bad ones, or raise `BadImageError` naming the first one
    (in the order given) when ``policy.strict``. What was learned is cached before that, next to the
    data when `data_root` is given (`cache_folder`). The `labels` files are decoded once for the values
    they hold (`FileFacts.values`)."""
    paths = [str(path) for path in paths]
    result = ScanResult()
    if not paths:
        return result
    workers = workers or min(32, os.cpu_count() or 1)
    labels = {str(path) for path in labels}
    store = ScanCache(_cache_root(paths), cache_folder(data_root)) if cache else None
    if store is None:
        facts = check_files(paths, policy, None, workers, labels)
    else:
        with store.locked():
            facts = check_files(paths, policy, store, workers, labels)
    failed = pipeline_failures()
    for path, found in zip(paths, facts):
        reason = verdict(found, policy)
        failure = failed.get(os.path.abspath(path))
        if reason is None and failure and tuple(failure[:2]) == _stamp(path):
            reason = f"the pipeline could not decode it in an earlier run ({failure[2]})"
        if reason is None:
            result.good.append(path)
            result.sizes[path] = (found.width, found.height)
            result.facts[path] = found
        elif policy.strict:
            raise BadImageError(f"{path}: {reason} (strict mode stops on the first bad file)")
        else:
            result.skipped.append((path, reason))
    return result
