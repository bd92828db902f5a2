"""Edge refinement guided by the photo: the guided filter on the person probability.

The guided filter (He, Sun and Tang, "Guided Image Filtering", TPAMI 2013) with a grey
guide ``I`` (the photo's luma in [0, 1]: ``(0.299 R + 0.587 G + 0.114 B) / 255``) and input
``p`` (the person probability) fits, in every ``(2r+1) x (2r+1)`` window ``w_k``, the linear
model ``q = a_k I + b_k`` (Eq. 1) that best explains ``p`` with a penalty ``eps a_k^2``
(Eq. 3):

    ``a_k = (mean_k(I p) - mean_k(I) mean_k(p)) / (var_k(I) + eps)``      (Eq. 5)
    ``b_k = mean_k(p) - a_k mean_k(I)``                                 (Eq. 6)
    ``q_i = mean_i(a) I_i + mean_i(b)``                                 (Eq. 8)

so the output follows the photo's edges where ``p`` changes across them. Every mean is a
box filter over the window clipped to the image (the count of pixels inside it divides
the sum), which is what AVERAGE_POOL_2D with SAME padding computes. ``var_k(I)``, computed
as ``mean_k(I^2) - mean_k(I)^2``, is clamped at 0: in float16 (a phone's GPU may run the
exported filter so) rounding can make it slightly negative, and ``eps`` (not below 1e-3,
about float16's resolution near 1) keeps the division bounded. The defaults (radius,
``eps``) were chosen on humanseg290's train split by ``benchmarks/edge_refine.py``.

The model's probability is only ``224 x 224``; the photo is larger. :func:`guided_upsample`
computes ``mean(a)``, ``mean(b)`` at the model's resolution (with the model's input as
guide), resizes these smooth coefficient maps bilinearly to the photo and applies Eq. 8
with the full-resolution guide: the fast guided filter (He and Sun, "Fast Guided Filter",
arXiv:1505.00996, 2015, Algorithm 2, here with the model's own input as the subsampled
guide; the same low-to-high-resolution step as the guided filtering layer of Wu et al.,
"Fast End-to-End Trainable Guided Filter", CVPR 2018), at the cost of two resizes and a
multiply-add per photo pixel. :func:`sinet_tf.postprocess.layers.with_guided_refinement`
puts the filter inside an exported model, at the model's resolution with its
coefficients on 2 x 2 blocks (:func:`guided_filter` with ``subsample=2``, a quarter of the
box-filter work), out of CONV_2D (the luma), AVERAGE_POOL_2D,
MUL, ADD, SUB, DIV, MAXIMUM and MINIMUM, all run by the mobile GPU delegate. Outputs are
clipped to [0, 1].
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["DEFAULT_EPS", "DEFAULT_EXPORT_SUBSAMPLE", "DEFAULT_RADIUS", "LUMA", "REFINE_MODES", "box_mean", "check_refine",
           "guided_coefficients", "guided_filter", "guided_upsample", "luma"]

REFINE_MODES = ("none", "guided")
DEFAULT_RADIUS = 5      # window radius in model-input pixels (an 11 x 11 window at 224 x 224)
DEFAULT_EPS = 1e-3      # regularization of Eq. 3, for a guide in [0, 1]; not below float16's resolution
DEFAULT_EXPORT_SUBSAMPLE = 2  # the exported filter computes its coefficients on 2x2 blocks
LUMA = (0.299, 0.587, 0.114)


def check_refine(radius, eps) -> tuple[int, float]:
    """``(radius, eps)`` validated: a whole radius >= 1 and eps > 0, else a one-line error."""
    try:
        r = int(radius)
        if r != float(radius):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"--refine-radius {radius!r}: expected a whole number of pixels >= 1") from None
    if r < 1:
        raise ValueError(f"--refine-radius {radius!r}: expected a whole number of pixels >= 1")
    try:
        e = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"--refine-eps {eps!r}: expected a number > 0") from None
    if not (e > 0 and np.isfinite(e)):
        raise ValueError(f"--refine-eps {eps!r}: expected a number > 0")
    return r, e


def luma(rgb: np.ndarray) -> np.ndarray:
    """The grey guide in [0, 1] (float32) of RGB pixels in [0, 255]."""
    rgb = np.asarray(rgb, np.float32)
    return (rgb @ (np.array(LUMA, np.float32) / 255.0)).astype(np.float32)


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the ``(2r+1) x (2r+1)`` window around every pixel, the window clipped to the
    image (a 2-D array, or ``[h, w, c]`` channel by channel)."""
    x = np.asarray(x, np.float32)
    k = (2 * radius + 1, 2 * radius + 1)
    total = cv2.boxFilter(x, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    count = cv2.boxFilter(np.ones(x.shape[:2], np.float32), -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    return total / (count if x.ndim == 2 else count[..., None])


def guided_coefficients(guide: np.ndarray, prob: np.ndarray, radius: int = DEFAULT_RADIUS,
                        eps: float = DEFAULT_EPS) -> tuple[np.ndarray, np.ndarray]:
    """``mean(a)``, ``mean(b)`` of Eq. 5, 6 and 8 for a grey ``guide`` and ``prob`` (same size)."""
    guide = np.asarray(guide, np.float32)
    prob = np.asarray(prob, np.float32)
    if guide.shape != prob.shape:
        raise ValueError(f"guide {guide.shape} and probability {prob.shape} differ in size")
    m_i, m_p = box_mean(guide, radius), box_mean(prob, radius)
    var_i = np.maximum(box_mean(guide * guide, radius) - m_i * m_i, 0.0)
    cov_ip = box_mean(guide * prob, radius) - m_i * m_p
    a = cov_ip / (var_i + np.float32(eps))
    b = m_p - a * m_i
    return box_mean(a, radius), box_mean(b, radius)


def guided_filter(guide: np.ndarray, prob: np.ndarray, radius: int = DEFAULT_RADIUS,
                  eps: float = DEFAULT_EPS, subsample: int = 1) -> np.ndarray:
    """Eq. 8 at the guide's resolution, clipped to [0, 1]. With ``subsample`` ``s > 1`` the
    coefficients come from the guide and probability averaged over ``s x s`` blocks, with
    radius ``max(1, radius // s)``, and are resized back bilinearly before Eq. 8 (the fast
    guided filter, He and Sun 2015, Algorithm 2); the size must be a multiple of ``s``."""
    guide = np.asarray(guide, np.float32)
    prob = np.asarray(prob, np.float32)
    if subsample == 1:
        mean_a, mean_b = guided_coefficients(guide, prob, radius, eps)
    else:
        h, w = guide.shape
        if h % subsample or w % subsample:
            raise ValueError(f"a guide of {h}x{w} is not a multiple of the subsampling {subsample}")
        small = (w // subsample, h // subsample)
        mean_a, mean_b = guided_coefficients(cv2.resize(guide, small, interpolation=cv2.INTER_AREA),
                                             cv2.resize(prob, small, interpolation=cv2.INTER_AREA),
                                             max(1, radius // subsample), eps)
        mean_a = cv2.resize(mean_a, (w, h), interpolation=cv2.INTER_LINEAR)
        mean_b = cv2.resize(mean_b, (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(mean_a * guide + mean_b, 0.0, 1.0)


def guided_upsample(guide_low: np.ndarray, prob_low: np.ndarray, guide_high: np.ndarray,
                    radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS, box=None) -> np.ndarray:
    """Fast guided filter (module docstring): coefficients from ``guide_low``/``prob_low``
    (the model's resolution), cut to ``box`` ``(top, left, h, w)`` when given (the photo's
    part of a letterboxed input), resized bilinearly to ``guide_high``'s size and applied
    to ``guide_high`` (Eq. 8); clipped to [0, 1]."""
    mean_a, mean_b = guided_coefficients(guide_low, prob_low, radius, eps)
    if box is not None:
        top, left, h, w = box
        mean_a, mean_b = mean_a[top:top + h, left:left + w], mean_b[top:top + h, left:left + w]
    H, W = guide_high.shape[:2]
    mean_a = cv2.resize(mean_a, (W, H), interpolation=cv2.INTER_LINEAR)
    mean_b = cv2.resize(mean_b, (W, H), interpolation=cv2.INTER_LINEAR)
    return np.clip(mean_a * np.asarray(guide_high, np.float32) + mean_b, 0.0, 1.0)
