"""File dataset readers that survive real-world data: layout detection (the layouts live in
:mod:`sinet_tf.data.layouts`), decoding of every usual mask encoding, validation with a
report, and clear errors.

Entry points
------------
``load_dataset(source, split=None, classes=None, ignore_index=255, on_error="raise",
validate=True) -> FileDataset`` and ``check_dataset(...) -> DataReport``.

Layouts (recorded in ``FileDataset.layout``)
--------------------------------------------
Tried in this order, the first that matches wins; the list below is generated from the
registry in :mod:`sinet_tf.data.layouts`, where a new layout is one class and one
``@register``:

{layouts}

Mattes are binarised as person = alpha >= 128 (0.5).

Damaged files
-------------
A file that does not decode is an ``unreadable_image``/``unreadable_mask`` problem, and
so is a JPEG that libjpeg decodes only partly ("Corrupt JPEG data: ...", "Premature end
of JPEG file": OpenCV returns it with the damaged part grey; see
:func:`sinet_tf.files.decode_image`). A mask that is 255 everywhere in a dataset whose
other masks use 1 for person (so 255 means ignore there) is an ``ambiguous_mask``
problem: read as {0,255} it would be scored as all person.

Mask encodings
--------------
Binary (the default classes ``background``/``person``): ``{0,1}`` as is; ``{0,255}``
means 255 = person; ``{0,1,255}`` means 255 = ignore (``ignore_index``). Palette PNGs are
read as palette *indices* (Pillow, mode ``"P"``). Multi-class label maps need an explicit
``classes`` list: values ``0 .. len(classes)-1`` plus ``ignore_index``. Anything else is
an ``unexpected_mask_values`` problem naming the file and the values. Masks of another
size than their image are resized to it (nearest neighbour; mattes bilinear before the
threshold) and counted. Greyscale images are returned as RGB.

EXIF orientation
----------------
Photos are decoded without OpenCV's automatic rotation and the EXIF orientation tag is
then applied explicitly (same result as ``PIL.ImageOps.exif_transpose``), so the
returned photo is upright. Masks carry no EXIF and are assumed to be drawn on the
upright photo (annotation tools display photos upright) -- with one exception that can
be detected: when the orientation swaps width and height and the mask matches the
stored (un-rotated) frame but not the upright one, the mask was drawn on the raw
pixels and the same transform is applied to it. Either way, mask and photo stay aligned.
The number of rotated photos is reported (``DataReport.exif_rotated``).
"""

from __future__ import annotations

import io
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from sinet_tf.data import layouts as _layouts
from sinet_tf.data.base import BINARY_CLASSES, IGNORE_INDEX, SegmentationSource
# the records and the layout constants, re-exported: they used to live here
from sinet_tf.data.layouts import (MASK_FOLDER_PAIRS, MATTE_FOLDERS, MATTE_IMAGE_FOLDERS, SPLITS,  # noqa: F401
                                   DataError, Problem, Sample, _structural)
from sinet_tf.data.layouts import scan as _scan
from sinet_tf.files import apply_exif_orientation, decode_image, exif_orientation
from sinet_tf.progress import progress_bar

__all__ = ["load_dataset", "check_dataset", "FileDataset", "Sample", "Problem", "DataReport",
           "DataError", "LAYOUTS"]

if __doc__:  # the layouts section of the module docstring, from the registry
    __doc__ = __doc__.replace("{layouts}", _layouts.describe())

log = logging.getLogger("sinet_tf.data")


def __getattr__(name: str):
    # LAYOUTS: the registered layout names in priority order, read from the registry on
    # each access (PEP 562), so a layout registered later is listed too
    if name == "LAYOUTS":
        return _layouts.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_MAX_LISTED = 5  # files named in skip warnings


# --------------------------------------------------------------------------- report


def _stats(values: Sequence[int]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": int(min(values)), "median": float(np.median(values)), "max": int(max(values))}


@dataclass
class DataReport:
    """Result of validating every pair once (``check_dataset``)."""

    root: str
    layout: str
    split: str | None
    classes: tuple[str, ...]
    ignore_index: int
    num_samples: int = 0           # pairs found (listed / matched)
    num_readable: int = 0          # pairs that decoded without a problem
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    image_heights: list[int] = field(default_factory=list, repr=False)
    image_widths: list[int] = field(default_factory=list, repr=False)
    distinct_sizes: int = 0
    class_pixels: dict[str, int] = field(default_factory=dict)
    ignore_pixels: int = 0
    masks_resized: int = 0
    greyscale_images: int = 0
    exif_rotated: int = 0
    mattes: int = 0
    empty_masks: list[str] = field(default_factory=list)
    encodings: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings such as empty masks do not count)."""
        return not self.problems

    @property
    def class_fraction(self) -> dict[str, float]:
        """Fraction of labelled pixels per class (ignore pixels excluded)."""
        total = sum(self.class_pixels.values())
        return {k: (v / total if total else 0.0) for k, v in self.class_pixels.items()}

    @property
    def image_size(self) -> dict:
        """Image size statistics: min/median/max height and width, distinct (W, H) sizes."""
        return {"height": _stats(self.image_heights), "width": _stats(self.image_widths),
                "distinct": self.distinct_sizes}

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict:
        total = sum(self.class_pixels.values()) + self.ignore_pixels
        return {
            "root": self.root, "layout": self.layout, "split": self.split,
            "classes": list(self.classes), "ignore_index": self.ignore_index, "ok": self.ok,
            "num_samples": self.num_samples, "num_readable": self.num_readable,
            "image_size": self.image_size,
            "class_pixels": dict(self.class_pixels), "class_fraction": self.class_fraction,
            "ignore_fraction": (self.ignore_pixels / total) if total else 0.0,
            "masks_resized": self.masks_resized, "greyscale_images": self.greyscale_images,
            "exif_rotated": self.exif_rotated, "mattes": self.mattes,
            "empty_masks": list(self.empty_masks), "encodings": dict(self.encodings),
            "problem_counts": self.problem_counts(),
            "problems": [p.to_dict() for p in self.problems],
            "warnings": [w.to_dict() for w in self.warnings],
            "elapsed_s": round(self.elapsed_s, 3),
        }

    def summary(self, max_listed: int = 50) -> str:
        """Human-readable summary (rich tables rendered to plain text); lists every
        problem up to ``max_listed`` and says how many more there are."""
        from rich.console import Console
        from rich.table import Table

        buf = io.StringIO()
        con = Console(file=buf, width=110, color_system=None, force_terminal=False,
                      highlight=False, soft_wrap=False)
        split = f", split {self.split}" if self.split else ""
        status = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        t = Table(title=f"{self.root} ({self.layout} layout{split}): {status}", show_header=False)
        t.add_column("item", no_wrap=True)
        t.add_column("value")
        size = self.image_size
        t.add_row("pairs", f"{self.num_samples} found, {self.num_readable} readable")
        if self.image_heights:
            h, w = size["height"], size["width"]
            t.add_row("image height", f"min {h['min']}, median {h['median']:g}, max {h['max']}")
            t.add_row("image width", f"min {w['min']}, median {w['median']:g}, max {w['max']}")
            t.add_row("distinct sizes", str(self.distinct_sizes))
        t.add_row("masks resized", f"{self.masks_resized} (nearest neighbour, to the image size)")
        t.add_row("greyscale images", f"{self.greyscale_images} (loaded as RGB)")
        if self.exif_rotated:
            t.add_row("EXIF-rotated photos", str(self.exif_rotated))
        if self.mattes:
            t.add_row("alpha mattes", f"{self.mattes} (person = alpha >= 128)")
        if self.encodings:
            t.add_row("mask encodings", ", ".join(f"{k}: {v}" for k, v in sorted(self.encodings.items())))
        t.add_row("empty masks", f"{len(self.empty_masks)} (no person; warning)")
        t.add_row("seconds", f"{self.elapsed_s:.2f}")
        con.print(t)

        c = Table(title="class balance (labelled pixels, ignore excluded)")
        c.add_column("class")
        c.add_column("index", justify="right")
        c.add_column("fraction", justify="right")
        for i, (name, frac) in enumerate(self.class_fraction.items()):
            c.add_row(name, str(i), f"{frac:.2%}")
        total = sum(self.class_pixels.values()) + self.ignore_pixels
        if self.ignore_pixels:
            c.add_row("(ignore)", str(self.ignore_index), f"{self.ignore_pixels / total:.2%} of all")
        con.print(c)

        for title, items in (("problems", self.problems), ("warnings", self.warnings)):
            if not items:
                continue
            # one plain line per item: a table cell would fold long paths mid-name
            con.print(f"{len(items)} {title}:")
            for item in items[:max_listed]:
                con.print(f"  [{item.kind}] {item.path}: {item.message}", soft_wrap=True, markup=False)
            if len(items) > max_listed:
                con.print(f"... and {len(items) - max_listed} more {title} (use --json for all)")
        return buf.getvalue()


# --------------------------------------------------------------------------- decoding


class _Bad(Exception):
    """Internal: a sample-level problem found while decoding."""

    def __init__(self, kind: str, path, message: str):
        super().__init__(message)
        self.problem = Problem(kind, str(path), message)


_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"BM", "BMP"),
          (b"GIF8", "GIF"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _why_undecodable(data: bytes, path: Path) -> str:
    if not data:
        return "empty file (0 bytes), not an image"
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return f"corrupt or truncated {fmt} file ({len(data):,} bytes): cannot decode it"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return f"corrupt or truncated WebP file ({len(data):,} bytes): cannot decode it"
    head = data[:512]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"is a text file, not an image (starts with {head[:40].decode('ascii')!r})"
    return f"not a decodable image (unknown format, {len(data):,} bytes; the suffix {path.suffix!r} is misleading)"


def _read_bytes(path: Path, role: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Bad(f"missing_{role}", path, f"{role} file not found") from None
    except OSError as e:
        raise _Bad(f"unreadable_{role}", path, f"cannot read the {role} file: {e}") from None


def _decode_unchanged(data: bytes, path: Path, role: str) -> np.ndarray:
    arr, warnings = decode_image(data, cv2.IMREAD_UNCHANGED) if data else (None, [])
    if arr is None:
        raise _Bad(f"unreadable_{role}", path, _why_undecodable(data, path))
    if warnings:
        raise _Bad(f"unreadable_{role}", path, f"corrupt JPEG data ({'; '.join(dict.fromkeys(warnings))}): "
                                               "libjpeg decodes it only partly")
    return arr


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


# EXIF orientation: one implementation, shared with sinet_tf.files.read_rgb (photos for `sinet predict`)
_exif_orientation = exif_orientation
_orient = apply_exif_orientation


@dataclass
class _Decoded:
    image: np.ndarray
    label: np.ndarray
    greyscale: bool = False
    resized: bool = False
    rotated: bool = False
    aspect_mismatch: bool = False
    encoding: str = ""
    empty: bool = False
    all_255: bool = False
    class_hist: np.ndarray | None = None


def _decode_image(path: Path) -> tuple[np.ndarray, np.ndarray | None, bool, int, tuple[int, int]]:
    """Returns (upright RGB, upright alpha or None, greyscale?, orientation, stored (h, w))."""
    data = _read_bytes(path, "image")
    raw = _to_uint8(_decode_unchanged(data, path, "image"))
    stored = raw.shape[:2]
    alpha = None
    grey = raw.ndim == 2 or raw.shape[2] == 1
    if grey:
        rgb = cv2.cvtColor(raw.reshape(stored), cv2.COLOR_GRAY2RGB)
    elif raw.shape[2] == 4:
        alpha = raw[:, :, 3]
        rgb = cv2.cvtColor(raw, cv2.COLOR_BGRA2RGB)
    elif raw.shape[2] == 2:  # grey + alpha as decoded by some codecs
        alpha = raw[:, :, 1]
        rgb = cv2.cvtColor(np.ascontiguousarray(raw[:, :, 0]), cv2.COLOR_GRAY2RGB)
        grey = True
    else:
        rgb = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    orientation = _exif_orientation(data)
    if orientation != 1:
        rgb = _orient(rgb, orientation)
        if alpha is not None:
            alpha = _orient(alpha, orientation)
    return rgb, alpha, grey, orientation, stored


def _is_palette_png(data: bytes) -> bool:
    return data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 25 and data[12:16] == b"IHDR" and data[25] == 3


def _decode_mask_values(path: Path, matte: bool) -> tuple[np.ndarray, str]:
    """Single-channel mask values as stored (uint8 or uint16) and a note on the format."""
    data = _read_bytes(path, "mask")
    if _is_palette_png(data) and not matte:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode == "P":
                    return np.asarray(im, dtype=np.uint8), "palette"
        except Exception as e:
            raise _Bad("unreadable_mask", path, f"corrupt or truncated PNG file ({len(data):,} bytes): {e}") from None
    a = _decode_unchanged(data, path, "mask")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3:
        if a.shape[2] == 4:
            alpha = a[:, :, 3]
            colour = a[:, :, :3].reshape(-1, 3)
            if matte or (alpha.min() != alpha.max() and np.all(colour == colour[:1])):
                return np.ascontiguousarray(alpha), "alpha"  # matte, or a flat colour cut out by alpha
        if a.shape[2] == 2:
            return np.ascontiguousarray(a[:, :, 1] if matte else a[:, :, 0]), "grey"
        bgr = a[:, :, :3]
        if np.all(bgr == bgr[:, :, :1]):
            return np.ascontiguousarray(bgr[:, :, 0]), "grey"
        if matte:
            return cv2.cvtColor(_to_uint8(bgr), cv2.COLOR_BGR2GRAY), "grey"
        raise _Bad("unexpected_mask_values", path,
                   "mask with unexpected values: a colour (RGB) mask; expected a single-channel "
                   "label map of class indices (or a palette PNG)")
    if a.dtype not in (np.uint8, np.uint16):
        raise _Bad("unexpected_mask_values", path,
                   f"mask with unexpected values: pixel type {a.dtype}; expected 8-bit class indices")
    return a, "grey"


def _fmt_values(values: Iterable[int], limit: int = 12) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return "{" + shown + (f", ... ({len(values)} distinct values)" if len(values) > limit else "") + "}"


def _label_lut(hist: np.ndarray, path: Path, num_classes: int, ignore_index: int,
               binary: bool) -> tuple[np.ndarray, str]:
    """Look-up table raw value -> label for one mask, from its value histogram."""
    present = [int(v) for v in np.flatnonzero(hist)]
    pset = set(present)
    lut = np.arange(256, dtype=np.uint8)
    if binary:
        if pset <= {0, 1}:
            return lut, "{0,1}"
        if pset <= {0, 255}:
            lut[255] = 1
            return lut, "{0,255}"
        if pset <= {0, 1, ignore_index}:
            return lut, f"{{0,1,{ignore_index}=ignore}}"
        msg = (f"mask with unexpected values {_fmt_values(present)}; binary masks must hold "
               f"{{0,1}}, {{0,255}} (255 = person) or {{0,1,{ignore_index}}} ({ignore_index} = ignore)")
        between = [v for v in present if 1 < v < 254]
        if len(between) >= 8:
            msg += (f". It holds {len(between)} intermediate levels (anti-aliased or soft): it looks "
                    "like an alpha matte -- treat it as one (put the files in a mattes/, alpha/ or "
                    "matting/ folder, or pass mattes=True / --mattes) to use person = value >= 128")
        else:
            msg += ". For a multi-class label map pass the class names (classes=[...] / --classes)"
        raise _Bad("unexpected_mask_values", path, msg)
    allowed = set(range(num_classes)) | {ignore_index}
    bad = sorted(pset - allowed)
    if bad:
        raise _Bad("unexpected_mask_values", path,
                   f"mask with unexpected values {_fmt_values(bad)} (all values: {_fmt_values(present)}); "
                   f"with {num_classes} classes the label map may hold 0..{num_classes - 1} and "
                   f"{ignore_index} (ignore)")
    return lut, f"classes 0..{num_classes - 1}"


def _decode_pair(sample: Sample, num_classes: int, ignore_index: int, stats: bool = False) -> _Decoded:
    rgb, alpha, grey, orientation, stored = _decode_image(sample.image)
    h, w = rgb.shape[:2]
    out = _Decoded(rgb, None, greyscale=grey, rotated=orientation != 1)  # type: ignore[arg-type]
    binary = num_classes == 2
    if sample.mask is None:  # matte = the image's own alpha channel
        if alpha is None:
            raise _Bad("missing_mask", sample.image,
                       "image without an alpha channel (an RGBA PNG matte is expected here) and no mask")
        values, encoding, path, matte = alpha, "rgba alpha", sample.image, True
    else:
        values, encoding = _decode_mask_values(sample.mask, sample.matte)
        path, matte = sample.mask, sample.matte
        # EXIF: masks are assumed drawn on the upright photo, unless they match only the raw frame
        mh, mw = values.shape[:2]
        if orientation in (5, 6, 7, 8) and stored[0] != stored[1]:
            raw_ratio, up_ratio, m_ratio = stored[1] / stored[0], w / h, mw / mh
            if abs(m_ratio - raw_ratio) < abs(m_ratio - up_ratio):
                values = _orient(values, orientation)
    mh, mw = values.shape[:2]
    if matte:
        v8 = _to_uint8(values)
        if (mh, mw) != (h, w):
            v8 = cv2.resize(v8, (w, h), interpolation=cv2.INTER_LINEAR)
            out.resized = True
        label = (v8 >= 128).astype(np.uint8)
        out.encoding = "matte" if encoding != "rgba alpha" else "rgba alpha"
    else:
        if values.dtype == np.uint16:
            if int(values.max()) > 255:
                present = np.unique(values)
                raise _Bad("unexpected_mask_values", path,
                           f"mask with unexpected values {_fmt_values(present.tolist())} (16-bit mask); "
                           "expected 8-bit class indices")
            values = values.astype(np.uint8)
        hist = np.bincount(values.ravel(), minlength=256)
        lut, enc = _label_lut(hist, path, num_classes, ignore_index, binary)
        out.all_255 = binary and hist[255] == values.size
        out.encoding = enc if encoding != "palette" else f"palette {enc}"
        label = lut[values]
        if (mh, mw) != (h, w):
            label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
            out.resized = True
    if out.resized and abs(mw / mh - w / h) > 0.02 * (w / h):
        out.aspect_mismatch = True
    out.label = label
    if stats:
        out.class_hist = np.bincount(label.ravel(), minlength=256)
        out.empty = binary and out.class_hist[1] == 0
    return out


# --------------------------------------------------------------------------- dataset


class FileDataset(SegmentationSource):
    """Image/mask pairs on disk. ``read(i)`` returns ``(RGB uint8 [H, W, 3], label uint8
    [H, W])`` at the photo's (upright) size; problems raise :class:`DataError` naming the
    file(s)."""

    def __init__(self, root, layout: str, samples: Sequence[Sample], split: str | None = None,
                 classes: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX,
                 skipped: Sequence[Problem] = (), report: DataReport | None = None):
        self.root = Path(root)
        self.layout = layout
        self.split = split
        self.samples = list(samples)
        self.classes = tuple(classes) if classes else BINARY_CLASSES
        self.ignore_index = int(ignore_index)
        self.skipped = list(skipped)
        self.report = report
        self.name = self.root.name + (f"/{split}" if split else "")

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"FileDataset({str(self.root)!r}, layout={self.layout!r}, split={self.split!r}, "
                f"samples={len(self.samples)}, skipped={len(self.skipped)})")

    def describe(self, index: int) -> str:
        s = self.samples[index]
        if s.mask is None:
            return f"{s.image} (alpha matte)"
        return f"{s.image} + {s.mask}" + (" (matte)" if s.matte else "")

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        try:
            d = _decode_pair(sample, len(self.classes), self.ignore_index)
        except _Bad as e:
            raise DataError(_raise_message(e.problem), [e.problem]) from None
        return d.image, d.label


def _raise_message(p: Problem) -> str:
    return (f"{p.path}: {p.message}. To drop bad samples and continue: `on_bad_sample: skip` in a training "
            f"recipe, on_error=\"skip\" in Python; `sinet data check` lists every problem")


# --------------------------------------------------------------------------- validation


def _check_args(classes, ignore_index, on_error="raise"):
    classes = tuple(classes) if classes else BINARY_CLASSES
    if len(classes) < 2:
        raise ValueError(f"classes must name at least 2 classes, got {list(classes)}")
    if not 0 <= int(ignore_index) <= 255 or int(ignore_index) < len(classes):
        raise ValueError(f"ignore_index must be in {len(classes)}..255 (outside the class indices), got {ignore_index}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return classes, int(ignore_index)


def _validate(samples: Sequence[Sample], report: DataReport, stop_at_first: bool = False,
              workers: int | None = None, progress: bool | None = None) -> list[int]:
    """Decode every pair once, fill ``report``; returns the indices of bad samples.
    With ``stop_at_first`` raises DataError at the first bad sample (in order).
    ``progress``: a bar on stderr (None: when stderr is a terminal)."""
    nc, ig = len(report.classes), report.ignore_index

    def work(s: Sample):
        try:
            d = _decode_pair(s, nc, ig, stats=True)
            h, w = d.image.shape[:2]
            d.image = d.label = None  # keep only the statistics
            return d, h, w, None
        except _Bad as e:
            return None, 0, 0, e.problem
        except Exception as e:  # unexpected decoder failure: still a per-file problem
            return None, 0, 0, Problem("unreadable_image", str(s.image), f"cannot read this pair: {e!r}")

    workers = workers or min(4, os.cpu_count() or 1)
    bad: list[int] = []
    decoded: list[tuple[int, _Decoded, int, int]] = []
    label = str(report.root) + (f" ({report.split})" if report.split else "")
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            progress_bar(f"checking {len(samples)} pairs of {label}", len(samples), progress) as advance:
        for i, (d, h, w, problem) in enumerate(pool.map(work, samples)):
            advance()
            if problem is not None:
                if stop_at_first:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise DataError(_raise_message(problem), [problem])
                report.problems.append(problem)
                bad.append(i)
            else:
                decoded.append((i, d, h, w))
    # An all-255 mask reads as {0,255} (255 = person); where the other masks use 1 for person,
    # 255 means ignore there, so the mask is all ignore or broken, never all person.
    if any(d.encoding.startswith(("{0,1", "palette {0,1")) for _, d, _, _ in decoded):
        for i, d, _, _ in decoded:
            if d.all_255:
                s = samples[i]
                problem = Problem("ambiguous_mask", str(s.mask or s.image),
                                  "mask is 255 everywhere while the other masks of this dataset use 1 for person "
                                  "(so 255 = ignore): all ignore or a broken mask, not all person")
                if stop_at_first:
                    raise DataError(_raise_message(problem), [problem])
                report.problems.append(problem)
                bad.append(i)
        bad.sort()
    hist = np.zeros(256, np.int64)
    sizes: Counter = Counter()
    rejected = set(bad)
    for i, d, h, w in decoded:
        if i in rejected:
            continue
        s = samples[i]
        report.num_readable += 1
        report.image_heights.append(h)
        report.image_widths.append(w)
        sizes[(w, h)] += 1
        hist += d.class_hist
        report.masks_resized += d.resized
        report.greyscale_images += d.greyscale
        report.exif_rotated += d.rotated
        report.mattes += s.matte
        report.encodings[d.encoding] = report.encodings.get(d.encoding, 0) + 1
        if d.empty:
            path = str(s.mask or s.image)
            report.empty_masks.append(path)
            report.warnings.append(Problem("empty_mask", path, "empty mask: no person pixels"))
        if d.aspect_mismatch:
            report.warnings.append(Problem("aspect_mismatch", str(s.mask or s.image),
                                           "mask has another aspect ratio than its image; resized anyway"))
    report.distinct_sizes = len(sizes)
    report.class_pixels = {name: int(hist[k]) for k, name in enumerate(report.classes)}
    report.ignore_pixels = int(hist[ig])
    binary_encs = {e for e in report.encodings if e.endswith("{0,255}") or "=ignore" in e}
    if len(binary_encs) > 1:
        report.warnings.append(Problem("mixed_encodings", report.root,
                                       "masks mix {0,255} (255 = person) and {0,1,255} (255 = ignore) "
                                       f"encodings: {', '.join(sorted(binary_encs))}; check that 255 means "
                                       "the same thing in every mask"))
    return bad


def _new_report(root, layout, split, classes, ignore_index, n) -> DataReport:
    return DataReport(root=str(root), layout=layout, split=split, classes=classes,
                      ignore_index=ignore_index, num_samples=n)


def check_dataset(source, split: str | None = None, classes: Sequence[str] | None = None,
                  ignore_index: int = IGNORE_INDEX, *, mattes: bool = False, progress: bool | None = None) -> DataReport:
    """Decode every pair once and report statistics and every problem. Sample-level
    problems are collected in ``report.problems``; structural problems (unknown layout,
    empty dataset, missing or malformed list file) raise :class:`DataError`.
    ``source`` may also be a :class:`FileDataset` (its samples are checked)."""
    t0 = time.perf_counter()
    if isinstance(source, FileDataset):
        classes, ignore_index = _check_args(classes or source.classes, ignore_index)
        root, layout, samples, scan = source.root, source.layout, source.samples, []
        split = source.split
    else:
        classes, ignore_index = _check_args(classes, ignore_index)
        root, layout, samples, scan = _scan(source, split, mattes)
    if mattes:
        samples = [Sample(s.image, s.mask, True) for s in samples]
    report = _new_report(root, layout, split, classes, ignore_index, len(samples))
    report.problems.extend(scan)
    if not samples and not scan:
        raise _structural("empty_dataset", root, f"{root}: no image/mask pairs found (empty dataset)")
    _validate(samples, report, progress=progress)
    report.elapsed_s = time.perf_counter() - t0
    return report


def load_dataset(source, split: str | None = None, classes: Sequence[str] | None = None,
                 ignore_index: int = IGNORE_INDEX, on_error: str = "raise", validate: bool = True,
                 *, mattes: bool = False, progress: bool | None = None) -> FileDataset:
    """Open a dataset folder or list file (layout detected, see the module docstring).

    ``on_error="raise"``: the first bad sample raises :class:`DataError` naming the file
    and the problem. ``on_error="skip"``: bad samples are dropped, recorded in
    ``.skipped`` and a warning names how many and the first few files. With
    ``validate=True`` every pair is decoded once (``.report``); otherwise decoding
    problems surface in ``read``. ``mattes=True`` treats every mask as an alpha matte
    (person = value >= 128). Structural problems always raise. ``progress``: a bar on
    stderr while validating (None: when stderr is a terminal).
    """
    t0 = time.perf_counter()
    classes, ignore_index = _check_args(classes, ignore_index, on_error)
    root, layout, samples, scan = _scan(source, split, mattes)
    if mattes:
        samples = [Sample(s.image, s.mask, True) for s in samples]
    if scan and on_error == "raise":
        raise DataError(_raise_message(scan[0]), scan)
    report = None
    skipped = list(scan)
    if validate and samples:
        report = _new_report(root, layout, split, classes, ignore_index, len(samples))
        report.problems.extend(scan)
        bad = _validate(samples, report, stop_at_first=on_error == "raise", progress=progress)
        skipped.extend(report.problems[len(scan):])
        bad_set = set(bad)
        samples = [s for i, s in enumerate(samples) if i not in bad_set]
        report.elapsed_s = time.perf_counter() - t0
    where = f"{root}" + (f" (split {split})" if split else "")
    if not samples:
        detail = f"; all {len(skipped)} sample(s) were bad, first: {skipped[0]}" if skipped else ""
        raise DataError(f"{where}: no usable image/mask pairs (empty dataset){detail}",
                        skipped or [Problem("empty_dataset", str(root), "empty dataset")], structural=True)
    if skipped:
        first = "; ".join(str(p) for p in skipped[:_MAX_LISTED])
        more = f" (and {len(skipped) - _MAX_LISTED} more)" if len(skipped) > _MAX_LISTED else ""
        log.warning("%s: skipped %d bad sample(s), kept %d: %s%s", where, len(skipped), len(samples), first, more)
    return FileDataset(root, layout, samples, split=split, classes=classes, ignore_index=ignore_index,
                       skipped=skipped, report=report)
