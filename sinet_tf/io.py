"""Image reading and writing with clear errors and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

__all__ = ["read_rgb", "write_atomic", "write_png_atomic", "save_keras_atomic", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``uint8 [H, W, 3]`` RGB (greyscale and alpha images are converted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError(f"{path}: cannot decode this file as an image (corrupt, truncated or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename, so an existing
    file is only replaced by a complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_png_atomic(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Encode ``image`` (grey, or RGB) as PNG and write it through a temporary file + rename."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed for an array of shape {img.shape} and dtype {img.dtype}")
    return write_atomic(buf.tobytes(), path)


def save_keras_atomic(model, path: str | os.PathLike) -> Path:
    """``model.save`` to a temporary ``.keras`` file beside ``path``, then rename over it."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: the output must be a .keras file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
