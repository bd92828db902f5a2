"""Squeeze-and-excite in the form SINet's down-sampling blocks use it."""

from __future__ import annotations

import keras

from sinet_tf.layers.conv import prelu

__all__ = ["squeeze_excite"]


def squeeze_excite(x, hidden_units, name):
    """SINet's squeeze-excite (the ``conv.1.dense`` module of its down-samplers).

    ``s = GAP(x)``; then per hidden width ``Linear -> PReLU`` (``dense.0, dense.1``,
    ``dense.2, dense.3``, ...) with no sigmoid at the end, and ``x * s``. The Linear
    layers are 1x1 convolutions on the ``[1, 1, C]`` pooled map (the same weights and
    bias), which keeps every tensor 4-D for mobile GPU delegates.
    """
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.pool")(x)
    units = [*hidden_units, channels]
    for i, u in enumerate(units):
        s = keras.layers.Conv2D(u, 1, use_bias=True, name=f"{name}.dense.{2 * i}")(s)
        s = prelu(s, f"{name}.dense.{2 * i + 1}")
    return keras.layers.Multiply(name=f"{name}.scale")([x, s])
