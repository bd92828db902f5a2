"""A ReLU after a concat of conv outputs moved into those convs (fused activations).

``relu(concat(a, b)) = concat(relu(a), relu(b))``: the ReLU acts on each channel alone. When
every part of the concat is a conv output (a BatchNormalization after the conv is folded
into its kernel and bias first), the ReLU becomes each conv's fused activation and the
standalone op disappears. In int8 a standalone RELU is not an op XNNPACK takes: it splits
the graph into several delegate partitions with a builtin kernel between them. A BN left
between the concat and the ReLU must have been folded away already (the ``batch_norms``
pass does that for a concat of conv/BN outputs).
"""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.export.passes.graph import (
    FoldedAway,
    RewriteContext,
    bn_affine,
    folded_away,
    is_linear,
    read_graph,
    rebuild,
)

__all__ = ["activations_into_concat_parts"]

def _activation_name(layer) -> str | None:
    """``"relu"`` or ``"relu6"`` for a plain ReLU layer, else None."""
    if isinstance(layer, keras.layers.ReLU):
        if float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    if type(layer) is keras.layers.Activation:
        return {keras.activations.relu: "relu", keras.activations.relu6: "relu6"}.get(layer.activation)
    return None


def _plain_bn(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3, [-1], [3])


def _part(graph, name):
    """``(conv, bn or None)`` when concat part ``name`` is a linear conv's output (maybe through
    a BN after it), each read only by the next; else None."""
    bn = None
    if _plain_bn(graph.layers[name]) and graph.single(name):
        bn, (name,) = name, graph.producers[name]
    layer = graph.layers[name]
    if type(layer) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D) and is_linear(layer) and graph.single(name):
        return name, bn
    return None


def _folded_conv(conv, bn, activation):
    """A copy of ``conv`` with ``bn``'s affine (or none) folded in and the fused activation."""
    w = conv.get_weights()
    kernel = np.asarray(w[0], np.float64)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    channels = kernel.shape[2] * kernel.shape[3] if depthwise else kernel.shape[-1]
    bias = np.asarray(w[1], np.float64) if conv.use_bias else np.zeros(channels)
    if bn is not None:
        s, t = bn_affine(bn)
        if depthwise:
            kernel = kernel * s.reshape(kernel.shape[2], kernel.shape[3])
        else:
            kernel = kernel * s
        bias = bias * s + t
    config = {**conv.get_config(), "use_bias": True, "activation": activation}
    return conv.__class__.from_config(config), [kernel.astype(np.float32), bias.astype(np.float32)]


def activations_into_concat_parts(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` in which every ReLU/ReLU6 reading (through FoldedAway identities) a
    Concatenate on the channel axis whose parts are all linear conv outputs (a BN after a
    conv folded into it), each read only by the next, is the fused activation of those
    convs, the ReLU left as :class:`~sinet_tf.export.passes.graph.FoldedAway` (``model``
    itself when there is none). ``context`` is not used."""
    graph = read_graph(model)
    replaced, weights = {}, {}
    for name, layer in graph.layers.items():
        activation = _activation_name(layer)
        if activation is None:
            continue
        (src,) = graph.producers[name]
        chain = [src]
        while isinstance(graph.layers[chain[-1]], FoldedAway) and graph.single(chain[-1]):
            chain.append(graph.producers[chain[-1]][0])
        concat = chain[-1]
        cat = graph.layers[concat]
        if not (isinstance(cat, keras.layers.Concatenate) and cat.axis in (-1, 3) and graph.single(concat)
                and all(graph.single(n) for n in chain)):
            continue
        parts = [_part(graph, p) for p in graph.producers[concat]]
        if any(p is None for p in parts) or len({p[0] for p in parts}) != len(parts) \
                or any(p[0] in replaced for p in parts):
            continue
        for conv, bn in parts:
            replaced[conv], weights[conv] = _folded_conv(graph.layers[conv], None if bn is None else graph.layers[bn],
                                                         activation)
            if bn is not None:
                replaced[bn], weights[bn] = folded_away(graph.layers[bn]), []
        replaced[name], weights[name] = folded_away(layer), []
    return rebuild(model, replaced, weights) if replaced else model
