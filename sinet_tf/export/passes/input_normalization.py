"""Input normalization folded into the first conv.

The normalization (a 1x1 conv 3->3 over the whole image, 0.75 ms in int8) is folded into
the first conv's kernel and bias, and a constant border map restores what the zero
padding of the normalized image contributed (:class:`OffsetConv2D`, one ADD at the conv's
output resolution). The int8 conv then reads the camera pixels themselves (scale 1).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.export.passes.graph import (
    RewriteContext,
    bn_affine,
    compose_affine,
    folded_away,
    is_linear,
    read_graph,
    rebuild,
)
from sinet_tf.layers.normalization import InputNormalization

__all__ = ["OffsetConv2D", "fold_input_normalization"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class OffsetConv2D(keras.layers.Conv2D):
    """A linear Conv2D plus a constant ``[1, H_out, W_out, C_out]`` map (one CONV_2D and
    one ADD of a constant): the first convolution with the input normalization folded
    into it, the map restoring what the zero padding of the *normalized* image
    contributed at the border (see :func:`fold_input_normalization`)."""

    def build(self, input_shape):
        super().build(input_shape)
        out = self.compute_output_shape(input_shape)
        self.offset = self.add_weight(name="offset", shape=(1, *out[1:]), initializer="zeros")

    def call(self, inputs):
        return super().call(inputs) + ops.cast(self.offset, self.compute_dtype)


def _plain_bn(layer) -> bool:
    """A BatchNormalization over the channels of a 4-D tensor."""
    return isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 3, [-1], [3]) \
        and len(layer.input.shape) == 4


def _folds(graph):
    """``(normalization, padding or None, conv, BN or None)`` for every InputNormalization
    -> [ZeroPadding2D] -> linear Conv2D [-> BatchNormalization], each read only by the next."""
    found = []
    for name, layer in graph.layers.items():
        if type(layer) is not InputNormalization or not graph.single(name):
            continue
        (nxt,) = graph.consumers[name]
        pad = None
        if nxt is not None and type(graph.layers[nxt]) is keras.layers.ZeroPadding2D and graph.single(nxt):
            pad, (nxt,) = nxt, graph.consumers[nxt]
        if nxt is None:
            continue
        conv = graph.layers[nxt]
        if type(conv) is keras.layers.Conv2D and conv.groups == 1 and conv.data_format == "channels_last" \
                and is_linear(conv) and (pad is None or conv.padding == "valid"):
            bn = None
            if graph.single(nxt) and graph.consumers[nxt][0] is not None \
                    and _plain_bn(graph.layers[graph.consumers[nxt][0]]):
                (bn,) = graph.consumers[nxt]
            found.append((name, pad, nxt, bn))
    return found


def _folded_weights(graph, norm_name, pad_name, conv, affine):
    """Kernel, bias and border map of the first conv with the input normalization
    ``n(x) = A x + b_n`` (a 1x1 conv: channel order and scale, then the mean) folded in.

    The original computes ``conv(pad0(A x + b_n))``; the folded conv computes
    ``conv_{W A}(pad0(x)) + sum_k W_k b_n`` (every tap ``k`` counted). At an output
    pixel whose window reaches the zero padding, the original's padded taps saw 0, not
    ``b_n``: the map adds back ``-sum_{k outside} W_k b_n`` there (it is 0 inside).
    Zero-padding raw pixels is what PAD does with an int8 input of scale 1, and
    XNNPACK fuses that PAD into the conv. Then the affine ``(s, t)`` of the BN after the
    conv (or None) is applied to kernel, bias and map."""
    norm = graph.layers[norm_name]
    a = np.asarray(norm.matrix, np.float64)  # [in, out]
    b_n = np.asarray(norm.offset, np.float64)
    w = np.asarray(conv.kernel.numpy(), np.float64)
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(w.shape[-1])
    kernel = np.einsum("ic,hwco->hwio", a, w)
    per_tap = np.einsum("hwco,c->hwo", w, b_n)
    height, width = (int(d) for d in norm.input.shape[1:3])
    out_h, out_w = (int(d) for d in conv.output.shape[1:3])
    (sh, sw), (dh, dw), (kh, kw) = conv.strides, conv.dilation_rate, conv.kernel_size
    if pad_name is not None:
        (top, _), (left, _) = graph.layers[pad_name].padding
    elif conv.padding == "same":
        top = max((out_h - 1) * sh + (kh - 1) * dh + 1 - height, 0) // 2
        left = max((out_w - 1) * sw + (kw - 1) * dw + 1 - width, 0) // 2
    else:
        top = left = 0
    rows = np.arange(out_h)[:, None] * sh + np.arange(kh)[None, :] * dh - top
    cols = np.arange(out_w)[:, None] * sw + np.arange(kw)[None, :] * dw - left
    outside = 1.0 - np.einsum("at,bu->abtu", ((rows >= 0) & (rows < height)).astype(np.float64),
                              ((cols >= 0) & (cols < width)).astype(np.float64))
    border = -np.einsum("abtu,tuo->abo", outside, per_tap)
    bias = bias + per_tap.sum(axis=(0, 1))
    if affine is not None:
        s, t = (np.broadcast_to(np.asarray(v, np.float64), bias.shape) for v in affine)
        kernel, bias, border = kernel * s, bias * s + t, border * s
    return [kernel.astype(np.float32), bias.astype(np.float32), border[None].astype(np.float32)]


def fold_input_normalization(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` in which every InputNormalization -> [ZeroPadding2D] -> linear
    Conv2D (each read only by the next) is one :class:`OffsetConv2D` reading the raw
    image (``model`` itself when there is none). The normalization becomes
    :class:`~sinet_tf.export.passes.graph.FoldedAway`, and so does a BatchNormalization
    right after the conv, folded into it too: the converter folds a BN into a conv but not
    past the border map's ADD. ``context`` is not used."""
    graph = read_graph(model)
    replaced, weights = {}, {}
    for norm_name, pad_name, conv_name, bn_name in _folds(graph):
        conv = graph.layers[conv_name]
        affine = None
        if bn_name is not None:
            affine = compose_affine((1.0, 0.0), *bn_affine(graph.layers[bn_name]))
            replaced[bn_name], weights[bn_name] = folded_away(graph.layers[bn_name]), []
        replaced[norm_name], weights[norm_name] = folded_away(graph.layers[norm_name]), []
        replaced[conv_name] = OffsetConv2D.from_config({**conv.get_config(), "use_bias": True})
        weights[conv_name] = _folded_weights(graph, norm_name, pad_name, conv, affine)
    return rebuild(model, replaced, weights) if replaced else model
