"""Dataset layouts: how ``load_dataset`` finds the image/mask pairs of a folder.

A layout is one :class:`Layout` subclass -- a ``name`` (recorded in
``FileDataset.layout``), a one-line ``description`` (the module documentation of
:mod:`sinet_tf.data.readers` and the "Looked for" error list it) and a
``detect(root, split)`` method -- plus one registration (``@register``). The registry is
ordered: :func:`scan` tries the layouts in registration order and the first whose
``detect`` returns something other than ``None`` wins. Adding a layout::

    from sinet_tf.data.layouts import Layout, register

    @register                       # or @register(before="rgba") for a higher priority
    class Photos(Layout):
        name = "photos"
        description = "photos/*.jpg with photos/*.mask.png beside them"

        def detect(self, root, split):
            folder = root / "photos"
            if not folder.is_dir():
                return None
            return [(p, p.with_name(p.stem + ".mask.png")) for p in sorted(folder.glob("*.jpg"))]

``detect`` returns ``None`` (not this layout), a list of ``(image, mask)`` paths or
:class:`Sample` records, a :class:`Found` (samples plus scan problems such as missing
partners), or a :class:`PairByStem` (two folders whose files are matched by file stem,
with missing partners and duplicate stems reported). Layout-wide problems (an empty or
malformed dataset) raise :class:`DataError` with ``structural=True``.

Splits: ``Layout.split_support`` says when a layout is tried: ``"none"`` (the default:
only without a split, so a layout that knows nothing of splits never hands the same
pairs out as both train and val), ``"optional"`` (with or without; ``detect`` receives
the split) or ``"required"`` (only with a split). With a split, once no layout matched
at the root, the layouts with ``split_subfolder = True`` are tried once more without a
split in a ``<split>/`` sub-folder (``train/images/`` + ``train/masks/``).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from sinet_tf.files import IMAGE_SUFFIXES

__all__ = ["Layout", "Found", "PairByStem", "register", "unregister", "registered", "names",
           "looked_for", "describe", "scan", "Sample", "Problem", "DataError", "LAYOUTS"]

# (image folder, mask folder) names, matched case-insensitively
MASK_FOLDER_PAIRS = (("images", "masks"), ("images", "labels"), ("img", "mask"), ("image", "label"),
                     ("jpegimages", "segmentationclass"), ("imgs", "masks"))
MATTE_IMAGE_FOLDERS = ("clip_img", "images", "image", "img")
MATTE_FOLDERS = ("matting", "alpha", "mattes")
SPLITS = ("train", "val", "test")
_LIST_SUFFIXES = (".txt", ".lst", ".list")


# --------------------------------------------------------------------------- records
# What a layout finds (Sample) and what can go wrong (Problem, DataError); the readers
# use the same records for decoding problems.


@dataclass(frozen=True)
class Sample:
    """One pair: ``image`` and its ``mask`` (``None`` when the matte is the image's alpha
    channel); ``matte`` says the mask is an alpha matte (person = alpha >= 128)."""

    image: Path
    mask: Path | None
    matte: bool = False


@dataclass(frozen=True)
class Problem:
    """A problem found in a dataset: ``kind`` (e.g. ``"unreadable_image"``,
    ``"missing_mask"``, ``"unexpected_mask_values"``), the ``path`` concerned and a
    human-readable ``message``."""

    kind: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def to_dict(self) -> dict:
        return asdict(self)


class DataError(ValueError):
    """A dataset cannot be used as is. ``problems`` holds the problem(s); ``structural``
    is True for problems that concern the dataset as a whole (unknown layout, empty
    dataset, missing or malformed list file), which ``on_error="skip"`` cannot skip."""

    def __init__(self, message: str, problems: Sequence[Problem] = (), structural: bool = False):
        super().__init__(message)
        self.problems = list(problems)
        self.structural = structural


def _structural(kind: str, path, message: str) -> DataError:
    return DataError(message, [Problem(kind, str(path), message)], structural=True)


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Found:
    """A detector's full answer: the ``samples`` (``Sample`` records or ``(image, mask)``
    paths, in order), scan ``problems`` (e.g. a listed file that does not exist) and, when
    it is not the detector's own name, the ``layout`` to record."""

    samples: Sequence = ()
    problems: Sequence[Problem] = ()
    layout: str | None = None


@dataclass(frozen=True)
class PairByStem:
    """Images under ``images``, masks under ``masks`` (both searched recursively, hidden
    files skipped), matched by file stem; ``matte``: the masks are alpha mattes. Images
    without a mask, masks without an image and duplicate stems are scan problems; two
    folders without any image file raise an empty-dataset error."""

    images: Path
    masks: Path
    matte: bool = False


class Layout:
    """One dataset layout. Subclass it, set ``name`` and ``description``, implement
    ``detect`` and register it (``@register``); see the module docstring."""

    name: str = ""
    description: str = ""      # one line: the docs and the "Looked for" error show it
    split_support: str = "none"  # "none", "optional" or "required" (module docstring)
    split_subfolder: bool = False

    def detect(self, root: Path, split: str | None):
        """``None`` when ``root`` is not in this layout; otherwise the pairs (a list of
        ``(image, mask)`` / ``Sample``, a :class:`Found` or a :class:`PairByStem`)."""
        raise NotImplementedError

    def looked_for(self, split: str | None) -> str | None:
        """What the "Looked for" error says this layout looks for (``None``: nothing); by
        default the description without its final full stop."""
        return self.description.rstrip(".")

    def applies(self, split: str | None) -> bool:
        """Whether the layout is tried for this split (``split_support``)."""
        return self.split_support == "optional" or (self.split_support == "required") == (split is not None)

    def __repr__(self) -> str:
        return f"<layout {self.name!r}>"


_REGISTRY: list[Layout] = []
_SPLIT_SUPPORT = ("none", "optional", "required")


def register(layout=None, *, before: str | None = None):
    """Add a layout (a :class:`Layout` subclass, instantiated here, or an instance) to the
    registry: last by default (lowest priority), or just ahead of the layout named
    ``before``. Usable as ``@register`` or ``@register(before="rgba")``; returns its
    argument unchanged."""
    if layout is None:
        return lambda lay: register(lay, before=before)
    obj = layout() if isinstance(layout, type) else layout
    if not isinstance(obj, Layout):
        raise TypeError(f"register() takes a Layout subclass or instance, got {layout!r}")
    if not isinstance(obj.name, str) or not obj.name:
        raise ValueError(f"{layout!r}: a layout needs a name")
    if not isinstance(obj.description, str) or not obj.description or "\n" in obj.description:
        raise ValueError(f"layout {obj.name!r}: the description must be one non-empty line")
    if obj.name in names():
        raise ValueError(f"layout {obj.name!r} is already registered")
    if obj.split_support not in _SPLIT_SUPPORT:
        raise ValueError(f"layout {obj.name!r}: split_support must be one of {', '.join(_SPLIT_SUPPORT)}, "
                         f"got {obj.split_support!r}")
    if obj.split_subfolder and obj.split_support == "required":
        raise ValueError(f"layout {obj.name!r}: split_subfolder detects without a split, which "
                         "split_support='required' rules out")
    if before is None:
        _REGISTRY.append(obj)
    elif before in names():
        _REGISTRY.insert(names().index(before), obj)
    else:
        raise ValueError(f"register(before={before!r}): no such layout (registered: {', '.join(names())})")
    return layout


def unregister(name: str) -> Layout:
    """Remove the layout named ``name`` from the registry and return it."""
    for i, obj in enumerate(_REGISTRY):
        if obj.name == name:
            return _REGISTRY.pop(i)
    raise ValueError(f"no layout named {name!r} (registered: {', '.join(names())})")


def registered() -> tuple[Layout, ...]:
    """The registered layouts, in priority order."""
    return tuple(_REGISTRY)


def names() -> tuple[str, ...]:
    """The registered layout names, in priority order (also ``LAYOUTS``)."""
    return tuple(obj.name for obj in _REGISTRY)


def __getattr__(name: str):
    # LAYOUTS follows the registry (PEP 562), so a layout registered later is listed too
    if name == "LAYOUTS":
        return names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def looked_for(split: str | None) -> str:
    """The "Looked for: ..." list of the unknown-layout errors. With a split: the layouts
    tried with it, in priority order; without: the layouts tried without a split, then
    those that need one."""
    if split:
        texts = [obj.looked_for(split) for obj in _REGISTRY if obj.applies(split) or obj.split_subfolder]
        return "; ".join(t for t in texts if t)
    ordered = [obj for obj in _REGISTRY if obj.applies(None)] + [obj for obj in _REGISTRY if not obj.applies(None)]
    texts = [t for t in (obj.looked_for(None) for obj in ordered) if t]
    return texts[0] if len(texts) < 2 else ", ".join(texts[:-1]) + ", or " + texts[-1]


def describe(width: int = 92) -> str:
    """The registered layouts as a reStructuredText-ish list, one entry per layout (name and
    description), in priority order (the readers' module docstring is built from it)."""
    lines = []
    for obj in _REGISTRY:
        head = f'``"{obj.name}"``'.ljust(15) + " "
        lines.append(textwrap.fill(obj.description, width, initial_indent=head,
                                   subsequent_indent=" " * len(head), break_on_hyphens=False))
    return "\n".join(lines)


# --------------------------------------------------------------------------- file helpers


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def _subdir(parent: Path, name: str) -> Path | None:
    """Case-insensitive child folder lookup."""
    if not parent.is_dir():
        return None
    exact = parent / name
    if exact.is_dir():
        return exact
    for child in parent.iterdir():
        if child.is_dir() and child.name.lower() == name.lower():
            return child
    return None


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_image(p) and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))


def _find_folder_pair(base: Path, candidates: Sequence[tuple[str, str]], split: str | None = None):
    """The first (image folder, mask folder) of ``candidates`` under ``base`` (with
    ``split``: ``<img>/<split>`` + ``<mask>/<split>``), or None."""
    for img_name, mask_name in candidates:
        img, mask = _subdir(base, img_name), _subdir(base, mask_name)
        if img is None or mask is None:
            continue
        if split is None:
            return img, mask
        img_s, mask_s = _subdir(img, split), _subdir(mask, split)
        if img_s is not None and mask_s is not None:
            return img_s, mask_s
    return None


def _pair_by_stem(img_dir: Path, mask_dir: Path, matte: bool):
    """Samples and scan problems (missing partners, duplicate stems)."""
    problems: list[Problem] = []
    images, masks = _files(img_dir), _files(mask_dir)

    def by_stem(files, role):
        groups: dict[str, list[Path]] = {}
        for f in files:
            groups.setdefault(f.stem, []).append(f)
        unique = {}
        for stem, group in groups.items():
            if len(group) > 1:
                for f in group:
                    others = ", ".join(str(g) for g in group if g != f)
                    problems.append(Problem("duplicate_stem", str(f),
                                            f"duplicate {role} stem {stem!r} (also {others}): cannot tell "
                                            "which file pairs with which"))
            else:
                unique[stem] = group[0]
        return unique, set(groups)

    img_map, img_stems = by_stem(images, "image")
    mask_map, mask_stems = by_stem(masks, "mask")
    samples = []
    for stem, img in img_map.items():
        if stem in mask_map:
            samples.append(Sample(img, mask_map[stem], matte))
        elif stem not in mask_stems:
            problems.append(Problem("missing_mask", str(img),
                                    f"image without a {'matte' if matte else 'mask'}: no file named "
                                    f"{stem}.* in {mask_dir}"))
    for stem, mask in mask_map.items():
        if stem not in img_stems:
            problems.append(Problem("missing_image", str(mask),
                                    f"{'matte' if matte else 'mask'} without an image: no file named "
                                    f"{stem}.* in {img_dir}"))
    return sorted(samples, key=lambda s: str(s.image)), problems, len(images) + len(masks)


_COMMENT = re.compile(r"(?:^|\s)#")


def _parse_list(list_file: Path):
    """Samples from a list file (``image mask`` pairs, or EG1800 names); returns
    (samples, problems, layout)."""
    if not list_file.is_file():
        raise _structural("missing_list", list_file, f"list file not found: {list_file}")
    base = list_file.parent
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise _structural("bad_list", list_file, f"{list_file}: cannot read the list file: {e}") from None
    samples: list[Sample] = []
    problems: list[Problem] = []
    seen: set[Path] = set()
    layout = None
    eg_images, eg_labels = _subdir(base, "Images"), _subdir(base, "Labels")
    for lineno, line in enumerate(text.splitlines(), 1):
        # a comment starts with a # at the beginning of a line or after a space: a # inside a
        # file name (photo#1.jpg) is part of the name
        line = _COMMENT.split(line, 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) == 2:
            image, mask = base / parts[0], base / parts[1]
            kind = "list"
        elif len(parts) == 1 and eg_images is not None and eg_labels is not None:
            kind = "eg1800"
            image = base / parts[0] if (base / parts[0]).is_file() else eg_images / parts[0]
            stem = Path(parts[0]).stem
            mask = eg_labels / f"{stem}.png"
            if not mask.is_file():
                alts = sorted(p for p in eg_labels.glob(f"{stem}.*") if _is_image(p))
                if alts:
                    mask = alts[0]
        else:
            hint = ("; a list of image names only needs Images/ and Labels/ folders beside it (EG1800)"
                    if len(parts) == 1 else "")
            raise _structural("bad_list", list_file,
                              f"{list_file}:{lineno}: expected 'image mask' (two whitespace-separated "
                              f"paths), got {len(parts)} field(s): {line!r}{hint}")
        if layout is not None and kind != layout:
            raise _structural("bad_list", list_file,
                              f"{list_file}:{lineno}: mixes 'image mask' lines and image-name-only lines")
        layout = kind
        if image in seen:
            problems.append(Problem("duplicate_stem", str(image),
                                    f"listed more than once in {list_file.name} (line {lineno})"))
            continue
        seen.add(image)
        missing = [(role, p) for role, p in (("image", image), ("mask", mask)) if not p.is_file()]
        if missing:
            for role, p in missing:
                partner = mask if role == "image" else image
                problems.append(Problem(f"missing_{role}", str(p),
                                        f"{role} listed in {list_file.name} (line {lineno}) does not exist"
                                        f" (partner: {partner})"))
            continue
        in_matte_dir = mask.is_relative_to(base) and any(
            part.lower() in MATTE_FOLDERS for part in mask.relative_to(base).parts[:-1])
        samples.append(Sample(image, mask, in_matte_dir))
    if layout is None:
        raise _structural("empty_dataset", list_file, f"{list_file}: the list file names no pairs (empty dataset)")
    return samples, problems, layout


def _rgba_folder(root: Path) -> Path | None:
    """Folder of RGBA PNGs (root itself, or images/ / clip_img/), checked on the first few."""
    from PIL import Image

    for folder in [root] + [d for d in (_subdir(root, n) for n in MATTE_IMAGE_FOLDERS) if d is not None]:
        pngs = sorted(p for p in folder.iterdir() if _is_image(p) and p.suffix.lower() == ".png")[:5]
        if not pngs:
            continue
        try:
            with Image.open(pngs[0]) as im:
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    return folder
        except Exception:
            continue
    return None


# --------------------------------------------------------------------------- built-in layouts
# Registration order is priority order.

_PAIRS_TEXT = ", ".join(f"{i}/+{m}/" for i, m in MASK_FOLDER_PAIRS[:5])
_MATTES_TEXT = f"{'/'.join(MATTE_IMAGE_FOLDERS[:2])}/ + {'/'.join(MATTE_FOLDERS)}/ (alpha mattes)"


def _eg1800_split(split: str) -> str:
    return "test" if split == "val" else split


@register
class ListFile(Layout):
    """``<split>.txt`` (``.lst``, ``.list``) beside the data; a list file passed directly
    as the source is read the same way (:func:`scan`). A list of image names only, with
    ``Images/`` and ``Labels/`` beside it, is recorded as ``"eg1800"``."""

    name = "list"
    description = ("a list file of ``image mask`` pairs (paths relative to the list file's folder; blank "
                   "lines and comments, from a ``#`` at a line's start or after a space, ignored): ``source`` is the file, or a folder plus ``split`` "
                   "(``<split>.txt``).")
    split_support = "required"

    def detect(self, root, split):
        list_file = next((root / f"{split}{s}" for s in _LIST_SUFFIXES if (root / f"{split}{s}").is_file()), None)
        if list_file is None:
            return None
        samples, problems, layout = _parse_list(list_file)
        return Found(samples, problems, layout)

    def looked_for(self, split):
        return f"{split}.txt (list of 'image mask' pairs)" if split else \
            "a list file (pass the .txt, or the folder plus split=)"


@register
class EG1800(Layout):
    name = "eg1800"
    description = ("EG1800 / PortraitNet: ``Images/``, ``Labels/`` and ``eg1800_train.txt`` / "
                   "``eg1800_test.txt`` holding image names only (``split=\"val\"`` reads the test list); "
                   "the label is the same stem in ``Labels/`` (``.png`` preferred).")
    split_support = "required"

    def detect(self, root, split):
        eg = root / f"eg1800_{_eg1800_split(split)}.txt"
        if not eg.is_file():
            return None
        samples, problems, _ = _parse_list(eg)
        return Found(samples, problems)

    def looked_for(self, split):
        return f"eg1800_{_eg1800_split(split)}.txt with Images/+Labels/ (EG1800)" if split else None


@register
class Folders(Layout):
    name = "folders"
    description = ("image + mask sub-folders matched by file stem (``images/``+``masks/``, "
                   "``Images/``+``Labels/``, ``img/``+``mask/``, ``image/``+``label/``, "
                   "``JPEGImages/``+``SegmentationClass/``; case-insensitive, searched recursively); "
                   "with ``split``: ``images/<split>/``+``masks/<split>/`` or "
                   "``<split>/images/``+``<split>/masks/``.")
    split_support = "optional"
    split_subfolder = True

    def detect(self, root, split):
        found = _find_folder_pair(root, MASK_FOLDER_PAIRS, split)
        return None if found is None else PairByStem(*found)

    def looked_for(self, split):
        if split:
            return f"images/{split}/+masks/{split}/ or {split}/images/+{split}/masks/ (any of: {_PAIRS_TEXT})"
        return f"image+mask folders ({_PAIRS_TEXT}; case-insensitive)"


@register
class Mattes(Layout):
    name = "mattes"
    description = ("a separate alpha-matte folder (``matting/``, ``alpha/``, ``mattes/``) beside "
                   "``clip_img/`` or ``images/`` (AISegment style), matched by stem (splits as for "
                   "``\"folders\"``); RGBA matte files use their alpha channel.")
    split_support = "optional"
    split_subfolder = True

    def detect(self, root, split):
        found = _find_folder_pair(root, [(i, m) for m in MATTE_FOLDERS for i in MATTE_IMAGE_FOLDERS], split)
        return None if found is None else PairByStem(*found, matte=True)

    def looked_for(self, split):
        return f"{_MATTES_TEXT} under {split}/" if split else _MATTES_TEXT


@register
class RGBA(Layout):
    name = "rgba"
    description = ("a folder of RGBA PNGs (directly, or in ``images/`` / ``clip_img/``) whose alpha "
                   "channel is the matte.")

    def detect(self, root, split):
        folder = _rgba_folder(root)
        if folder is None:
            return None
        files = _files(folder) if folder != root else sorted(p for p in root.iterdir() if _is_image(p))
        return [Sample(f, None, True) for f in files]

    def looked_for(self, split):
        return "a folder of RGBA PNGs (alpha = matte)"


# --------------------------------------------------------------------------- detection


def _as_sample(entry, layout: Layout) -> Sample:
    if isinstance(entry, Sample):
        return entry
    try:
        image, mask = entry
    except (TypeError, ValueError):
        raise TypeError(f"layout {layout.name!r}: detect() gave {entry!r}; expected (image, mask) paths "
                        "or a Sample") from None
    return Sample(Path(image), Path(mask))


def _resolve(root: Path, layout: Layout, found, mattes: bool):
    if isinstance(found, PairByStem):
        samples, problems, n = _pair_by_stem(found.images, found.masks, found.matte or mattes)
        if n == 0:
            raise _structural("empty_dataset", found.images,
                              f"{found.images} and {found.masks} hold no image files "
                              f"({', '.join(IMAGE_SUFFIXES)}): empty dataset")
        return root, layout.name, samples, problems
    if not isinstance(found, Found):
        found = Found(list(found))
    samples = [_as_sample(s, layout) for s in found.samples]
    return root, found.layout or layout.name, samples, list(found.problems)


def scan(source, split: str | None = None, mattes: bool = False):
    """Find the layout of ``source`` (a folder, or a list file): returns (root, layout
    name, samples, scan problems). ``mattes`` only words the missing-partner problems of
    stem-matched folders as mattes. Unknown or empty layouts raise :class:`DataError`."""
    src = Path(source)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (or None), got {split!r}")
    if not src.exists():
        if src.suffix.lower() in _LIST_SUFFIXES:
            raise _structural("missing_list", src, f"list file not found: {src}")
        raise _structural("not_found", src, f"dataset not found: {src}")
    if src.is_file():
        if src.suffix.lower() in IMAGE_SUFFIXES:
            raise _structural("unknown_layout", src,
                              f"{src}: is an image; pass the dataset folder or a list file. Looked for: "
                              + looked_for(None))
        samples, problems, layout = _parse_list(src)
        return src.parent, layout, samples, problems
    root = src
    if not any(root.iterdir()):
        raise _structural("empty_dataset", root, f"{root}: the folder is empty (empty dataset)")
    layouts = registered()
    for layout in layouts:
        if layout.applies(split):
            found = layout.detect(root, split)
            if found is not None:
                return _resolve(root, layout, found, mattes)
    if split is not None:
        sub = _subdir(root, split)
        if sub is not None:
            for layout in layouts:
                if layout.split_subfolder:
                    found = layout.detect(sub, None)
                    if found is not None:
                        return _resolve(root, layout, found, mattes)
        raise _structural("unknown_layout", root,
                          f"{root}: no {split!r} split found. Looked for: {looked_for(split)}")
    lists = sorted(p.name for p in root.iterdir() if p.suffix.lower() in _LIST_SUFFIXES)
    hint = f" Found list file(s) {', '.join(lists)}: pass split=... or the list file itself." if lists else ""
    raise _structural("unknown_layout", root,
                      f"{root}: unrecognised dataset layout. Looked for: {looked_for(None)}.{hint}")
