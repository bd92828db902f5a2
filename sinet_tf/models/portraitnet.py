"""PortraitNet (Zhang, Dong, Li, Li, Yang: "PortraitNet: Real-time portrait segmentation
network for mobile device", Computers & Graphics 82, 2019).

A U-shaped network (paper Fig. 2): a MobileNetV2 (width 1.0) encoder whose features at
1/4, 1/8, 1/16 and 1/32 feed a decoder of five stages, each a D-Block (Fig. 3) followed
by a x2 transposed convolution; the encoder features at 1/16, 1/8 and 1/4 are *added* to
the decoder's upsampled maps. Two 1x1 heads read the full-resolution 8-channel map: the
mask logits and (``boundary_head=True``) the boundary logit that PortraitNet's boundary
(focal) loss supervises during training. At test time only the mask head is needed.

Widths. The decoder's stages are 96, 32, 24, 16 and 8 channels: the first three equal
MobileNetV2's channels at 1/16, 1/8 and 1/4, so the additive skips need no projection,
and 16 and 8 halve the width per stage at 1/2 and full resolution. With plain (groups=1)
4x4 transposed convolutions this gives 2,079,555 trainable parameters with 2 classes and
both heads, the paper's "2.08 M" (the paper's 2.1 M in the text); depthwise transposed
convolutions would give 1.90 M, so the paper's count fixes groups=1.

Encoder layer names are those of ``keras.applications.MobileNetV2`` (``Conv1``,
``block_3_expand``, ...), so ``backbone_weights=PATH`` copies an ImageNet weights file
(the Keras ``..._no_top.h5``) by name; stride-2 convolutions pad as that network does
(TF "same", i.e. one extra row/column bottom-right), so the ImageNet weights see the
geometry they were trained with. BatchNorm is the project's synchronized one.
"""

from __future__ import annotations

import logging
import os

import keras

from sinet_tf.layers.conv import batch_norm
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["PORTRAITNET_DECODER_WIDTHS", "MOBILENETV2_BLOCKS", "portraitnet", "mobilenetv2_features",
           "d_block", "portraitnet_decoder", "load_backbone_weights"]

PAPER = "PortraitNet, Computers & Graphics 2019"

log = logging.getLogger("sinet_tf.models")

# Decoder widths, from the 1/32 stage to full resolution (see the module docstring).
PORTRAITNET_DECODER_WIDTHS = (96, 32, 24, 16, 8)

# MobileNetV2 (Sandler et al. 2018, Table 2) without its last 1x1 conv to 1280:
# (expansion t, output channels c, repeats n, first stride s).
MOBILENETV2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# Index of the last block at each output stride whose output the decoder reads.
_TAPS = {4: 2, 8: 5, 16: 12, 32: 16}


def _relu6(x, name):
    return keras.layers.ReLU(6.0, name=name)(x)


def _inverted_residual(x, expansion, filters, stride, block_id):
    """MobileNetV2 bottleneck with the layer names of ``keras.applications.MobileNetV2``."""
    in_channels = x.shape[-1]
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    y = x
    if block_id:
        y = keras.layers.Conv2D(expansion * in_channels, 1, use_bias=False, kernel_initializer="he_normal",
                                name=f"{prefix}expand")(y)
        y = _relu6(batch_norm(y, f"{prefix}expand_BN"), f"{prefix}expand_relu")
    y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                     depthwise_initializer="he_normal", name=f"{prefix}depthwise")(y)
    y = _relu6(batch_norm(y, f"{prefix}depthwise_BN"), f"{prefix}depthwise_relu")
    y = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                            name=f"{prefix}project")(y)
    y = batch_norm(y, f"{prefix}project_BN")
    if stride == 1 and in_channels == filters:
        y = keras.layers.Add(name=f"{prefix}add")([x, y])
    return y


def mobilenetv2_features(x):
    """MobileNetV2 (width 1.0) on normalized input ``x``: features at strides 4, 8, 16, 32
    (24, 32, 96 and 320 channels), as a dict keyed by stride."""
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, kernel_initializer="he_normal",
                            name="Conv1")(x)
    x = _relu6(batch_norm(x, "bn_Conv1"), "Conv1_relu")
    features, block_id = {}, 0
    for t, c, n, s in MOBILENETV2_BLOCKS:
        for i in range(n):
            x = _inverted_residual(x, t, c, s if i == 0 else 1, block_id)
            for stride, tap in _TAPS.items():
                if tap == block_id:
                    features[stride] = x
            block_id += 1
    return features


def _separable(x, filters, name):
    """Depthwise 3x3 + BN + ReLU + pointwise 1x1 + BN (no activation after the last BN)."""
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, depthwise_initializer="he_normal",
                                     name=f"{name}.dw")(x)
    x = keras.layers.ReLU(name=f"{name}.dw_relu")(batch_norm(x, f"{name}.dw_bn"))
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}.pw")(x)
    return batch_norm(x, f"{name}.pw_bn")


def d_block(x, filters, name):
    """PortraitNet's D-Block (paper Fig. 3): two depthwise-separable convs (ReLU between
    them) on one branch, identity or 1x1 conv + BN on the other, ReLU after the sum."""
    y = _separable(x, filters, f"{name}.sep1")
    y = keras.layers.ReLU(name=f"{name}.sep1_relu")(y)
    y = _separable(y, filters, f"{name}.sep2")
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                                       name=f"{name}.shortcut")(x)
        shortcut = batch_norm(shortcut, f"{name}.shortcut_bn")
    x = keras.layers.Add(name=f"{name}.add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}.relu")(x)


def _upsample(x, name):
    """x2 transposed conv, kernel 4, stride 2, one pixel cropped on each side (PyTorch
    ``ConvTranspose2d(k=4, s=2, padding=1)``; TF "same" gives the same symmetric crop)."""
    return keras.layers.Conv2DTranspose(x.shape[-1], 4, strides=2, padding="same", use_bias=False,
                                        kernel_initializer="he_normal", name=name)(x)


def portraitnet_decoder(features, widths=PORTRAITNET_DECODER_WIDTHS):
    """The five decoder stages on ``features`` (stride -> tensor); returns the
    full-resolution map with ``widths[-1]`` channels."""
    if len(widths) != 5:
        raise ValueError(f"portraitnet: decoder needs 5 widths (one per x2 stage), got {tuple(widths)}")
    x = features[32]
    skips = {1: features[16], 2: features[8], 3: features[4]}
    for i, filters in enumerate(widths):
        if i in skips:
            skip = skips[i]
            if skip.shape[-1] != x.shape[-1]:
                skip = keras.layers.Conv2D(x.shape[-1], 1, use_bias=False, kernel_initializer="he_normal",
                                           name=f"decoder.skip{i}.conv")(skip)
                skip = batch_norm(skip, f"decoder.skip{i}.bn")
            x = keras.layers.Add(name=f"decoder.skip{i}.add")([x, skip])
        x = d_block(x, int(filters), f"decoder.dblock{i + 1}")
        x = _upsample(x, f"decoder.up{i + 1}")
    return x


def load_backbone_weights(model, path, input_shape):
    """Copy MobileNetV2 ImageNet weights (a local Keras ``include_top=False`` weights file,
    alpha 1.0) into ``model``'s encoder layers, matched by layer name."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"portraitnet: backbone_weights file not found: {path}")
    reference = keras.applications.MobileNetV2(input_shape=tuple(input_shape), include_top=False,
                                               weights=path, alpha=1.0)
    copied = 0
    for layer in model.layers:
        try:
            source = reference.get_layer(layer.name)
        except ValueError:
            continue
        if layer.weights:
            layer.set_weights(source.get_weights())
            copied += 1
    log.info("portraitnet: loaded MobileNetV2 weights into %d encoder layers from %s", copied, path)
    return copied


@register_model(paper=PAPER, tags=("portrait", "mobile", "portraitnet"))
def portraitnet(input_shape=(224, 224, 3), num_classes=2, boundary_head=False,
                decoder_widths=PORTRAITNET_DECODER_WIDTHS, backbone_weights=None,
                normalization="portraitnet", batch_size=None):
    """PortraitNet: MobileNetV2 encoder + D-Block/transposed-conv U-decoder, logits at full resolution.

    With ``boundary_head=True`` the model has two outputs, ``[logits, edge_logits]``:
    the mask logits and one boundary logit per pixel (for the boundary loss).
    ``backbone_weights`` is a local path to Keras' MobileNetV2 ImageNet ``no_top`` weights;
    nothing is downloaded, and without it the encoder starts from random initialization.
    """
    check_input_shape("portraitnet", input_shape, 32)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    features = mobilenetv2_features(x)
    x = portraitnet_decoder(features, decoder_widths)
    mask = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="mask_head")(x)
    outputs = logits_output(mask, "logits")
    if boundary_head:
        edge = keras.layers.Conv2D(1, 1, kernel_initializer="he_normal", name="edge_head")(x)
        outputs = [outputs, logits_output(edge, "edge_logits")]
    model = keras.Model(inputs, outputs, name="portraitnet")
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights, input_shape)
    else:
        log.info("portraitnet: no backbone_weights given; the MobileNetV2 encoder is randomly initialized")
    return model
