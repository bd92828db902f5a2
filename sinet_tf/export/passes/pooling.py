"""AveragePooling2D(k, stride k, valid) as a k x k depthwise conv with weights ``1/k^2``
(int8 AVERAGE_POOL_2D is not delegated by XNNPACK)."""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.export.passes.graph import RewriteContext, rebuild

__all__ = ["pools_as_depthwise"]


def pools_as_depthwise(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` with every AveragePooling2D whose stride equals its pool size
    and whose padding is "valid" a DepthwiseConv2D of the same name with weights ``1/k^2``
    (``model`` itself when there is none). ``context`` is not used."""
    replaced, weights = {}, {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.AveragePooling2D):
            continue
        pool, strides = tuple(layer.pool_size), tuple(layer.strides)
        if pool == strides and layer.padding == "valid":
            channels = layer.input.shape[-1]
            weights[layer.name] = [np.full((*pool, channels, 1), 1.0 / (pool[0] * pool[1]), np.float32)]
            replaced[layer.name] = keras.layers.DepthwiseConv2D(pool, strides=strides, padding="valid", use_bias=False,
                                                                name=layer.name, dtype=layer.dtype_policy)
    return rebuild(model, replaced, weights) if replaced else model
