"""Files: reading photos upright with clear errors, and atomic writes (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np

__all__ = ["read_rgb", "stderr_captured", "exif_orientation", "apply_exif_orientation", "atomic_path", "write_atomic",
           "write_png_atomic", "write_image_atomic", "save_keras_atomic", "decode_image", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1..8) of an encoded image; 1 when there is none or it cannot be parsed."""
    if b"Exif" not in data[:131072] and b"eXIf" not in data:
        return 1
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            o = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # EXIF we cannot parse: leave the photo as stored
        return 1
    return o if 1 <= o <= 8 else 1


def apply_exif_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an ``[H, W, ...]`` array (same result as
    ``PIL.ImageOps.exif_transpose``), so the photo comes out upright."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = np.rot90(a, 2).swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


# The warnings libjpeg prints (to the process's stderr, through its default error manager,
# which OpenCV keeps) when it decodes a damaged JPEG only partly: it fills what it could not
# decode with grey, and cv2.imdecode still returns an image. Their texts come from libjpeg's
# jerror.h (JWRN_* messages).
_LIBJPEG_WARNING = re.compile(r"^(Corrupt JPEG data|Premature end of JPEG file|Invalid SOS parameters|"
                              r"Unknown Adobe color transform|Warning: unknown JFIF revision|"
                              r"Application transferred too many scanlines|Inconsistent progression|"
                              r"Corrupt JPEG data: bad|Invalid (?:crop|color quantization)).*")
_STDERR_LOCK = threading.Lock()
_CAPTURE: list = []


@contextlib.contextmanager
def stderr_captured():
    """File descriptor 2 redirected to a temporary file (one capture at a time); yields a
    list that receives the lines native code wrote there meanwhile (none where the process
    has no file descriptor 2)."""
    lines: list[str] = []
    with _STDERR_LOCK:
        if not _CAPTURE:
            _CAPTURE.append(tempfile.TemporaryFile())
        capture = _CAPTURE[0]
        capture.seek(0)
        capture.truncate()
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError):
            pass
        try:
            saved = os.dup(2)
        except OSError:   # no file descriptor 2 to redirect (an embedding host): nothing is captured
            yield lines
            return
        try:
            os.dup2(capture.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines.extend(capture.read().decode("utf-8", "replace").splitlines())


_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")   # after entropy-coded data: not a stuffed 0xff00, not RSTn


def _jpeg_truncation(buf: bytes) -> str | None:
    """Walks the JPEG's segments (ITU T.81, Annex B) to its end-of-image marker: a file that
    ends before it was cut short or overwritten, which OpenCV's memory source hides from
    libjpeg (it feeds an end marker of its own, so no warning is given)."""
    i, n = 2, len(buf)
    while i + 1 < n:
        if buf[i] != 0xFF:
            return f"stray bytes at offset {i} where a JPEG marker should be"
        marker = buf[i + 1]
        if marker == 0xFF:                                # fill byte
            i += 1
        elif marker == 0xD9:                              # end of image
            return None
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:    # markers without a length
            i += 2
        elif i + 3 >= n:
            break
        elif marker == 0xDA:                              # start of scan: entropy-coded data up to the next marker
            m = _NEXT_MARKER.search(buf, i + 2 + int.from_bytes(buf[i + 2:i + 4], "big"))
            if m is None:
                break
            i = m.start()
        else:
            i += 2 + int.from_bytes(buf[i + 2:i + 4], "big")
    return "Premature end of JPEG file (no end-of-image marker: truncated or overwritten)"


def decode_image(data, flags: int = cv2.IMREAD_UNCHANGED) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imdecode`` of encoded bytes, plus the warnings libjpeg gave for a JPEG it could
    decode only partly ("Corrupt JPEG data: premature end of data segment", "... bad
    Huffman code", "Premature end of JPEG file", ...): such a photo comes back as an array
    whose damaged part is flat grey, so callers treat a warning as an unreadable file. A
    JPEG that ends before its end-of-image marker is reported too (OpenCV pads such a file
    silently). Damage that still decodes as valid JPEG data gives no warning and cannot be
    told from a real photo by a decoder."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        return None, []
    if bytes(buf[:3]) != b"\xff\xd8\xff":
        return cv2.imdecode(buf, flags), []
    with stderr_captured() as lines:
        arr = cv2.imdecode(buf, flags)
    warnings = [line.strip() for line in lines if _LIBJPEG_WARNING.match(line.strip())]
    if arr is not None:
        truncated = _jpeg_truncation(buf.tobytes())
        if truncated:
            warnings.append(truncated)
    others = [line for line in lines if not _LIBJPEG_WARNING.match(line.strip())]
    if others:   # another thread's output written while we listened: pass it on
        print("\n".join(others), file=sys.stderr)
    return arr, warnings


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as upright ``uint8 [H, W, 3]`` RGB: greyscale and alpha images are
    converted, and the EXIF orientation is applied (as the dataset readers do). A JPEG
    that libjpeg decodes only partly is refused (:func:`decode_image`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # the orientation is applied below, explicitly
    bgr, warnings = decode_image(data, flags)
    if bgr is None:
        raise ValueError(f"{path}: cannot decode this file as an image (corrupt, truncated or not an image)")
    if warnings:
        raise ValueError(f"{path}: corrupt JPEG data ({'; '.join(dict.fromkeys(warnings))}): it decodes only partly")
    return apply_exif_orientation(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), exif_orientation(data.tobytes()))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """A temporary file beside ``path`` for a writer that needs a file name (e.g. a video
    writer, which picks the container from ``suffix``, default ``path``'s); renamed over
    ``path`` when the block ends without an error, removed otherwise. An ``OSError`` about
    the temporary file (no permission, full disk) is raised about ``path``, the name the
    user gave."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix or ".tmp")
        os.close(fd)
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        if e.errno is not None and (e.filename is None or str(e.filename).startswith(
                str(path.parent / f".{path.name}."))):
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp):
    if tmp is not None and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename, so an existing
    file is only replaced by a complete new one."""
    path = Path(path)
    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_bytes(data)
    return path


def write_image_atomic(image: np.ndarray, path: str | os.PathLike, fmt: str | None = None,
                       quality: int = 95) -> Path:
    """Encode ``image`` (grey, or RGB) as ``fmt`` (default: ``path``'s suffix; ``.png``,
    ``.jpg`` at ``quality``, ...) and write it through a temporary file + rename."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    fmt = (fmt or Path(path).suffix or ".png").lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(fmt, img, params)
    if not ok:
        raise ValueError(f"{path}: {fmt[1:].upper()} encoding failed for an array of shape {img.shape} "
                         f"and dtype {img.dtype}")
    return write_atomic(buf.tobytes(), path)


def write_png_atomic(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Encode ``image`` (grey, or RGB) as PNG and write it through a temporary file + rename."""
    return write_image_atomic(image, path, fmt=".png")


def save_keras_atomic(model, path: str | os.PathLike) -> Path:
    """``model.save`` to a temporary ``.keras`` file beside ``path``, then rename over it.
    A model with a non-finite weight (NaN or inf) is refused: such a file would load and
    predict garbage without an error."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: the output must be a .keras file")
    for var in getattr(model, "weights", []):
        if not np.isfinite(np.asarray(var)).all():
            raise ValueError(f"{path}: not written: weight {getattr(var, 'path', var.name)} of model "
                             f"{model.name!r} holds NaN or inf")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    except OSError as e:   # about the name the user gave, not the temporary one
        if e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, str(path)) from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
