"""A conv -> [linear Activation] -> 1x1 conv as one conv with kernel ``W1 @ W2``.

The export heads put a fixed difference conv on SINet's logits; merged into SINet's last
3x3 conv it saves a full-resolution op (in int8 a 224x224x2 conv and its requantization).
"""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.export.passes.graph import RewriteContext, folded_away, is_linear, read_graph, rebuild

__all__ = ["merge_pointwise_convs"]


def _merges(graph, model):
    """``{1x1 conv: the conv before it}``: a 1x1 stride-1 Conv2D reading (through linear
    Activations, each read only by the next) a linear Conv2D read by nothing else. A conv
    takes part in one merge at most."""
    merged = {}
    for layer in model.layers:
        if type(layer) is not keras.layers.Conv2D or layer.groups != 1 or tuple(layer.kernel_size) != (1, 1) \
                or tuple(layer.strides) != (1, 1):
            continue
        (src,) = graph.producers[layer.name]
        while isinstance(graph.layers[src], keras.layers.Activation) and graph.single(src) \
                and graph.layers[src].activation is keras.activations.linear:  # the models' "logits" layer
            (src,) = graph.producers[src]
        first = graph.layers[src]
        if type(first) is not keras.layers.Conv2D or first.groups != 1 or not graph.single(src) \
                or not is_linear(first) or src in merged or src in merged.values():
            continue
        merged[layer.name] = src
    return merged


def merge_pointwise_convs(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` in which a conv -> [linear Activation] -> 1x1 conv (nothing else
    reading the first) is one conv with kernel ``W1 @ W2`` and bias ``b1 W2 + b2`` and the
    second conv's activation, the 1x1 conv left as
    :class:`~sinet_tf.export.passes.graph.FoldedAway` (``model`` itself when there is no
    such pair). ``context`` is not used."""
    graph = read_graph(model)
    replaced, weights = {}, {}
    for second_name, first_name in _merges(graph, model).items():
        first, second = graph.layers[first_name], graph.layers[second_name]
        w1 = np.asarray(first.kernel.numpy(), np.float64)
        b1 = np.asarray(first.bias.numpy(), np.float64) if first.use_bias else np.zeros(w1.shape[-1])
        w2 = np.asarray(second.kernel.numpy(), np.float64)[0, 0]
        b2 = np.asarray(second.bias.numpy(), np.float64) if second.use_bias else 0.0
        config = {**first.get_config(), "filters": second.filters, "use_bias": True,
                  "activation": keras.activations.serialize(second.activation)}
        replaced[first_name] = first.__class__.from_config(config)
        weights[first_name] = [(w1 @ w2).astype(np.float32), (b1 @ w2 + b2).astype(np.float32)]
        replaced[second_name], weights[second_name] = folded_away(second), []
    return rebuild(model, replaced, weights) if replaced else model
