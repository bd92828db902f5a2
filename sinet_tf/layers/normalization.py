"""The input-normalization layer every model starts with."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.layers.normalization_presets import get_preset

__all__ = ["InputNormalization"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class InputNormalization(keras.layers.Layer):
    """RGB pixels in [0, 255] -> the network's input, by a named preset.

    The channel reorder, mean subtraction and scaling of the preset
    (:data:`sinet_tf.layers.normalization_presets.PRESETS`) are one constant 1x1 convolution
    plus bias, ``y_c = scale_c * x_{order(c)} - scale_c * mean_c``: a single
    CONV_2D in TFLite that every delegate runs, with no GATHER or 5-D shapes.
    """

    def __init__(self, preset: str = "official_sinet", **kwargs):
        super().__init__(**kwargs)
        self.preset = get_preset(preset).name

    def build(self, input_shape):
        if input_shape[-1] != 3:
            raise ValueError(f"{self.name}: expects 3 RGB channels, got input shape {input_shape}")
        p = get_preset(self.preset)
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out_c, in_c in enumerate(p.channel_order):
            kernel[0, 0, in_c, out_c] = p.scale[out_c]
        self._kernel = kernel
        self._bias = (-np.asarray(p.mean) * np.asarray(p.scale)).astype(np.float32)

    @property
    def matrix(self) -> np.ndarray:
        """``A`` of ``n(x) = x A + b``: ``[3 in, 3 out]`` (channel order and scale)."""
        return self._kernel[0, 0]

    @property
    def offset(self) -> np.ndarray:
        """``b`` of ``n(x) = x A + b``: ``[3]``."""
        return self._bias

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        kernel = ops.cast(self._kernel, self.compute_dtype)
        return ops.conv(x, kernel, strides=1, padding="valid") + ops.cast(self._bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "preset": self.preset}
