"""From a frame to its person matte: the model, temporal smoothing, edge refinement.

``sinet predict`` and ``benchmarks/video_stability.py`` run frames through the same steps:

1. :func:`model_frame`: the frame letterboxed (or resized) to the model's input, and the
   person probability the model returns for it, at the input's resolution;
2. :class:`~sinet_tf.postprocess.temporal.TemporalSmoother` on that probability (videos);
3. back to the frame's size: the photo's part of the input cut out and resized bilinearly
   (as :meth:`sinet_tf.inference.Segmenter.person_probability` does), or with edge
   refinement the fast guided filter with the full-resolution frame as guide
   (:func:`~sinet_tf.postprocess.refine.guided_upsample`).

With neither smoothing nor refinement the result is exactly
:meth:`~sinet_tf.inference.Segmenter.person_probability`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sinet_tf.inference import letterbox, resize_to_input
from sinet_tf.postprocess.refine import DEFAULT_EPS, DEFAULT_RADIUS, REFINE_MODES, check_refine, guided_upsample, luma
from sinet_tf.postprocess.temporal import DEFAULT_STRENGTH, TemporalSmoother
from sinet_tf.runtime.heads import person_probability_from_output

__all__ = ["MattePipeline", "MattePostprocessor", "ModelFrame", "model_frame"]


@dataclass
class ModelFrame:
    """``model_input`` float32 RGB ``[h, w, 3]`` as the model saw it, ``prob`` the person
    probability at that resolution, ``box`` ``(top, left, height, width)`` of the photo in it."""
    model_input: np.ndarray
    prob: np.ndarray
    box: tuple[int, int, int, int]


def model_frame(segmenter, image_rgb: np.ndarray) -> ModelFrame:
    """Run ``segmenter`` (:class:`~sinet_tf.inference.Segmenter`) on one RGB frame, keeping
    the model-resolution probability (letterboxed when ``segmenter.keep_aspect``)."""
    size = segmenter.input_size
    if segmenter.keep_aspect:
        x, box = letterbox(image_rgb, size)
    else:
        x, box = resize_to_input(image_rgb, size), (0, 0, size[0], size[1])
    prob = person_probability_from_output(segmenter.logits(x[None])[0], segmenter.output_kind).astype(np.float32)
    if prob.shape[:2] != tuple(size):  # an output below the input's resolution (an encoder)
        prob = cv2.resize(prob, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return ModelFrame(x, prob, tuple(int(v) for v in box))


class MattePostprocessor:
    """Steps 2 and 3 of the module docstring for a stream of :class:`ModelFrame`s.

    ``temporal``: ``none``, ``ema`` or ``flow`` with ``strength``
    (:mod:`sinet_tf.postprocess.temporal`); ``refine``: ``none`` or ``guided`` with
    ``radius`` (model-input pixels) and ``eps`` (:mod:`sinet_tf.postprocess.refine`).
    ``reset()`` before each new video.
    """

    def __init__(self, temporal: str = "none", strength: float = DEFAULT_STRENGTH, refine: str = "none",
                 radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS):
        if refine not in REFINE_MODES:
            raise ValueError(f"--refine {refine!r}: choose one of {', '.join(REFINE_MODES)}")
        self.smoother = TemporalSmoother(temporal, strength)
        self.refine = refine
        self.radius, self.eps = check_refine(radius, eps)

    @property
    def temporal(self) -> str:
        return self.smoother.mode

    def reset(self) -> None:
        self.smoother.reset()

    def __call__(self, frame: ModelFrame, image_rgb: np.ndarray) -> np.ndarray:
        """The person probability ``float32 [H, W]`` at ``image_rgb``'s size."""
        prob = self.smoother(frame.prob, frame.model_input)
        h, w = image_rgb.shape[:2]
        top, left, bh, bw = frame.box
        if self.refine == "guided":
            return guided_upsample(luma(frame.model_input), prob, luma(image_rgb), self.radius, self.eps,
                                   box=frame.box)
        return cv2.resize(prob[top:top + bh, left:left + bw], (w, h), interpolation=cv2.INTER_LINEAR)


class MattePipeline:
    """A segmenter and a :class:`MattePostprocessor`: ``pipeline(frame)`` -> person
    probability at the frame's size; ``reset()`` between videos."""

    def __init__(self, segmenter, postprocessor: MattePostprocessor | None = None):
        self.segmenter = segmenter
        self.post = postprocessor or MattePostprocessor()

    def reset(self) -> None:
        self.post.reset()

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray:
        if self.post.temporal == "none" and self.post.refine == "none":
            return self.segmenter.person_probability(image_rgb)
        return self.post(model_frame(self.segmenter, image_rgb), image_rgb)
