"""Convolution building blocks with PyTorch-compatible padding and deterministic names.

Layer names are the ``state_dict`` prefixes of the reference PyTorch modules
(``encoder.level1.conv``, ``encoder.level1.bn``, ...), so that
:mod:`sinet_tf.weights` maps checkpoints onto models by name.
"""

from __future__ import annotations

import keras

__all__ = ["conv2d", "depthwise_conv2d", "batch_norm", "prelu", "bn_prelu", "conv_bn_prelu",
           "PYTORCH_BN_MOMENTUM"]

# PyTorch's BatchNorm momentum 0.1 updates running stats as Keras' momentum 0.9 does.
PYTORCH_BN_MOMENTUM = 0.9


def _pad_for_stride(x, kernel_size, strides, dilation, name):
    """PyTorch pads ``dilation*(k-1)/2`` on every side; TF "same" pads stride-2 convs
    asymmetrically, so strided convs get explicit symmetric zero padding."""
    if strides == 1:
        return x, "same"
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    ph, pw = dilation * (kh - 1) // 2, dilation * (kw - 1) // 2
    if ph or pw:
        x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=f"{name}_pad")(x)
    return x, "valid"


def conv2d(x, filters, kernel_size, strides=1, dilation=1, use_bias=False, name=None):
    x, padding = _pad_for_stride(x, kernel_size, strides, dilation, name)
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, padding=padding,
                               dilation_rate=dilation, use_bias=use_bias,
                               kernel_initializer="he_normal", name=name)(x)


def depthwise_conv2d(x, kernel_size, strides=1, dilation=1, use_bias=False, name=None):
    x, padding = _pad_for_stride(x, kernel_size, strides, dilation, name)
    return keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding=padding,
                                        dilation_rate=dilation, use_bias=use_bias,
                                        depthwise_initializer="he_normal", name=name)(x)


def batch_norm(x, name, epsilon=1e-3):
    """BatchNorm whose training statistics are those of the *global* batch under
    ``tf.distribute`` (``synchronized``), so multi-device training computes what one device would."""
    return keras.layers.BatchNormalization(epsilon=epsilon, momentum=PYTORCH_BN_MOMENTUM, synchronized=True,
                                           name=name)(x)


def prelu(x, name):
    """PReLU with one slope per channel (PyTorch ``nn.PReLU(c)``, initial slope 0.25)."""
    return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                              shared_axes=[1, 2], name=name)(x)


def bn_prelu(x, name, epsilon=1e-3):
    """``BR``: BatchNorm + PReLU, layers ``{name}.bn`` and ``{name}.act``."""
    return prelu(batch_norm(x, f"{name}.bn", epsilon), f"{name}.act")


def conv_bn_prelu(x, filters, kernel_size, strides=1, name=None, epsilon=1e-3):
    """``CBR``: conv (no bias) + BatchNorm + PReLU: ``{name}.conv``, ``{name}.bn``, ``{name}.act``."""
    x = conv2d(x, filters, kernel_size, strides=strides, name=f"{name}.conv")
    return bn_prelu(x, name, epsilon)
