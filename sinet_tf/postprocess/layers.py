"""The post-processing steps as Keras layers, for export: the gated EMA of
:mod:`sinet_tf.postprocess.temporal` behind a second model input (the previous matte),
and the guided filter of :mod:`sinet_tf.postprocess.refine` at the model's resolution.
Both are built from ops the mobile GPU delegate runs (ABS, SUB, MUL, ADD, MAXIMUM,
MINIMUM; CONV_2D for the luma, AVERAGE_POOL_2D for the box means, DIV)."""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.postprocess.refine import DEFAULT_EPS, DEFAULT_EXPORT_SUBSAMPLE, DEFAULT_RADIUS, LUMA, check_refine
from sinet_tf.postprocess.temporal import DEFAULT_STRENGTH, check_strength

__all__ = ["GatedEMA", "GuidedFilter", "with_guided_refinement", "with_temporal_input"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class GatedEMA(keras.layers.Layer):
    """The gated EMA step (:func:`sinet_tf.postprocess.temporal.gated_ema_step`) as a layer:
    ``GatedEMA(s)([prob, previous])`` (both ``[B, H, W, 1]``) returns
    ``previous + w (prob - previous)``, ``w = min(1, max(1 - s, |prob - previous|))``."""

    def __init__(self, strength: float = DEFAULT_STRENGTH, **kwargs):
        super().__init__(**kwargs)
        self.strength = check_strength(strength, "strength")

    def call(self, inputs):
        prob, previous = inputs
        d = prob - previous
        w = keras.ops.minimum(keras.ops.maximum(keras.ops.abs(d), 1.0 - self.strength), 1.0)
        return previous + w * d

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "strength": self.strength}


@keras.saving.register_keras_serializable(package="sinet_tf")
class GuidedFilter(keras.layers.Layer):
    """The guided filter (He et al., TPAMI 2013, Eq. 5, 6 and 8; see
    :mod:`sinet_tf.postprocess.refine`) as a layer: ``GuidedFilter(r, eps)([image, prob])``
    with ``image`` RGB pixels in [0, 255] ``[B, H, W, 3]`` and ``prob`` ``[B, H, W, 1]``;
    returns the refined probability clipped to [0, 1]. With ``subsample`` ``s > 1`` the
    coefficients come from ``s x s`` block averages (AVERAGE_POOL_2D, stride ``s``) and go
    back by RESIZE_BILINEAR (:func:`sinet_tf.postprocess.refine.guided_filter`). The window
    means are AVERAGE_POOL_2D with SAME padding, which TFLite defines as the mean over the
    window's pixels inside the image (the clipped window of
    :func:`sinet_tf.postprocess.refine.box_mean`), split into a row and a column pass and
    run on the stacked maps at once; the luma is a fixed 1x1 convolution."""

    def __init__(self, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS, subsample: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.radius, self.eps = check_refine(radius, eps)
        if int(subsample) != subsample or subsample < 1:
            raise ValueError(f"--refine-subsample {subsample!r}: expected a whole number >= 1")
        self.subsample = int(subsample)
        self._luma = np.array(LUMA, np.float32).reshape(1, 1, 3, 1) / 255.0

    def _mean(self, x):
        """The clipped-window mean as two AVERAGE_POOL_2D (a 1 x k row, then a k x 1 column):
        the mean over a clipped rectangle is the mean of the clipped row means."""
        k = 2 * max(1, self.radius // self.subsample) + 1
        x = keras.ops.average_pool(x, pool_size=(1, k), strides=(1, 1), padding="same")
        return keras.ops.average_pool(x, pool_size=(k, 1), strides=(1, 1), padding="same")

    def call(self, inputs):
        image, prob = inputs
        guide = keras.ops.conv(image, keras.ops.convert_to_tensor(self._luma), strides=1, padding="valid")
        g, p = guide, prob
        s = self.subsample
        if s > 1:  # block averages, as cv2's INTER_AREA at an integer factor
            g, p = (keras.ops.average_pool(v, pool_size=(s, s), strides=(s, s), padding="valid") for v in (g, p))
        # the four means of Eq. 5-6 in one 4-channel pool (pooling kernels vectorize over channels)
        m_i, m_p, m_ip, m_ii = keras.ops.split(self._mean(keras.ops.concatenate([g, p, g * p, g * g], axis=-1)), 4, -1)
        var_i = keras.ops.maximum(m_ii - m_i * m_i, 0.0)
        a = (m_ip - m_i * m_p) / (var_i + self.eps)
        b = m_p - a * m_i
        mean_a, mean_b = keras.ops.split(self._mean(keras.ops.concatenate([a, b], axis=-1)), 2, -1)
        if s > 1:  # bilinear, half-pixel centres (cv2's INTER_LINEAR); split before, so nothing full-size is split
            size = tuple(int(d) for d in guide.shape[1:3])
            mean_a, mean_b = (keras.ops.image.resize(v, size, interpolation="bilinear") for v in (mean_a, mean_b))
        return keras.ops.minimum(keras.ops.maximum(mean_a * guide + mean_b, 0.0), 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        return {**super().get_config(), "radius": self.radius, "eps": self.eps, "subsample": self.subsample}


def _matte_output(model: keras.Model, what: str):
    out = model.outputs[0]
    if int(out.shape[-1]) != 1:
        raise ValueError(f"{what} needs a model returning one person-probability channel (the 'mask' head), "
                         f"got {int(out.shape[-1])} channels")
    return out


def with_temporal_input(model: keras.Model, strength: float = DEFAULT_STRENGTH) -> keras.Model:
    """A two-input model ``[image, previous_matte] -> matte`` from a model whose first
    output is one person-probability channel (the ``mask`` export head): the gated EMA of
    the probability against the previous frame's output. Feed each output back as the next
    ``previous_matte``, and :data:`~sinet_tf.postprocess.temporal.NO_HISTORY` (-1
    everywhere) for a video's first frame."""
    out = _matte_output(model, "temporal smoothing")
    previous = keras.Input(shape=tuple(out.shape[1:]), batch_size=model.inputs[0].shape[0], name="previous_matte")
    smoothed = GatedEMA(strength, name="temporal_ema")([out, previous])
    return keras.Model([*model.inputs, previous], smoothed, name=model.name)


def with_guided_refinement(model: keras.Model, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS,
                           subsample: int = DEFAULT_EXPORT_SUBSAMPLE) -> keras.Model:
    """``model`` (first input RGB pixels in [0, 255]; first output one person-probability
    channel at the input's resolution) with the guided filter on its output, the input
    image as guide, coefficients on ``subsample x subsample`` blocks
    (:func:`sinet_tf.postprocess.refine.guided_filter`). Other inputs (a previous matte)
    are kept."""
    out = _matte_output(model, "guided refinement")
    image = model.inputs[0]
    if tuple(out.shape[1:3]) != tuple(image.shape[1:3]):
        raise ValueError(f"guided refinement needs the probability at the input's resolution; the model returns "
                         f"{tuple(out.shape[1:3])} for an input of {tuple(image.shape[1:3])}")
    if any(int(d) % subsample for d in image.shape[1:3]):
        raise ValueError(f"--refine-subsample {subsample}: the input {tuple(image.shape[1:3])} is not a multiple of it")
    refined = GuidedFilter(radius, eps, subsample, name="guided_refine")([image, out])
    return keras.Model(model.inputs, refined, name=model.name)
