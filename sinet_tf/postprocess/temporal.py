"""Temporal smoothing of person mattes in videos: cheap enough for a phone, and exportable.

Both smoothers work at the model's resolution (on the person probability the model
returns for the letterboxed frame, before it is resized to the frame), one step per frame:

``ema``   a gated exponential moving average of the probability. With ``p`` the frame's
          probability and ``m`` the previous output,

              ``w = min(1, max(1 - s, |p - m|))``,   ``out = m + w (p - m)``

          ``s`` (``strength``, in [0, 1)) is the weight the previous matte keeps where the
          new probability barely changed: small changes (sensor noise, flicker around the
          0.5 threshold) are averaged over about ``1 / (1 - s)`` frames, while a change of
          ``d`` moves the output by at least ``d^2`` at once, so an edge that really moves
          (``|p - m|`` near 1) is followed at once instead of leaving a ghost. ``s = 0`` is no
          smoothing. On a static scene the output converges to ``p`` geometrically, at a rate
          of at most ``s`` per frame. Only ``p`` and ``m`` are needed, so the step runs inside
          an exported model as a second input
          (:func:`sinet_tf.postprocess.layers.with_temporal_input`): ABS, SUB, MUL,
          ADD, MAXIMUM, MINIMUM, which the mobile GPU delegate runs. A previous matte of
          :data:`NO_HISTORY` (-1) makes ``w = 1``: the output is the frame's own probability,
          which is how a video starts.
``flow``  the same step after motion compensation: the previous output is first warped into
          the current frame along the dense optical flow between the two model inputs
          (OpenCV's DIS flow, Kroeger et al., "Fast Optical Flow using Dense Inverse
          Search", ECCV 2016, at its ultrafast preset), so what moved is compared with where
          it moved to. Needs the flow, so it is not part of the exported model.

Which one ``sinet predict`` uses by default, and the strength, come from the synthetic
camera-motion benchmark (``benchmarks/video_stability.py``, results in the README).
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["DEFAULT_STRENGTH", "DEFAULT_TEMPORAL", "NO_HISTORY", "TEMPORAL_MODES", "TemporalSmoother",
           "check_strength", "gated_ema_step"]

TEMPORAL_MODES = ("none", "ema", "flow")
DEFAULT_TEMPORAL = "flow"
DEFAULT_STRENGTH = 0.7
NO_HISTORY = -1.0  # a previous matte that makes the step return the frame's own probability


def check_strength(strength, flag: str = "--temporal-strength") -> float:
    """``strength`` as a float in [0, 1), or a one-line ``ValueError`` naming ``flag``."""
    try:
        s = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} {strength!r}: expected a number in [0, 1)") from None
    if not (0.0 <= s < 1.0):
        raise ValueError(f"{flag} {strength!r}: expected a number in [0, 1) (0 = no smoothing; 1 would "
                         "freeze the matte)")
    return s


def gated_ema_step(prob: np.ndarray, previous: np.ndarray | None, strength: float) -> np.ndarray:
    """One step of the gated EMA (module docstring): ``previous + w (prob - previous)`` with
    ``w = min(1, max(1 - strength, |prob - previous|))``; ``previous`` None: ``prob``."""
    prob = np.asarray(prob, np.float32)
    if previous is None:
        return prob.copy()
    previous = np.asarray(previous, np.float32)
    d = prob - previous
    w = np.minimum(np.float32(1.0), np.maximum(np.float32(1.0 - strength), np.abs(d)))
    return previous + w * d


def _gray_u8(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = cv2.cvtColor(np.clip(np.rint(x), 0, 255).astype(np.uint8) if x.dtype != np.uint8 else x,
                         cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(x, dtype=np.uint8)


class TemporalSmoother:
    """Frame-by-frame smoothing of model-resolution probabilities (module docstring).

    ``smoother(prob, model_input)`` takes the frame's probability ``[h, w]`` and, for
    ``flow``, the model input it came from (RGB ``[h, w, 3]``, any range that ``uint8``
    holds) and returns the smoothed probability; ``reset()`` starts a new video.
    """

    def __init__(self, mode: str = DEFAULT_TEMPORAL, strength: float = DEFAULT_STRENGTH):
        if mode not in TEMPORAL_MODES:
            raise ValueError(f"--temporal {mode!r}: choose one of {', '.join(TEMPORAL_MODES)}")
        self.mode = mode
        self.strength = check_strength(strength)
        self._flow = None
        self.reset()

    def reset(self) -> None:
        self._previous = None
        self._previous_gray = None

    def _warp_previous(self, gray: np.ndarray) -> np.ndarray:
        if self._flow is None:
            self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        # flow from the current frame to the previous one: pixel p now was at p + flow(p)
        flow = self._flow.calc(gray, self._previous_gray, None)
        h, w = gray.shape
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        return cv2.remap(self._previous, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    def __call__(self, prob: np.ndarray, model_input: np.ndarray | None = None) -> np.ndarray:
        prob = np.asarray(prob, np.float32)
        if self.mode == "none":
            return prob
        if self._previous is not None and self._previous.shape != prob.shape:
            raise ValueError(f"the probability map changed size from {self._previous.shape} to {prob.shape} "
                             "within one video; call reset() between videos")
        previous = self._previous
        gray = None
        if self.mode == "flow":
            if model_input is None:
                raise ValueError("temporal mode 'flow' needs the model input of every frame")
            gray = _gray_u8(model_input)
            if previous is not None:
                previous = self._warp_previous(gray)
        out = gated_ema_step(prob, previous, self.strength)
        self._previous, self._previous_gray = out, gray
        return out
