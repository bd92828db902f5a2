"""ExtremeC3Net's concentrated-comprehensive convolution blocks (Park et al.,
"ExtremeC3Net: Extreme Lightweight Portrait Segmentation Networks using Advanced C3-modules",
2019, Sec. 3 and Fig. 2).

A C3 branch with dilation ``d > 1`` first *concentrates* with two asymmetric
depthwise convs ``(2d-1) x 1`` and ``1 x (2d-1)`` (each followed by BatchNorm, the
first also by PReLU), then applies the *comprehensive* dilated 3x3 depthwise conv and
a pointwise conv. With ``d == 1`` it is a plain depthwise 3x3 + pointwise conv.
"""

from __future__ import annotations

import keras

from sinet_tf.layers.conv import batch_norm, bn_prelu, conv2d, depthwise_conv2d, prelu

__all__ = ["c3_branch", "c3_module", "TORCH_DEFAULT_BN_EPS"]

# BatchNorms inside the dilated branches keep PyTorch's default epsilon.
TORCH_DEFAULT_BN_EPS = 1e-5


def c3_branch(x, filters, dilation, name):
    if dilation == 1:
        x = depthwise_conv2d(x, 3, name=f"{name}.conv.0")
        return keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                                   name=f"{name}.conv.1")(x)
    k = 2 * dilation - 1
    x = depthwise_conv2d(x, (k, 1), name=f"{name}.conv.0")
    x = batch_norm(x, f"{name}.conv.1", epsilon=TORCH_DEFAULT_BN_EPS)
    x = prelu(x, f"{name}.conv.2")
    x = depthwise_conv2d(x, (1, k), name=f"{name}.conv.3")
    x = batch_norm(x, f"{name}.conv.4", epsilon=TORCH_DEFAULT_BN_EPS)
    x = depthwise_conv2d(x, 3, dilation=dilation, name=f"{name}.conv.5")
    return keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                               name=f"{name}.conv.6")(x)


def c3_module(x, filters, dilations=(2, 4, 8), residual=None, downsample=False, name=None):
    """Advanced C3 module ``c_in -> filters`` (``residual`` defaults to ``c_in == filters``).

    ``n = filters // len(dilations)`` channels per branch, the first branch taking the
    remainder; a 1x1 conv (3x3 stride 2 when ``downsample``) reduces the input to ``n``
    channels and every branch reads that tensor; the branch outputs are concatenated,
    the input is added when residual, and BatchNorm + PReLU follow (``{name}.bn.bn`` /
    ``{name}.bn.act``; the down-sampling module names them ``{name}.bn`` / ``{name}.act``).
    """
    n = filters // len(dilations)
    widths = [filters - n * (len(dilations) - 1)] + [n] * (len(dilations) - 1)
    if residual is None:
        residual = not downsample and x.shape[-1] == filters
    if residual and x.shape[-1] != filters:
        raise ValueError(f"{name}: a residual C3 module needs c_in == c_out, got {x.shape[-1]} -> {filters}")
    reduced = conv2d(x, n, 3 if downsample else 1, strides=2 if downsample else 1, name=f"{name}.c1.conv")
    outs = [c3_branch(reduced, w, d, name=f"{name}.d{i + 1}") for i, (w, d) in enumerate(zip(widths, dilations))]
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    if residual:
        y = keras.layers.Add(name=f"{name}.add")([x, y])
    if downsample:
        return bn_prelu(y, name)
    return bn_prelu(y, f"{name}.bn")


