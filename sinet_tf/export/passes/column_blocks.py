"""Few-channel convolutions computed on blocks of adjacent columns (:class:`ColumnBlockConv2D`).

In NHWC memory the pixels ``(y, B X + q)``, ``q = 0 .. B - 1``, of a row lie one after
the other, so a ``[H, W, C]`` tensor *is* a ``[H, W / B, B C]`` tensor: a RESHAPE, no data
moves. A conv of a few-channel tensor becomes a conv with ``B`` times the channels on a
``B`` times narrower grid, whose kernel holds the original taps at the matching (block
offset, column phase) positions (:func:`column_block_kernel`), and its output is reshaped
back the same way. The kernels then run on channel counts their vector tiles are made
for instead of padding 2 or 3 channels up to a tile per tap (XNNPACK's int8 convolutions
pad the input channels of every tap; its float ones tile the output channels).

Which convs and which block widths (:data:`BLOCK_WIDTHS`, per export mode and stride)
follow the measurements in ``benchmarks/results/float_rewrites.md``.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.export.passes.graph import RewriteContext, folded_away, read_graph, rebuild
from sinet_tf.export.passes.input_normalization import OffsetConv2D

__all__ = ["BLOCK_WIDTHS", "ColumnBlockConv2D", "column_block_kernel", "convs_on_column_blocks"]

# (export mode, stride) -> columns per block; a pair not listed is left alone.
BLOCK_WIDTHS = {("int8", 1): 16, ("int8", 2): 4, ("float", 1): 8}
MAX_IN_CHANNELS = 4    # only convs this narrow on the input side ...
# ... and on the output side, per stride. A block kernel does (L + 1 + R) B / k times the
# multiply-adds of the original (8x at stride 1 with B = 8 and k = 3, 2.7x at stride 2 with
# B = 4), which pays only where the original wastes most of a vector tile: a 2-channel
# classifier at stride 1 (SINet), a 3 -> 12 first conv at stride 2; sinet_fast's 2 -> 8
# sub-pixel classifier ran 6-10% slower as a whole model on blocks (float_rewrites.md).
MAX_OUT_CHANNELS = {1: 4, 2: 16}
MIN_WIDTH = 64         # and this wide (full- or half-resolution ends of the network)


def _block_geometry(kernel_size: int, stride: int, block: int):
    """``(left, right)``: how many blocks left and right of an output block its taps reach
    (symmetric padding ``p = k // 2``). Output block ``J`` holds output columns
    ``J B / s .. (J + 1) B / s - 1``, which read input columns ``J B - p`` to
    ``J B + B - s - p + k - 1``."""
    p = kernel_size // 2
    return -(-p // block), (block - stride - p + kernel_size - 1) // block


def column_block_kernel(kernel: np.ndarray, bias: np.ndarray, stride: int, block: int):
    """The block kernel ``[k, L + 1 + R, B C_in, (B / s) C_out]`` and bias of
    :class:`ColumnBlockConv2D` for a ``[k, k, C_in, C_out]`` kernel with stride ``s``
    (``k`` odd, symmetric padding ``k // 2``). Input column ``(J - L + u) B + q`` (block
    offset ``u``, phase ``q``) feeds output column ``J B / s + r`` through tap
    ``(u - L) B + q - s r + k // 2``; block channel ``q C_in + c`` is pixel phase ``q``,
    channel ``c`` (the reshape's order), output channel ``r C_out + o`` likewise."""
    k, kw, cin, cout = kernel.shape
    p = kw // 2
    left, right = _block_geometry(kw, stride, block)
    per_block = block // stride
    out = np.zeros((k, left + 1 + right, block * cin, per_block * cout), np.float64)
    for u in range(left + 1 + right):
        for q in range(block):
            for r in range(per_block):
                t = (u - left) * block + q - stride * r + p
                if 0 <= t < kw:
                    out[:, u, q * cin:(q + 1) * cin, r * cout:(r + 1) * cout] = kernel[:, t]
    return out.astype(np.float32), np.tile(np.asarray(bias, np.float64), per_block).astype(np.float32)


@keras.saving.register_keras_serializable(package="sinet_tf")
class ColumnBlockConv2D(keras.layers.Layer):
    """A ``k x k`` convolution with stride ``s`` and symmetric zero padding ``k // 2``
    (``"same"`` at stride 1, PyTorch's ``padding=k // 2`` at stride 2) computed on blocks
    of ``block`` adjacent columns: RESHAPE ``[H, W, C] -> [H, W / B, B C]``, PAD (zeros;
    XNNPACK fuses it into the conv), CONV ``(k, L + 1 + R)`` with strides ``(s, 1)``,
    [ADD of a constant ``offset`` map, an :class:`OffsetConv2D`'s border], RESHAPE back.
    The same function as the original conv, exactly (the taps that reach a padding block
    read zeros, as the original's taps read its zero padding).

    ``rows``: the original's zero rows ``(top, bottom)``."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, block: int = 8, rows=(1, 1),
                 with_offset: bool = False, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        self.block, self.rows, self.with_offset = int(block), (int(rows[0]), int(rows[1])), bool(with_offset)
        self.activation = keras.activations.get(activation)
        if self.block % self.strides:
            raise ValueError(f"{self.name}: block width {block} is not a multiple of stride {strides}")

    def _out_hw(self, input_shape):
        h, w = int(input_shape[1]), int(input_shape[2])
        return (h + sum(self.rows) - self.kernel_size) // self.strides + 1, w // self.strides

    def build(self, input_shape):
        c = int(input_shape[-1])
        if int(input_shape[2]) % self.block:
            raise ValueError(f"{self.name}: width {input_shape[2]} is not a multiple of the block width {self.block}")
        left, right = _block_geometry(self.kernel_size, self.strides, self.block)
        per_block = self.block // self.strides
        self.kernel = self.add_weight(name="kernel", shape=(self.kernel_size, left + 1 + right, self.block * c,
                                                            per_block * self.filters), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(per_block * self.filters,), initializer="zeros")
        if self.with_offset:
            ho, wo = self._out_hw(input_shape)
            self.offset = self.add_weight(name="offset", shape=(1, ho, wo // per_block, per_block * self.filters),
                                          initializer="zeros")

    def call(self, x):
        h, w, c = (int(d) for d in x.shape[1:])
        left, right = _block_geometry(self.kernel_size, self.strides, self.block)
        y = ops.reshape(x, (-1, h, w // self.block, self.block * c))
        y = ops.pad(y, [[0, 0], list(self.rows), [left, right], [0, 0]])
        y = ops.conv(y, ops.cast(self.kernel, y.dtype), strides=(self.strides, 1), padding="valid")
        y = y + ops.cast(self.bias, y.dtype)
        if self.with_offset:
            y = y + ops.cast(self.offset, y.dtype)
        ho, wo = self._out_hw(x.shape)
        return ops.reshape(self.activation(y), (-1, ho, wo, self.filters))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self._out_hw(input_shape), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "block": self.block, "rows": list(self.rows),
                "with_offset": self.with_offset, "activation": keras.activations.serialize(self.activation)}


def _candidate(layer, graph, mode):
    """``(block, rows, padding layer name or None)`` when ``layer`` is a conv this pass
    rewrites in export mode ``mode``, else None."""
    if type(layer) not in (keras.layers.Conv2D, OffsetConv2D):
        return None
    cfg = layer.get_config()
    k, strides = tuple(cfg["kernel_size"]), tuple(cfg["strides"])
    shape = layer.input.shape
    if (cfg["groups"] != 1 or tuple(cfg["dilation_rate"]) != (1, 1) or k[0] != k[1] or k[0] % 2 == 0 or k[0] > 5
            or strides[0] != strides[1] or cfg.get("data_format", "channels_last") != "channels_last"
            or shape[1] is None or shape[2] is None or shape[-1] > MAX_IN_CHANNELS
            or cfg["filters"] > MAX_OUT_CHANNELS.get(strides[0], 0)):
        return None
    block = BLOCK_WIDTHS.get((mode, strides[0]))
    p = k[0] // 2
    pad_name, rows = None, (p, p)
    if cfg["padding"] == "valid":  # PyTorch-style: an explicit symmetric ZeroPadding2D before it
        (src,) = graph.producers[layer.name]
        pad = graph.layers[src]
        if type(pad) is not keras.layers.ZeroPadding2D or not graph.single(src):
            return None
        (top, bottom), (left, right) = pad.padding
        if (left, right) != (p, p) or top != p:
            return None
        pad_name, rows, shape = src, (top, bottom), pad.input.shape
    elif cfg["padding"] != "same" or strides[0] != 1 or type(layer) is OffsetConv2D:
        return None
    if block is None or shape[2] < MIN_WIDTH or shape[2] % block or shape[2] % strides[0]:
        return None
    return block, rows, pad_name


def convs_on_column_blocks(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` with every few-channel, wide, stride-1 "same" or PyTorch-padded
    conv (at most :data:`MAX_IN_CHANNELS` in and :data:`MAX_OUT_CHANNELS` out for its
    stride, width at least :data:`MIN_WIDTH`) a :class:`ColumnBlockConv2D` of the same name and function,
    with the block width :data:`BLOCK_WIDTHS` gives for ``context.mode`` and its stride
    (an explicit ZeroPadding2D before it becomes
    :class:`~sinet_tf.export.passes.graph.FoldedAway`); ``model`` itself when there is none."""
    mode = "int8" if context is None else context.mode
    graph = read_graph(model)
    replaced, weights = {}, {}
    for layer in model.layers:
        found = _candidate(layer, graph, mode)
        if found is None:
            continue
        block, rows, pad_name = found
        cfg = layer.get_config()
        w = layer.get_weights()
        stride = cfg["strides"][0]
        bias = w[1] if cfg["use_bias"] else np.zeros(cfg["filters"], np.float32)
        kernel, tiled = column_block_kernel(np.asarray(w[0], np.float64), bias, stride, block)
        new_weights = [kernel, tiled]
        offset = type(layer) is OffsetConv2D
        if offset:
            per_block = block // stride
            m = np.asarray(w[-1], np.float32)
            new_weights.append(m.reshape(1, m.shape[1], m.shape[2] // per_block, per_block * m.shape[3]))
        replaced[layer.name] = ColumnBlockConv2D(cfg["filters"], cfg["kernel_size"][0], stride, block, rows,
                                                 with_offset=offset, activation=cfg["activation"], name=layer.name,
                                                 dtype=layer.dtype_policy)
        weights[layer.name] = new_weights
        if pad_name is not None:
            replaced[pad_name], weights[pad_name] = folded_away(graph.layers[pad_name]), []
    return rebuild(model, replaced, weights) if replaced else model
