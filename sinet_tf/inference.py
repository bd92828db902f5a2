"""Run a segmentation model on photos: ``.keras``, ``.tflite``, or a registry name + weights."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from sinet_tf.runtime.heads import person_probability_from_output
from sinet_tf.runtime.interpreter import TFLiteRunner

__all__ = ["LETTERBOX_FILL", "Segmenter", "letterbox", "resize_to_input"]

# Letterbox padding: mid-grey, the value PortraitNet's augmentation pads photos with in training
# (sinet_tf/data/augment.py, labelled background there), so the bands look like something the
# model has learned to call background; 0 (black) would be a hard edge a dark-haired person
# could merge into, and the photo's mean would change from photo to photo.
LETTERBOX_FILL = 128.0


def resize_to_input(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """The deployment preprocessing: a photo (or, ``nearest``, a label map) resized to the
    model's input ``(height, width)``; photos come back float32 RGB in [0, 255]."""
    h, w = int(size[0]), int(size[1])
    if nearest:
        return cv2.resize(image, (w, h), interpolation=cv2.INTER_NEAREST)
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def letterbox(image: np.ndarray, size: tuple[int, int], fill: float = LETTERBOX_FILL):
    """The photo scaled to fit ``size`` ``(height, width)`` with its aspect ratio kept,
    centred and padded with ``fill``: returns the float32 RGB input and the photo's
    ``(top, left, height, width)`` box inside it."""
    h, w = image.shape[:2]
    H, W = int(size[0]), int(size[1])
    scale = min(H / h, W / w)
    nh, nw = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
    top, left = (H - nh) // 2, (W - nw) // 2
    out = np.full((H, W, 3), fill, np.float32)
    out[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, (top, left, nh, nw)


class Segmenter:
    """A model ready to segment RGB photos.

    ``source`` is a ``.keras`` or ``.tflite`` file, a registered model name (with
    ``weights``: an official ``.npz``/``.pth`` checkpoint, or a ``.weights.h5`` file), or a
    Keras model already in memory.
    Photos are resized to the model's input (as the papers evaluate, and as
    ``sinet evaluate`` does), and the person probability is resized back. With
    ``keep_aspect=True`` (what ``sinet predict`` uses) a photo of another aspect ratio is
    letterboxed instead (:func:`letterbox`, padded with :data:`LETTERBOX_FILL`), and the
    padding is cropped off the prediction before it is resized back, so people are not
    squashed or stretched.
    """

    def __init__(self, source, weights: str | os.PathLike | None = None, keep_aspect: bool = False):
        self.keep_aspect = bool(keep_aspect)
        self._tflite = None
        self._keras = None
        self._keras_fn = None
        self.output_kind = "logits"
        in_memory = not isinstance(source, (str, os.PathLike))
        if in_memory:
            import keras

            if not isinstance(source, keras.Model):
                raise TypeError(f"Segmenter takes a model file, a registered name or a keras.Model, "
                                f"not {type(source).__name__}")
            if weights is not None:
                raise ValueError(f"weights= applies to a registered model name, not to the Keras model {source.name!r}")
        self.source = source.name if in_memory else str(source)
        if not in_memory and Path(self.source).suffix.lower() == ".tflite":
            if weights is not None:
                raise ValueError(f"--weights applies to Keras models, not to {self.source}")
            self._tflite = TFLiteRunner(self.source)
            if len(self._tflite.input_details) != 1:
                raise ValueError(f"{self.source}: takes {len(self._tflite.input_details)} inputs (a 'sinet export "
                                 "--temporal ema' file also takes the previous matte); this runs one-input models: "
                                 "export without --temporal and smooth with 'sinet predict --temporal ema'")
            self.output_kind = self._tflite.output_kind
            shape = self._tflite.input_shape
        else:
            from sinet_tf.loading import load_model   # Keras (and TensorFlow) only for a Keras model

            self._keras = source if in_memory else load_model(self.source, weights)
            shape = tuple(self._keras.inputs[0].shape)
        self.input_size = (int(shape[1]), int(shape[2]))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw model output for a float RGB batch ``[1, h, w, 3]`` at the model's input size:
        logits, or probabilities for a ``.tflite`` exported with such a head (``output_kind``)."""
        if self._tflite is not None:
            return self._tflite(batch)
        if self._keras_fn is None:
            import tensorflow as tf

            # the first output is the mask logits (a PortraitNet edge head, if any, comes second)
            self._keras_fn = tf.function(lambda x: self._keras(x, training=False), reduce_retracing=True)
        out = self._keras_fn(batch)
        return np.asarray(out[0] if isinstance(out, (list, tuple)) else out, dtype=np.float32)

    def person_probability(self, image_rgb: np.ndarray) -> np.ndarray:
        """Person probability ``float32 [H, W]`` at the photo's own size."""
        h, w = image_rgb.shape[:2]
        if self.keep_aspect:
            batch, (top, left, bh, bw) = letterbox(image_rgb, self.input_size)
        else:
            batch = resize_to_input(image_rgb, self.input_size)
        prob = person_probability_from_output(self.logits(batch[None])[0], self.output_kind).astype(np.float32)
        if self.keep_aspect:
            if prob.shape[:2] != self.input_size:  # an output below the input's resolution (an encoder)
                prob = cv2.resize(prob, self.input_size[::-1], interpolation=cv2.INTER_LINEAR)
            prob = prob[top:top + bh, left:left + bw]
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)

    def mask(self, image_rgb: np.ndarray, threshold: float = 0.5) -> np.ndarray:
        """Binary person mask ``uint8 [H, W]`` in {0, 1}."""
        return (self.person_probability(image_rgb) > threshold).astype(np.uint8)
