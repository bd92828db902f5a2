"""Few-channel full-resolution convs run on 2x2 pixel blocks (:class:`SpaceToDepthConv2D`).

Convs with at most 4 input and 4 output channels, stride 1, "same": SINet's classifier
2.7 -> 0.9 ms in int8.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.export.passes.graph import RewriteContext, rebuild

__all__ = ["SpaceToDepthConv2D", "convs_on_pixel_blocks", "space_to_depth_kernel"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class SpaceToDepthConv2D(keras.layers.Layer):
    """A stride-1 "same" convolution with few channels, computed on 2x2 pixel blocks:
    ``depth_to_space(conv(space_to_depth(x, 2), K_block), 2)``.

    Pixel ``(2Y + a, 2X + b)``, channel ``c`` is block ``(Y, X)``, channel
    ``(2a + b) * C + c`` of ``space_to_depth(x, 2)``. An output pixel of a ``k x k`` conv
    (``k = 2r + 1``, ``r <= 2``) reads input pixels within ``r`` rows/columns, i.e. blocks
    within one block, so the same map is a 3x3 "same" conv on the block grid whose kernel
    holds the original taps at the matching (block offset, phase) positions and zeros
    elsewhere (:func:`space_to_depth_kernel`). The block grid's zero padding (one block,
    two pixels) covers the original zero padding (``r`` pixels) and the extra taps it
    reaches have zero weights: the same function, exactly.

    Why: XNNPACK's int8 convolution pads the input channels of every tap and the output
    channels to its microkernel tiles, so a 224x224 conv 2->2 3x3 (SINet's classifier)
    costs 2.6 ms in int8 against 0.9 ms in float32; on 112x112 blocks with 8 -> 8
    channels it is 0.65 ms, plus 0.09 + 0.08 ms for SPACE_TO_DEPTH and DEPTH_TO_SPACE
    (both GPU-delegate ops)."""

    def __init__(self, filters: int, kernel_size: int = 3, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, 4 * c, 4 * self.filters), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(4 * self.filters,), initializer="zeros")

    def call(self, x):
        import tensorflow as tf

        y = tf.nn.space_to_depth(x, 2)
        y = ops.conv(y, ops.cast(self.kernel, y.dtype), strides=1, padding="same") + ops.cast(self.bias, y.dtype)
        return tf.nn.depth_to_space(self.activation(y), 2)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "activation": keras.activations.serialize(self.activation)}


def space_to_depth_kernel(kernel: np.ndarray, bias: np.ndarray):
    """The block kernel ``[3, 3, 4 C_in, 4 C_out]`` and bias ``[4 C_out]`` of
    :class:`SpaceToDepthConv2D` for a ``[k, k, C_in, C_out]`` stride-1 "same" kernel
    (``k`` odd, ``k <= 5``). Input pixel row ``2 (Y + u) + a`` feeds output row
    ``2 Y + a'`` through tap ``2 u + a - a' + r``."""
    k, _, cin, cout = kernel.shape
    r = k // 2
    block = np.zeros((3, 3, 4 * cin, 4 * cout), np.float64)
    for u in (-1, 0, 1):
        for v in (-1, 0, 1):
            for a in (0, 1):
                for b in (0, 1):
                    for a2 in (0, 1):
                        for b2 in (0, 1):
                            ty, tx = 2 * u + a - a2 + r, 2 * v + b - b2 + r
                            if 0 <= ty < k and 0 <= tx < k:
                                i, o = (2 * a + b) * cin, (2 * a2 + b2) * cout
                                block[u + 1, v + 1, i:i + cin, o:o + cout] = kernel[ty, tx]
    return block.astype(np.float32), np.tile(np.asarray(bias, np.float64), 4).astype(np.float32)


def _on_blocks(layer) -> bool:
    """A Conv2D that XNNPACK's int8 kernels run far below their speed: stride 1, "same",
    odd kernel <= 5, at most 4 input and 4 output channels, on an even-sized input of at
    least 64x64."""
    if type(layer) is not keras.layers.Conv2D:
        return False
    config = layer.get_config()
    shape = layer.input.shape
    k = tuple(config["kernel_size"])
    return (config["groups"] == 1 and tuple(config["strides"]) == (1, 1) and tuple(config["dilation_rate"]) == (1, 1)
            and config["padding"] == "same" and config.get("data_format", "channels_last") == "channels_last"
            and k[0] == k[1] and k[0] % 2 == 1 and k[0] <= 5 and shape[-1] <= 4 and config["filters"] <= 4
            and shape[1] is not None and shape[2] is not None and shape[1] % 2 == 0 and shape[2] % 2 == 0
            and min(shape[1], shape[2]) >= 64)


def convs_on_pixel_blocks(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` with every few-channel full-resolution Conv2D (see
    :func:`_on_blocks`) a :class:`SpaceToDepthConv2D` of the same name and function
    (``model`` itself when there is none). ``context`` is not used."""
    replaced, weights = {}, {}
    for layer in model.layers:
        if not _on_blocks(layer):
            continue
        config = layer.get_config()
        w = layer.get_weights()
        bias = w[1] if config["use_bias"] else np.zeros(config["filters"], np.float32)
        weights[layer.name] = list(space_to_depth_kernel(np.asarray(w[0], np.float64), bias))
        replaced[layer.name] = SpaceToDepthConv2D(config["filters"], config["kernel_size"][0],
                                                  activation=config["activation"], name=layer.name,
                                                  dtype=layer.dtype_policy)
    return rebuild(model, replaced, weights) if replaced else model
