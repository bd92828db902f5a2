"""Explicit zero padding before a convolution made the convolution's own "same" padding.

PyTorch pads symmetrically (``padding=p`` on both sides); TensorFlow's ``"same"`` pads
``total = max((out - 1) s + k - n, 0)`` zeros with ``total // 2`` before, the rest after.
So SINet's ``ZeroPadding2D(1)`` + 3x3 stride-2 conv exports as a PAD op and a valid
conv. The same function is a ``"same"`` conv whose kernel has extra zero taps at its end:
on an even size ``n``, a 4-tap kernel at stride 2 is padded 1 before and 1 after (the
output ``i`` reads rows ``2i - 1 .. 2i + 2``; the original 3 taps read ``2i - 1 .. 2i + 1``
and the fourth tap's weight is zero); on an odd size the 3-tap kernel itself is padded 1
and 1. Each spatial axis is solved on its own (:func:`same_kernel_size`), so the kernel
may end up 4 x 3. The padded taps read zeros in both forms, so the result is exact, and
the runtime pads implicitly (no PAD op, no padded copy of the tensor).

It is in no export mode's pass list (``int8_friendly(model, passes=["implicit_padding"])``
asks for it): XNNPACK fuses a zero PAD into the convolution after it on its own, and the
grown kernels (16 taps instead of 9) measured slower there; the numbers are in
``benchmarks/results/float_rewrites.md``. A runtime that runs PAD as an op of its own
(GPU delegates) is where it may pay.
"""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.export.passes.graph import RewriteContext, folded_away, read_graph, rebuild
from sinet_tf.export.passes.input_normalization import OffsetConv2D

__all__ = ["same_kernel_size", "paddings_into_convs"]

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, OffsetConv2D)


def same_kernel_size(n: int, before: int, after: int, k: int, s: int) -> int | None:
    """The smallest kernel size ``k' >= k`` for which a ``"same"`` convolution with stride
    ``s`` over ``n`` values reads the original taps at the positions a valid convolution
    over ``before`` + ``n`` + ``after`` (zero-padded) values reads them: the same number of
    outputs and ``before`` zeros in front. None when there is none (e.g. a pad larger
    than half the kernel)."""
    if n <= 0 or k <= 0 or s <= 0 or before < 0 or after < 0:
        return None
    valid_out = (n + before + after - k) // s + 1
    same_out = -(-n // s)
    if valid_out != same_out:
        return None
    for k2 in range(k, k + 2 * s + 1):
        total = max((same_out - 1) * s + k2 - n, 0)
        if total // 2 == before:
            return k2
    return None


def _candidate(graph, name):
    """``(conv name, (kh', kw'))`` when ZeroPadding2D ``name`` can become conv padding."""
    pad = graph.layers[name]
    if type(pad) is not keras.layers.ZeroPadding2D or not graph.single(name) \
            or pad.data_format != "channels_last":
        return None
    (conv_name,) = graph.consumers[name]
    conv = graph.layers.get(conv_name) if conv_name is not None else None
    if type(conv) not in _CONVS or conv.padding != "valid" or tuple(conv.dilation_rate) != (1, 1) \
            or conv.data_format != "channels_last":
        return None
    shape = pad.input.shape
    if shape[1] is None or shape[2] is None:
        return None
    sizes = [same_kernel_size(int(shape[1 + a]), *pad.padding[a], conv.kernel_size[a], conv.strides[a])
             for a in (0, 1)]
    if None in sizes:
        return None
    return conv_name, tuple(sizes)


def paddings_into_convs(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` in which every ZeroPadding2D read only by a valid, undilated
    Conv2D / DepthwiseConv2D (or :class:`OffsetConv2D`) is that conv's ``"same"`` padding:
    the padding becomes :class:`~sinet_tf.export.passes.graph.FoldedAway`, the conv a
    ``"same"`` conv of the same name whose kernel has zero taps appended where
    :func:`same_kernel_size` needs them (the same function, exactly); ``model`` itself when
    there is none. ``context`` is not used."""
    graph = read_graph(model)
    replaced, weights = {}, {}
    for name in graph.layers:
        found = _candidate(graph, name)
        if found is None:
            continue
        conv_name, (kh, kw) = found
        conv = graph.layers[conv_name]
        w = conv.get_weights()
        kernel = np.asarray(w[0])
        grown = np.zeros((kh, kw, *kernel.shape[2:]), kernel.dtype)
        grown[:kernel.shape[0], :kernel.shape[1]] = kernel
        config = {**conv.get_config(), "padding": "same", "kernel_size": (kh, kw)}
        replaced[conv_name] = conv.__class__.from_config(config)
        weights[conv_name] = [grown, *w[1:]]
        replaced[name], weights[name] = folded_away(graph.layers[name]), []
    return rebuild(model, replaced, weights) if replaced else model
