"""MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen: "MobileNetV2: Inverted residuals and
linear bottlenecks", CVPR 2018), width 1.0, as a feature extractor.

Layer names are those of ``keras.applications.MobileNetV2`` (``Conv1``, ``block_3_expand``,
...), so :func:`load_mobilenetv2_weights` copies a local ImageNet weights file (Keras'
``..._no_top.h5``) by name; stride-2 convolutions pad as that network does (TF "same").

``output_stride`` 16 or 8 turns the last strides into dilations (DeepLab's atrous
encoder, Chen et al. 2017 Sec. 3.1): a block that would downsample beyond the output
stride keeps stride 1, and it and every later depthwise conv dilate by the stride skipped.
"""

from __future__ import annotations

import keras

from sinet_tf.backbones import copy_weights_by_name, require_weights_file
from sinet_tf.layers.conv import batch_norm

__all__ = ["MOBILENETV2_BLOCKS", "MOBILENETV2_TAPS", "mobilenetv2_features", "load_mobilenetv2_weights"]

# Paper Table 2 without the last 1x1 conv to 1280: (expansion t, channels c, repeats n, stride s).
MOBILENETV2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# Index of the last block at each nominal stride (24, 32, 96, 320 channels at 4, 8, 16, 32).
MOBILENETV2_TAPS = {4: 2, 8: 5, 16: 12, 32: 16}


def _relu6(x, name):
    return keras.layers.ReLU(6.0, name=name)(x)


def _inverted_residual(x, expansion, filters, stride, dilation, block_id, taps=None):
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    y = x
    if block_id:
        y = keras.layers.Conv2D(expansion * in_channels, 1, use_bias=False, kernel_initializer="he_normal",
                                name=f"{prefix}expand")(y)
        y = _relu6(batch_norm(y, f"{prefix}expand_BN"), f"{prefix}expand_relu")
        if taps is not None:
            taps[f"{prefix}expand_relu"] = y
    y = keras.layers.DepthwiseConv2D(3, strides=stride, dilation_rate=dilation, padding="same", use_bias=False,
                                     depthwise_initializer="he_normal", name=f"{prefix}depthwise")(y)
    y = _relu6(batch_norm(y, f"{prefix}depthwise_BN"), f"{prefix}depthwise_relu")
    y = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                            name=f"{prefix}project")(y)
    y = batch_norm(y, f"{prefix}project_BN")
    if stride == 1 and in_channels == filters:
        y = keras.layers.Add(name=f"{prefix}add")([x, y])
    return y


def mobilenetv2_features(x, output_stride=32, expanded_taps=()):
    """MobileNetV2 on normalized input ``x``. Returns ``{nominal stride: tensor}`` for
    strides 4, 8, 16, 32 (24, 32, 96, 320 channels); with ``output_stride`` 8 or 16 the
    deeper taps keep that resolution (dilated convs instead of strides).

    ``expanded_taps``: block ids whose expansion output (the ReLU6 after the 1x1 expand
    conv, before the block's depthwise conv and its stride) is also returned, keyed by
    its keras.applications layer name, e.g. ``(1, 3)`` adds ``"block_1_expand_relu"``
    (96 channels at 1/2) and ``"block_3_expand_relu"`` (144 channels at 1/4)."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"mobilenetv2: output_stride must be 8, 16 or 32, got {output_stride}")
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal",
                            name="Conv1")(x)
    x = _relu6(batch_norm(x, "bn_Conv1"), "Conv1_relu")
    features, block_id, current, dilation = {}, 0, 2, 1
    wanted, expanded = {int(i) for i in expanded_taps}, {}
    if not wanted <= set(range(1, 17)):  # block_0 ("expanded_conv") has no expansion
        raise ValueError(f"mobilenetv2: expanded_taps must be block ids 1..16, got {tuple(expanded_taps)}")
    for t, c, n, s in MOBILENETV2_BLOCKS:
        for i in range(n):
            stride = s if i == 0 else 1
            if stride > 1 and current * stride > output_stride:
                block_dilation, stride = dilation, 1   # the first block keeps the old rate, later ones dilate
                dilation *= s
            else:
                block_dilation = dilation
                current *= stride
            x = _inverted_residual(x, t, c, stride, block_dilation if i == 0 else dilation, block_id,
                                   expanded if block_id in wanted else None)
            for nominal, tap in MOBILENETV2_TAPS.items():
                if tap == block_id:
                    features[nominal] = x
            block_id += 1
    features.update(expanded)
    return features


def load_mobilenetv2_weights(model, path, input_shape, model_name):
    """Copy Keras' MobileNetV2 ImageNet weights (a local ``include_top=False`` file, alpha
    1.0) into ``model``'s encoder layers by name. Nothing is downloaded."""
    path = require_weights_file(model_name, path)
    reference = keras.applications.MobileNetV2(input_shape=tuple(input_shape), include_top=False,
                                               weights=path, alpha=1.0)
    return copy_weights_by_name(model, reference, model_name, path)
