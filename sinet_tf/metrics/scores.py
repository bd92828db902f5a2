"""The evaluation metrics in NumPy/OpenCV, images of any size (conventions:
:mod:`sinet_tf.metrics`)."""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["SegmentationMetrics", "mask_boundary", "boundary_f_score", "person_iou"]

_KERNEL3 = np.ones((3, 3), np.uint8)


def _as_batch(x, name) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must be [H, W] or [B, H, W] label maps, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got dtype {a.dtype}")
    return a


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a ``(2r+1)`` square (Chebyshev radius r); the border adds nothing."""
    if radius <= 0:
        return mask.astype(bool)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool)


def mask_boundary(mask: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Boundary pixels of ``mask``: pixels of ``mask`` whose 3x3 neighbourhood contains a pixel
    of ``other`` (default ``~mask``).  The image border is not a boundary.
    """
    mask = np.asarray(mask, bool)
    other = ~mask if other is None else np.asarray(other, bool)
    return mask & cv2.dilate(other.astype(np.uint8), _KERNEL3).astype(bool)


def boundary_f_score(pred_mask: np.ndarray, true_mask: np.ndarray, width: int = 3,
                     valid: np.ndarray | None = None) -> float:
    """Boundary F-measure of two binary masks (Csurka et al., BMVC 2013; Perazzi et al.'s
    contour accuracy F, CVPR 2016).

    ``Bp``/``Bt`` = boundary pixels of prediction / truth (:func:`mask_boundary`; for the
    truth only valid non-person pixels count as "the other class"; predicted boundary pixels
    on ignored pixels are dropped).  ``P = |Bp & dilate_w(Bt)| / |Bp|``,
    ``R = |Bt & dilate_w(Bp)| / |Bt|`` with a ``(2w+1)`` square dilation (Chebyshev distance
    <= w), ``F = 2PR / (P + R)``.  Both boundaries empty: 1.0; only one empty: 0.0.
    """
    pred_mask = np.asarray(pred_mask, bool)
    true_mask = np.asarray(true_mask, bool)
    valid = np.ones_like(true_mask) if valid is None else np.asarray(valid, bool)
    bt = mask_boundary(true_mask & valid, valid & ~true_mask)
    bp = mask_boundary(pred_mask) & valid
    nt, np_ = int(bt.sum()), int(bp.sum())
    if nt == 0 and np_ == 0:
        return 1.0
    if nt == 0 or np_ == 0:
        return 0.0
    precision = float((bp & _dilate(bt, width)).sum()) / np_
    recall = float((bt & _dilate(bp, width)).sum()) / nt
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def person_iou(pred_labels, true_labels, ignore_index: int = 255) -> np.ndarray:
    """Per-image IoU of class 1 ``[B]``; an image where both are empty counts 1.0."""
    p = _as_batch(pred_labels, "pred_labels")
    t = _as_batch(true_labels, "true_labels")
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} shapes differ")
    valid = t != ignore_index
    pp = (p == 1) & valid
    tt = (t == 1) & valid
    inter = (pp & tt).sum(axis=(1, 2)).astype(np.float64)
    union = (pp | tt).sum(axis=(1, 2)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


class SegmentationMetrics:
    """Streaming evaluation over images of any size (NumPy/OpenCV).

    ``update(pred_labels, true_labels)`` takes integer maps ``[H, W]`` or ``[B, H, W]``;
    ``result()`` returns a dict with

    * ``person_iou``: mean over images of the per-image IoU of class 1 (the number portrait
      papers report; an image where prediction and truth are both empty counts 1.0),
    * ``miou``: mean over classes of ``TP / (TP + FP + FN)`` from the dataset-level confusion
      matrix (classes absent from both prediction and truth are left out),
    * ``per_class_iou``: those IoUs (NaN for absent classes),
    * ``pixel_accuracy``: correct / valid pixels over the dataset,
    * ``boundary_f``: mean over images of the boundary F-score (:func:`boundary_f_score`,
      tolerance ``boundary_width`` px),
    * ``n_images``, ``per_image_iou`` (list, in update order) and ``per_image_boundary_f``.

    Label pixels equal to ``ignore_index`` are skipped everywhere; predicted labels outside
    ``[0, num_classes)`` raise ``ValueError``.
    """

    def __init__(self, num_classes: int = 2, ignore_index: int = 255, boundary_width: int = 3):
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2 (background + person)")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.boundary_width = int(boundary_width)
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.per_image_iou: list[float] = []
        self.per_image_boundary_f: list[float] = []

    def update(self, pred_labels, true_labels) -> None:
        p = _as_batch(pred_labels, "pred_labels")
        t = _as_batch(true_labels, "true_labels")
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and truth {t.shape} shapes differ")
        k = self.num_classes
        valid = t != self.ignore_index
        pv = p[valid].astype(np.int64)
        tv = t[valid].astype(np.int64)
        if pv.size and (pv.min() < 0 or pv.max() >= k):
            raise ValueError(f"predicted labels must lie in [0, {k}), got {pv.min()}..{pv.max()}")
        if tv.size and (tv.min() < 0 or tv.max() >= k):
            raise ValueError(f"true labels must lie in [0, {k}) or be {self.ignore_index}, "
                             f"got {tv.min()}..{tv.max()}")
        self.confusion += np.bincount(tv * k + pv, minlength=k * k).reshape(k, k)
        self.per_image_iou.extend(person_iou(p, t, self.ignore_index).tolist())
        for i in range(p.shape[0]):
            self.per_image_boundary_f.append(boundary_f_score(
                p[i] == 1, t[i] == 1, self.boundary_width, valid[i]))

    @property
    def n_images(self) -> int:
        return len(self.per_image_iou)

    def result(self) -> dict:
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        present = ~np.isnan(per_class)
        total = cm.sum()
        n = self.n_images
        return {
            "person_iou": float(np.mean(self.per_image_iou)) if n else float("nan"),
            "miou": float(per_class[present].mean()) if present.any() else float("nan"),
            "per_class_iou": per_class.tolist(),
            "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
            "boundary_f": float(np.mean(self.per_image_boundary_f)) if n else float("nan"),
            "n_images": n,
            "per_image_iou": list(self.per_image_iou),
            "per_image_boundary_f": list(self.per_image_boundary_f),
        }
