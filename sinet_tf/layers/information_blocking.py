"""The gate of SINet's Information Blocking decoder (Park et al., WACV 2020, Sec. 3.2)."""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["InformationBlockingGate"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class InformationBlockingGate(keras.layers.Layer):
    """``1 - max_c softmax(x)_c`` per pixel (shape ``[..., 1]``).

    Where the coarse prediction is confident the gate is near 0 and blocks the
    high-resolution features; where it is uncertain (boundaries) it lets them through.
    With one logit channel the class probabilities are ``sigmoid(x)`` and its complement.
    With two, the softmax is computed as what it equals, ``[sigmoid(l0 - l1), sigmoid(l1 - l0)]``:
    a constant 1x1 convolution and LOGISTIC. This is the same function, but unlike SOFTMAX
    it stays inside XNNPACK's int8 kernels and quantizes with LOGISTIC's fixed 1/256 output
    scale. Converts to CONV_2D/SOFTMAX/LOGISTIC + REDUCE_MAX/MAXIMUM + SUB, all GPU-delegate ops.
    """

    def call(self, logits):
        x = ops.cast(logits, "float32")
        if logits.shape[-1] == 1:
            p = ops.sigmoid(x)
            confidence = ops.maximum(p, 1.0 - p)
        elif logits.shape[-1] == 2:
            difference = ops.convert_to_tensor([[[[1.0, -1.0], [-1.0, 1.0]]]], dtype="float32")
            p = ops.sigmoid(ops.conv(x, difference, padding="valid"))
            confidence = ops.max(p, axis=-1, keepdims=True)
        else:
            confidence = ops.max(ops.softmax(x, axis=-1), axis=-1, keepdims=True)
        return ops.cast(1.0 - confidence, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)
