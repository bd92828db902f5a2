"""SINet's Spatial Squeeze (S2) module (Park et al., "SINet: Extreme Lightweight
Portrait Segmentation Networks with Spatial Squeeze Modules and Information Blocking
Decoder", WACV 2020, Sec. 3.1 and Fig. 3).

An S2 module is a grouped pointwise conv (2 groups) followed by a channel shuffle, then
two S2 blocks on the same tensor whose outputs are concatenated, an optional residual
addition and BatchNorm + PReLU. An S2 block squeezes space with an ``s x s`` average
pool, runs a ``k x k`` depthwise conv + BN + PReLU + pointwise conv, and restores the
resolution with bilinear upsampling before its BatchNorm.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.layers.conv import batch_norm, bn_prelu, depthwise_conv2d, prelu
from sinet_tf.layers.resize import BilinearResize

__all__ = ["GroupedPointwiseConv", "channel_shuffle_permutation", "s2_block", "s2_module"]


def channel_shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """ShuffleNet's channel shuffle as an index array: output ``j`` takes input ``perm[j]``.

    Viewing channels as ``[groups, channels / groups]``, transposing and flattening
    sends input ``g * (c / groups) + i`` to output ``i * groups + g``.
    """
    if channels % groups:
        raise ValueError(f"channel shuffle: {channels} channels do not split into {groups} groups")
    j = np.arange(channels)
    return (j % groups) * (channels // groups) + j // groups


@keras.saving.register_keras_serializable(package="sinet_tf")
class GroupedPointwiseConv(keras.layers.Layer):
    """1x1 convolution with ``groups`` groups, optionally followed by a channel shuffle.

    The trainable kernel has the grouped shape ``[1, 1, c_in / groups, filters]``
    (so parameter counts and checkpoints match PyTorch's ``groups=`` conv). At call
    time it is expanded into the equivalent block-diagonal dense kernel whose output
    columns are already in shuffled order. After conversion the kernel is a constant,
    so TFLite sees a single ordinary CONV_2D: no grouped conv and no 5-D
    reshape/transpose, both of which mobile GPU delegates refuse.
    """

    def __init__(self, filters: int, groups: int = 1, shuffle_groups: int | None = None,
                 use_bias: bool = False, kernel_initializer="he_normal", **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.groups = int(groups)
        self.shuffle_groups = None if not shuffle_groups else int(shuffle_groups)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        if self.filters % self.groups:
            raise ValueError(f"{self.name}: filters={filters} not divisible by groups={groups}")

    def build(self, input_shape):
        c_in = int(input_shape[-1])
        if c_in % self.groups:
            raise ValueError(f"{self.name}: {c_in} input channels not divisible by groups={self.groups}")
        self.kernel = self.add_weight(name="kernel", shape=(1, 1, c_in // self.groups, self.filters),
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") \
            if self.use_bias else None
        perm = np.arange(self.filters)
        if self.shuffle_groups:
            perm = channel_shuffle_permutation(self.filters, self.shuffle_groups)
        self._perm = perm

    def dense_kernel(self):
        """The block-diagonal ``[1, 1, c_in, filters]`` kernel, columns in output order."""
        g, k = self.groups, ops.convert_to_tensor(self.kernel)
        cin_g, cout_g = k.shape[2], self.filters // g
        if g == 1:
            dense = k
        else:
            blocks = [ops.pad(k[:, :, :, i * cout_g:(i + 1) * cout_g],
                              [[0, 0], [0, 0], [i * cin_g, (g - 1 - i) * cin_g], [0, 0]])
                      for i in range(g)]
            dense = ops.concatenate(blocks, axis=3)
        if self.shuffle_groups:
            dense = ops.take(dense, self._perm, axis=3)
        return dense

    def call(self, inputs):
        y = ops.conv(inputs, ops.cast(self.dense_kernel(), inputs.dtype), strides=1, padding="valid")
        if self.bias is not None:
            y = y + ops.cast(ops.take(self.bias, self._perm), y.dtype)
        return y

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups,
                "shuffle_groups": self.shuffle_groups, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def s2_block(x, filters, kernel_size, pool, name):
    """One S2 block (``d1`` / ``d2``): [avg-pool s] -> depthwise k x k -> BN -> PReLU ->
    1x1 conv -> [bilinear x s, align_corners] -> BN."""
    if pool > 1:
        x = keras.layers.AveragePooling2D(pool, strides=pool, padding="valid", name=f"{name}.pool")(x)
    x = depthwise_conv2d(x, kernel_size, name=f"{name}.conv.0")
    x = batch_norm(x, f"{name}.conv.1")
    x = prelu(x, f"{name}.act_conv1x1.0")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                            name=f"{name}.act_conv1x1.1")(x)
    if pool > 1:
        x = BilinearResize(scale=pool, name=f"{name}.upsample")(x)
    return batch_norm(x, f"{name}.bn")


def s2_module(x, filters, branches, residual, name, groups=2):
    """S2 module ``c_in -> filters`` with ``branches = [(k1, s1), (k2, s2)]``.

    ``c1`` (grouped 1x1, ``groups`` groups, to ``filters / 2``) and the channel shuffle
    are one :class:`GroupedPointwiseConv`; both S2 blocks read its output.
    """
    if filters % len(branches):
        raise ValueError(f"{name}: {filters} channels do not split over {len(branches)} S2 blocks")
    width = filters // len(branches)
    if residual and x.shape[-1] != filters:
        raise ValueError(f"{name}: a residual S2 module needs c_in == c_out, got {x.shape[-1]} -> {filters}")
    squeezed = GroupedPointwiseConv(width, groups=groups, shuffle_groups=groups, name=f"{name}.c1.conv")(x)
    outs = [s2_block(squeezed, width, k, s, name=f"{name}.d{i + 1}") for i, (k, s) in enumerate(branches)]
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    if residual:
        y = keras.layers.Add(name=f"{name}.add")([x, y])
    return bn_prelu(y, f"{name}.BR")
