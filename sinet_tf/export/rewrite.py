"""Numerically equivalent graph rewrites applied before full-integer (int8) conversion.

Measured here (LiteRT 2.x, XNNPACK on x86, one op between two int8 convs): int8 PRELU,
AVERAGE_POOL_2D and SOFTMAX are not taken by XNNPACK, so every one of them splits the
delegated graph and runs on the slow reference kernels; SINet has 39 PReLUs and 6 average
pools, and its naive int8 file ran several times slower than float32. The rewrites keep the
function and use only ops XNNPACK runs in int8 (and the GPU delegate runs in float):

* ``PReLU(x) = max(x, 0) + alpha * min(x, 0) = alpha * x + (1 - alpha) * relu(x)``, and with
  ``b = 1 - alpha``, ``b * relu(x) = sign(b) * relu(|b| * x)``. So the layer computes
  ``alpha * x + relu(|b| * x)`` (times ``sign(b)`` only if some ``b < 0``) -> MUL,
  MUL with the RELU fused into it, [MUL], ADD. The obvious forms are worse: NEG
  (``relu(-x)``) has no int8 kernel (float islands), and a RELU, MAXIMUM or MINIMUM that
  cannot fuse into its producer is not taken by XNNPACK in int8 (measured, see above).
* ``AveragePooling2D(k, stride k, valid)`` -> a depthwise k x k convolution with stride k
  and constant weights ``1 / k^2`` (the same sums; int8 per-channel weight scales make
  ``1 / k^2`` exact up to rounding of one value).

The float32/fp16 exports keep the original layers (one PRELU op is cheaper on GPUs).
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["DecomposedPReLU", "int8_friendly"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class DecomposedPReLU(keras.layers.Layer):
    """PReLU with a per-channel ``alpha`` (shared over height and width), computed as
    ``alpha * x + sign(1 - alpha) * relu(|1 - alpha| * x)`` so that every op has an int8
    XNNPACK kernel. ``signed``: some ``alpha > 1`` (else the sign multiply is left out)."""

    def __init__(self, signed: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.signed = bool(signed)

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, x):
        b = 1.0 - self.alpha
        positive = keras.ops.relu(keras.ops.abs(b) * x)
        if self.signed:
            positive = keras.ops.sign(b) * positive
        return self.alpha * x + positive

    def get_config(self):
        return {**super().get_config(), "signed": self.signed}


def _replacement(layer):
    if isinstance(layer, keras.layers.PReLU):
        alpha = layer.get_weights()[0]
        if alpha.ndim == 3 and alpha.shape[:2] == (1, 1):
            signed = bool((alpha > 1.0).any())
            return DecomposedPReLU(signed=signed, name=layer.name, dtype=layer.dtype_policy), [alpha]
    if isinstance(layer, keras.layers.AveragePooling2D):
        pool, strides = tuple(layer.pool_size), tuple(layer.strides)
        if pool == strides and layer.padding == "valid":
            channels = layer.input.shape[-1]
            kernel = np.full((*pool, channels, 1), 1.0 / (pool[0] * pool[1]), np.float32)
            return keras.layers.DepthwiseConv2D(pool, strides=strides, padding="valid", use_bias=False,
                                                name=layer.name, dtype=layer.dtype_policy), [kernel]
    return None


def int8_friendly(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the rewrites above (same weights, same function)."""
    new_weights = {}

    def clone(layer):
        replaced = _replacement(layer)
        if replaced is None:
            return layer.__class__.from_config(layer.get_config())
        new_layer, weights = replaced
        new_weights[layer.name] = weights
        return new_layer

    rewritten = keras.models.clone_model(model, clone_function=clone)
    for layer in rewritten.layers:
        if layer.name in new_weights:
            layer.set_weights(new_weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rewritten
