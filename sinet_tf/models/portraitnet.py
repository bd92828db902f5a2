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

import keras

from sinet_tf.backbones.mobilenetv2 import (
    load_mobilenetv2_weights,
    mobilenetv2_features,
)
from sinet_tf.layers.conv import batch_norm
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["PORTRAITNET_DECODER_WIDTHS", "portraitnet", "d_block", "portraitnet_decoder"]

PAPER = "PortraitNet, Computers & Graphics 2019"

log = logging.getLogger("sinet_tf.models")

# Decoder widths, from the 1/32 stage to full resolution (see the module docstring).
PORTRAITNET_DECODER_WIDTHS = (96, 32, 24, 16, 8)

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
        load_mobilenetv2_weights(model, backbone_weights, input_shape, "portraitnet")
    else:
        log.info("portraitnet: no backbone_weights given; the MobileNetV2 encoder is randomly initialized")
    return model
