"""Reusable blocks: conv-bn-act, squeeze-excite, S2 and C3 modules, resizing, normalization."""

from sinet_tf.layers.c3 import c3_branch, c3_module
from sinet_tf.layers.conv import (
    batch_norm,
    bn_prelu,
    conv2d,
    conv_bn_prelu,
    depthwise_conv2d,
    prelu,
)
from sinet_tf.layers.information_blocking import InformationBlockingGate
from sinet_tf.layers.normalization import InputNormalization
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import (
    GroupedPointwiseConv,
    channel_shuffle_permutation,
    s2_block,
    s2_module,
)
from sinet_tf.layers.squeeze_excite import squeeze_excite

__all__ = [
    "BilinearResize", "GroupedPointwiseConv", "InformationBlockingGate", "InputNormalization",
    "batch_norm", "bn_prelu", "c3_branch", "c3_module", "channel_shuffle_permutation", "conv2d",
    "conv_bn_prelu", "depthwise_conv2d", "prelu", "s2_block", "s2_module", "squeeze_excite",
]
