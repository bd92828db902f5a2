"""Channel shuffles moved into the weights after them.

The shuffles after SINet's grouped 1x1 convs move into the weights of the per-channel
layers and 1x1 convs after them: the grouped conv exports as a grouped CONV_2D instead
of a dense one with half its kernel zero (timings in ``benchmarks/results/int8_rewrites.md``).
"""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.export.passes.graph import RewriteContext, read_graph, rebuild
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import GroupedPointwiseConv

__all__ = ["absorb_channel_shuffles"]

# Layers that act on each channel alone: a channel permutation before them is the same
# permutation after them, with their per-channel weights permuted.
_PER_CHANNEL = (keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization, keras.layers.PReLU,
                keras.layers.AveragePooling2D, keras.layers.MaxPooling2D, keras.layers.ZeroPadding2D,
                keras.layers.UpSampling2D, keras.layers.Activation, keras.layers.ReLU, keras.layers.LeakyReLU,
                BilinearResize)


def _per_channel(layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return layer.activation not in (keras.activations.softmax, keras.activations.log_softmax)
    return isinstance(layer, _PER_CHANNEL)


def _mixes_channels(layer) -> bool:
    """A layer whose input channels can be permuted by permuting its kernel rows."""
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1) or (
        type(layer) is GroupedPointwiseConv and layer.groups == 1)


def _permute_channels(layer, weights, inv):
    """``layer``'s weights for an input whose channel ``k`` was channel ``inv[k]``."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out = [weights[0][:, :, inv, :]]
        if len(weights) > 1:
            m = weights[0].shape[-1]
            out.append(weights[1].reshape(-1, m)[inv].reshape(-1))
        return out
    if isinstance(layer, keras.layers.BatchNormalization):
        return [w[inv] for w in weights]
    if isinstance(layer, keras.layers.PReLU):
        return [w[..., inv] if w.shape[-1] == len(inv) else w for w in weights]
    if _mixes_channels(layer):
        return [weights[0][:, :, inv, :], *weights[1:]]
    return weights


def absorb_channel_shuffles(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` in which every :class:`~sinet_tf.layers.s2.GroupedPointwiseConv`
    with a channel shuffle whose output reaches only per-channel layers and then
    channel-mixing convolutions becomes a plain grouped ``Conv2D`` (output in group order),
    the shuffle moved into the weights downstream (``model`` itself when there is none).

    Exact: the shuffle is a fixed permutation ``P`` of the channels; a per-channel layer
    (depthwise conv, BatchNorm, PReLU, pooling, resize) commutes with it once its
    per-channel weights are permuted, and a convolution reading ``P x`` with kernel rows
    ``W`` reads ``x`` with rows ``W[P^-1]``. In SINet every S2 module's ``c1`` feeds two
    S2 blocks (avg pool, depthwise, BN, PReLU, then a 1x1 conv).

    Why: :class:`GroupedPointwiseConv` exports as a dense CONV_2D with half of its kernel
    zero (mobile GPU delegates refused grouped convs with runtime weights; with constant
    weights the delegate takes them). XNNPACK's int8 grouped conv skips the zero blocks.
    ``context`` is not used."""
    layers, producers, consumers = read_graph(model)
    inverse, grouped = {}, set()
    for layer in model.layers:
        if not (type(layer) is GroupedPointwiseConv and layer.groups > 1 and layer.shuffle_groups):
            continue
        inv = np.argsort(np.asarray(layer._perm))
        reached, frontier, ok = {}, list(consumers[layer.name]), True
        while frontier and ok:
            name = frontier.pop()
            if name is None or len(producers[name]) != 1 or name in inverse:
                ok = False
            elif _mixes_channels(layers[name]):
                reached[name] = inv
            elif _per_channel(layers[name]):
                reached[name] = inv
                frontier += consumers[name]
            else:
                ok = False
        if ok:
            grouped.add(layer.name)
            inverse.update(reached)
    if not grouped:
        return model
    replaced = {name: keras.layers.Conv2D(layers[name].filters, 1, groups=layers[name].groups,
                                          use_bias=layers[name].use_bias, name=name,
                                          dtype=layers[name].dtype_policy) for name in grouped}
    permuted = {name: _permute_channels(layers[name], layers[name].get_weights(), inv)
                for name, inv in inverse.items() if layers[name].weights}
    return rebuild(model, replaced, permuted)
