"""ResNet-50 and ResNet-101 (He, Zhang, Ren, Sun: "Deep residual learning for image
recognition", CVPR 2016; bottleneck blocks, v1) as a dilated feature extractor.

Layer names, kernel shapes, convolution biases and the BatchNorm epsilon (1.001e-5) are those
of ``keras.applications.ResNet50`` / ``ResNet101`` (``conv1_conv``, ``conv2_block1_1_conv``, ...,
``conv5_block3_3_bn``), so :func:`load_resnet_weights` copies a local ImageNet weights file by
name. As there, a stage's first block downsamples with its first 1x1 conv and its 1x1
projection shortcut (the original Caffe ResNet). BatchNorm is the project's synchronized one.

Stem. PSPNet's ResNet (Zhao et al., CVPR 2017, Sec. 4.1 and the authors' released
prototxts) has the "deep stem": three 3x3 convs (64, 64 and 128 channels, the first with stride
2) instead of the 7x7 conv, so ``conv2_block1`` reads 128 channels. We keep keras.applications'
7x7 stem (64 channels) so that its ImageNet weights fit. Effect on the trainable parameters:
the deep stem has 112,832 (3 convs + BN) against our 9,536 (7x7 conv + BN, its bias counted
below), and its 128-channel input adds 4,096 + 16,384 to ``conv2_block1``'s first conv and
shortcut: the authors' stem costs 123,776 more parameters, 0.5% of ResNet-50's and 0.3% of
ResNet-101's encoder. Every keras.applications conv has a bias (the authors' convs have none),
one parameter per output channel: 26,560 for ResNet-50, 52,672 for ResNet-101. Encoder
totals (trainable): 23,534,592 (ResNet-50) and 42,552,832 (ResNet-101).

``output_stride`` (PSPNet Sec. 4.1, the "dilated network strategy" of Chen et al. and Yu &
Koltun): 8 keeps ``conv4_x`` and ``conv5_x`` at stride 1 with every 3x3 conv of the stage
dilated by 2 and 4 (the authors' prototxts dilate each block of the stage, its first included);
16 dilates only ``conv5_x`` (by 2); 32 is the plain classification network.

Input preprocessing. keras.applications' ResNet weights were trained on Caffe-style input
(BGR, minus the ImageNet mean [103.939, 116.779, 123.68], no scaling). The closest preset
of :mod:`sinet_tf.layers.normalization_presets` is ``portraitnet`` (same channel order and mean, times
0.017); the scale is absorbed by ``conv1_bn`` in training mode (the batch statistics of
``conv1_conv``'s output scale with it), so the ImageNet features start from what they saw.
"""

from __future__ import annotations

import keras

from sinet_tf.backbones import copy_weights_by_name, require_weights_file
from sinet_tf.layers.conv import batch_norm

__all__ = ["RESNET_BLOCKS", "RESNET_STAGES", "resnet_features", "load_resnet_weights"]

# Bottleneck blocks per stage conv2_x .. conv5_x (He et al. 2016, Table 1).
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}

# Stage whose output is the feature at each nominal stride (256, 512, 1024, 2048 channels).
RESNET_STAGES = {4: "conv2", 8: "conv3", 16: "conv4", 32: "conv5"}

_BN_EPSILON = 1.001e-5  # keras.applications' ResNet (the ImageNet weights' statistics)


def _conv(x, filters, kernel_size, name, strides=1, dilation=1):
    # Keras' default (Glorot-uniform) initializer, as keras.applications: with He's, the 16 or 33
    # residual sums of a random network grow activations ~1000x (inference-mode BN is the identity)
    return keras.layers.Conv2D(filters, kernel_size, strides=strides, dilation_rate=dilation,
                               padding="same" if kernel_size > 1 else "valid", name=name)(x)


def _bottleneck(x, filters, stride, dilation, projection, name):
    """1x1 (stride) -> 3x3 (dilation) -> 1x1 to 4x``filters``, BN after each, ReLU after the sum."""
    shortcut = x
    if projection:
        shortcut = batch_norm(_conv(x, 4 * filters, 1, f"{name}_0_conv", strides=stride), f"{name}_0_bn",
                              _BN_EPSILON)
    y = _conv(x, filters, 1, f"{name}_1_conv", strides=stride)
    y = keras.layers.ReLU(name=f"{name}_1_relu")(batch_norm(y, f"{name}_1_bn", _BN_EPSILON))
    y = _conv(y, filters, 3, f"{name}_2_conv", dilation=dilation)
    y = keras.layers.ReLU(name=f"{name}_2_relu")(batch_norm(y, f"{name}_2_bn", _BN_EPSILON))
    y = batch_norm(_conv(y, 4 * filters, 1, f"{name}_3_conv"), f"{name}_3_bn", _BN_EPSILON)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def resnet_features(x, depth=50, output_stride=32):
    """ResNet-``depth`` on normalized input ``x``. Returns ``{nominal stride: tensor}`` for
    strides 4, 8, 16, 32: the outputs of ``conv2_x`` .. ``conv5_x`` (256, 512, 1024, 2048
    channels). Stride 16 is PSPNet's auxiliary-loss tap (``res4b22`` of ResNet-101, ``res4f``
    of ResNet-50). With ``output_stride`` 8 or 16 the deeper stages keep that resolution."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"resnet: depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"resnet: output_stride must be 8, 16 or 32, got {output_stride}")
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = keras.layers.Conv2D(64, 7, strides=2, name="conv1_conv")(x)
    x = keras.layers.ReLU(name="conv1_relu")(batch_norm(x, "conv1_bn", _BN_EPSILON))
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    features, current, dilation = {}, 4, 1
    for stage, (blocks, nominal) in enumerate(zip(RESNET_BLOCKS[depth], RESNET_STAGES), start=2):
        stride = 1 if stage == 2 else 2
        if stride > 1 and current * stride > output_stride:
            stride, dilation = 1, dilation * 2   # every block of the stage dilates (the authors' rule)
        current *= stride
        filters = 64 * 2 ** (stage - 2)
        for i in range(blocks):
            x = _bottleneck(x, filters, stride if i == 0 else 1, dilation, i == 0, f"conv{stage}_block{i + 1}")
        features[nominal] = x
    return features


def load_resnet_weights(model, path, input_shape, model_name, depth=50):
    """Copy keras.applications' ResNet-``depth`` ImageNet weights (a local ``include_top=False``
    file) into ``model``'s encoder layers by name. Nothing is downloaded."""
    path = require_weights_file(model_name, path)
    applications = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101}
    reference = applications[depth](input_shape=tuple(input_shape), include_top=False, weights=path)
    return copy_weights_by_name(model, reference, model_name, path)
