"""Per-channel range equalization on calibration images (:func:`equalize_channels`).

Channels are scaled up through per-channel layers and scaled back in the next conv's
kernel, so small channels get more of their tensor's int8 levels.
"""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.export.passes.batch_norm import AffineThenResize
from sinet_tf.export.passes.graph import FoldedAway, RewriteContext, copy_model, is_linear, read_graph
from sinet_tf.export.passes.input_normalization import OffsetConv2D
from sinet_tf.export.passes.prelu import DecomposedPReLU
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import GroupedPointwiseConv

__all__ = ["equalize_channels", "equalize_on_calibration_images"]

_PASS_THROUGH = (keras.layers.BatchNormalization, DecomposedPReLU, keras.layers.PReLU, keras.layers.ReLU, FoldedAway,
                 keras.layers.ZeroPadding2D, keras.layers.AveragePooling2D, keras.layers.MaxPooling2D, BilinearResize)


def _equalization_root(layer) -> bool:
    """A layer whose output channels can be scaled through its own weights."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1 and is_linear(layer)
    return type(layer) in (keras.layers.Conv2D, OffsetConv2D) and is_linear(layer)


def _equalization_terminal(layer) -> bool:
    """A layer that can undo a per-channel scale of its input through its weights."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    return type(layer) is keras.layers.Conv2D or (type(layer) is GroupedPointwiseConv and layer.groups == 1)


def _pass_through(layer) -> bool:
    """Per channel and positively homogeneous: ``f(s x) = s f(x)`` for ``s > 0`` once its
    per-channel constants are scaled (see :func:`_scale_weights`)."""
    if isinstance(layer, keras.layers.Activation):
        return layer.activation in (keras.activations.linear, keras.activations.relu)
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.scale and layer.axis in (-1, 3, [-1], [3])
    return isinstance(layer, _PASS_THROUGH)


def _scale_weights(layer, s, role):
    """New weights of ``layer`` when its output (``role="root"``), its input and output
    (``"through"``) or its input (``"terminal"``) channels are multiplied by ``s``."""
    w = [np.asarray(v, np.float64) for v in layer.get_weights()]
    if role == "terminal":
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            w[0] = w[0] / s.reshape(1, 1, -1, 1)
        elif getattr(layer, "groups", 1) > 1:
            cin_g, g = w[0].shape[2], layer.groups
            cout_g = w[0].shape[3] // g
            for i in range(g):
                w[0][:, :, :, i * cout_g:(i + 1) * cout_g] /= s[i * cin_g:(i + 1) * cin_g].reshape(1, 1, -1, 1)
        else:
            w[0] = w[0] / s.reshape(1, 1, -1, 1)
        return w
    if role == "root":
        w[0] = w[0] * (s.reshape(1, 1, -1, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else s)
        for i in range(1, len(w)):  # bias [C], and OffsetConv2D's border map [1, H, W, C]
            w[i] = w[i] * s
        return w
    if isinstance(layer, keras.layers.BatchNormalization):
        names = [v.path.split("/")[-1] for v in layer.weights]
        eps = layer.epsilon
        for i, n in enumerate(names):
            if n in ("gamma", "beta", "moving_mean"):
                w[i] = w[i] * s
            elif n == "moving_variance":  # sqrt(var' + eps) = s sqrt(var + eps)
                w[i] = s ** 2 * (w[i] + eps) - eps
        return w
    if isinstance(layer, AffineThenResize):
        w[1] = w[1] * s
    return w


def _chain(root, layers, producers, consumers, claimed):
    """``(members, terminals)`` of the equalization chain starting at ``root``, or None:
    the root and the per-channel layers after it, and the layers that end it."""
    members, terminals, frontier = [root], [], list(consumers[root])
    while frontier:
        name = frontier.pop()
        if name is None or len(producers[name]) != 1:
            return None
        layer = layers[name]
        if _equalization_terminal(layer):
            terminals.append(name)
        elif _pass_through(layer) and name not in claimed:
            members.append(name)
            frontier += consumers[name]
        else:
            return None
    return (members, terminals) if terminals else None


def equalize_channels(model: keras.Model, images, max_scale: float = 16.0, conv_power: float = 0.5) -> keras.Model:
    """Per-channel range equalization (in place, same function): for every chain
    *root -> per-channel layers -> terminals*, channel ``c`` of every tensor of the chain is
    multiplied by ``s_c > 0`` and the terminals divide it out again.

    A root is a linear conv or depthwise conv (its output channels scale through its
    kernel and bias), the layers in between act per channel and are positively
    homogeneous (BatchNorm with its statistics and affine rescaled, PReLU in any form, ReLU,
    padding, pooling, bilinear resize), and every consumer at the end is a conv or
    depthwise conv whose kernel rows divide by ``s`` (a depthwise conv is the terminal of
    one chain and the root of the next). Exact up to float rounding.

    Why: int8 activations have one scale per tensor, so a channel whose values span a
    tenth of the tensor's range is quantized with a tenth of the levels.
    ``s_c = 1 / max_T (r_{T,c} / R_T)`` (``r_{T,c}``: the largest ``|value|`` of channel
    ``c`` of tensor ``T`` of the chain on ``images``; ``R_T = max_c r_{T,c}``) scales each
    channel up until it fills the range of one tensor of the chain, and no tensor's range
    grows. Depthwise weights are quantized per channel, so a depthwise terminal loses
    nothing; a conv terminal's weights are quantized per *output* channel, and a row
    divided by ``s_c`` keeps fewer levels: there ``s ** conv_power`` is used. ``s`` is
    capped at ``max_scale``."""
    layers, producers, consumers = read_graph(model)
    chains, claimed = [], set()
    for layer in model.layers:
        if not _equalization_root(layer) or layer.name in claimed:
            continue
        chain = _chain(layer.name, layers, producers, consumers, claimed)
        if chain is not None:
            chains.append(chain)
            claimed.update(chain[0])
    if not chains:
        return model
    names = sorted({n for members, _ in chains for n in members})
    probe = keras.Model(model.inputs, [layers[n].output for n in names])
    ranges = {n: 0.0 for n in names}
    for start in range(0, len(images), 8):
        outs = probe([np.asarray(images[start:start + 8], np.float32)])  # a list, as model.inputs
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, out in zip(names, outs):
            ranges[n] = np.maximum(ranges[n], np.abs(np.asarray(out, np.float64)).max(axis=(0, 1, 2)))
    for members, terminals in chains:
        peak = np.max(np.stack([ranges[n] / max(float(np.max(ranges[n])), 1e-30) for n in members]), axis=0)
        s = np.where(peak > 0, 1.0 / np.maximum(peak, 1e-30), 1.0)
        if any(not isinstance(layers[t], keras.layers.DepthwiseConv2D) for t in terminals):
            s = s ** conv_power
        s = np.minimum(s, max_scale)
        if np.allclose(s, 1.0):
            continue
        for i, n in enumerate(members):
            layers[n].set_weights(_scale_weights(layers[n], s, "root" if i == 0 else "through"))
        for t in terminals:
            layers[t].set_weights(_scale_weights(layers[t], s, "terminal"))
    return model


def equalize_on_calibration_images(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` equalized by :func:`equalize_channels` on ``context.images``
    (keyword arguments ``context.equalization``); ``model`` itself without images."""
    if context is None or context.images is None:
        return model
    return equalize_channels(copy_model(model), context.images, **context.equalization)
