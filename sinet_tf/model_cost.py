"""Model size and cost of a Keras model: trainable parameters, multiply-adds (MACs), and
the leaf layers both are counted over."""

from __future__ import annotations

import math

import keras

from sinet_tf.layers.s2 import GroupedPointwiseConv

__all__ = ["count_params", "count_macs", "iter_layers"]


def count_params(model: keras.Model) -> int:
    """Trainable parameters (what papers report; BatchNorm running statistics excluded)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


def iter_layers(model):
    """Every leaf layer of a model, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)
        else:
            yield layer


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass at the model's input size (batch 1).

    Counts convolutions (regular, grouped, depthwise, transposed) and dense layers, the
    convention of the papers' FLOPs/MAdds columns; element-wise ops, normalization,
    pooling and resizing are not counted. A convolution costs
    ``H_out * W_out * kh * kw * (C_in / groups) * C_out``, i.e. the output's spatial size
    times the size of its kernel tensor (for a transposed conv, the input's spatial size).
    """
    total = 0
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.SeparableConv2D):
            kernels = [layer.depthwise_kernel, layer.pointwise_kernel]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose,
                                keras.layers.Dense, GroupedPointwiseConv)):
            kernels = [layer.kernel]
        else:
            continue
        ref = layer.input if isinstance(layer, keras.layers.Conv2DTranspose) else layer.output
        spatial = math.prod(int(d) for d in ref.shape[1:-1])
        total += spatial * sum(math.prod(k.shape) for k in kernels)
    return int(total)
