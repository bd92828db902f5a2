"""U-Net (Ronneberger, Fischer, Brox: "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv 1505.04597) and a U-Net decoder on a MobileNetV2 encoder.

``unet`` is the network of the paper's Fig. 1 (Sec. 2): a contracting path of five levels,
each two 3x3 convolutions + ReLU, widths 64, 128, 256, 512, 1024, with 2x2 max-pooling
(stride 2) between levels (four downsamplings, so height and width must be multiples of
16), dropout at the end of the contracting path (Sec. 3.1); an expansive path of four
steps, each a 2x2 "up-convolution" (a transposed conv, stride 2) halving the channels,
concatenation with the contracting path's feature map of that level, and two 3x3
convolutions + ReLU; a final 1x1 convolution to the classes. Weights start from a
Gaussian with standard deviation sqrt(2 / fan_in) (Sec. 3, He-normal).

Padding. The paper's convolutions are unpadded ("valid"): a 572x572 tile gives a 388x388
map, and the skip connections crop the contracting path's maps to the expansive path's
size. We pad every 3x3 convolution ("same"), so the output has the input's size and the
skips need no cropping: the form every widely used implementation deploys
(segmentation_models, milesial/Pytorch-UNet, the Keras examples) and the only one that
gives logits at the input resolution as this toolkit's models must. Padding changes no
weight shape, so the parameter count is the paper's network.

BatchNorm. The paper predates BatchNorm, so ``batch_norm=False`` (the default) builds it
as published: convolutions with bias, ReLU. ``batch_norm=True`` puts the project's
(synchronized) BatchNorm between every 3x3 convolution and its ReLU and drops those
convolutions' biases (a BN's beta replaces them): the common modern variant, which trains
much more easily at the batch sizes and learning rates of portrait recipes
(training/unet.yaml uses it).

Parameters (trainable, 2 classes): 31,031,810 without BatchNorm, the figure commonly quoted
for the same-padded 64-channel U-Net with 2 classes (e.g. torchsummary of the plain
PyTorch U-Net: 31,031,810; "31.0 M"); with ``batch_norm=True`` 31,037,698 (+11,776 BN
scales/offsets, -5,888 biases), the count milesial/Pytorch-UNet's U-Net gives with 2
classes (31,037,633 with 1 class). See tests/test_unet.py.

``unet_mobilenetv2`` (no single paper; documented here, tested in tests/test_unet.py):
MobileNetV2 (width 1.0, keras.applications layer names, ImageNet weights from a local file
with ``backbone_weights=PATH``) up to ``block_16_project_BN`` (320 channels at 1/32), with
the skips the TensorFlow segmentation tutorial (tensorflow.org/tutorials/images/segmentation)
and segmentation_models' ``Unet('mobilenetv2')`` take: the expansion ReLU6 outputs
``block_1_expand_relu`` (96 channels, 1/2), ``block_3_expand_relu`` (144, 1/4),
``block_6_expand_relu`` (192, 1/8) and ``block_13_expand_relu`` (576, 1/16), i.e. the
widest map at each resolution, just before the block that downsamples it. (The tutorial
taps ``block_16_project`` before its BatchNorm; we take the block's real output after it.)
The decoder is U-Net's expansive path with segmentation_models' widths 256, 128, 64, 32,
16: five x2 steps (1/32 -> 1/1), each U-Net's 2x2 up-convolution (transposed conv with
bias, no activation), concatenation with the skip of that resolution (none at full
resolution) and two 3x3 conv + BN + ReLU; a 1x1 classifier at full resolution. (A BN + ReLU
after the up-convolution would be fused into it by the TFLite converter, a TRANSPOSE_CONV
with a fused activation, op version 4, which the GPU delegate refuses.) Parameters with 2
classes: encoder 1,811,712 (= keras.applications ``MobileNetV2(include_top=False)``'s
2,223,872 trainable minus the last 1x1 conv to 1280 channels and its BN, 412,160) +
decoder 3,734,448 + classifier 34 = 5,546,194. Input normalization is ``symmetric`` (RGB in
[-1, 1]), the preprocessing keras.applications' MobileNetV2 ImageNet weights were trained
with.
"""

from __future__ import annotations

import logging

import keras

from sinet_tf.backbones.mobilenetv2 import (
    load_mobilenetv2_weights,
    mobilenetv2_features,
)
from sinet_tf.layers.conv import batch_norm as batch_norm_layer
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["UNET_WIDTHS", "UNET_MOBILENETV2_SKIPS", "UNET_MOBILENETV2_DECODER_WIDTHS",
           "unet", "unet_mobilenetv2", "unet_conv_block"]

PAPER = "U-Net, MICCAI 2015"

log = logging.getLogger("sinet_tf.models")

# Paper Fig. 1: channels of the five levels of the contracting path (base width 64).
UNET_WIDTHS = (64, 128, 256, 512, 1024)

# MobileNetV2 expansion outputs used as skips, from 1/16 up to 1/2 (block id, channels):
# block_13_expand_relu 576, block_6_expand_relu 192, block_3_expand_relu 144, block_1_expand_relu 96.
UNET_MOBILENETV2_SKIPS = (13, 6, 3, 1)

# Decoder widths of unet_mobilenetv2 from 1/16 to full resolution (segmentation_models' Unet default).
UNET_MOBILENETV2_DECODER_WIDTHS = (256, 128, 64, 32, 16)


def unet_conv_block(x, filters, name, batch_norm=False):
    """Two 3x3 convolutions, each followed by ReLU (paper Sec. 2), "same" padding;
    with ``batch_norm`` a BatchNorm between each conv (then bias-free) and its ReLU."""
    for i in (1, 2):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm,
                                kernel_initializer="he_normal", name=f"{name}.conv{i}")(x)
        if batch_norm:
            x = batch_norm_layer(x, f"{name}.bn{i}")
        x = keras.layers.ReLU(name=f"{name}.relu{i}")(x)
    return x


@register_model(paper=PAPER, input_multiple=16, tags=("unet", "large"))
def unet(input_shape=(224, 224, 3), num_classes=2, base_width=64, batch_norm=False, dropout=0.5,
         normalization="imagenet", batch_size=None):
    """U-Net (paper Fig. 1, "same" padding): 4 max-pool levels, widths 64..1024, logits at full resolution.

    ``base_width`` scales every level (``base_width * 2**level``); ``batch_norm=True`` adds
    BatchNorm after every 3x3 conv (the paper has none); ``dropout`` is the rate of the
    dropout at the end of the contracting path (paper Sec. 3.1; 0 removes it).
    """
    check_input_shape("unet", input_shape, 16)
    widths = [int(base_width) * 2 ** i for i in range(len(UNET_WIDTHS))]
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    skips = []
    for level, filters in enumerate(widths[:-1], start=1):
        x = unet_conv_block(x, filters, f"down{level}", batch_norm)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"down{level}.pool")(x)
    x = unet_conv_block(x, widths[-1], "bottom", batch_norm)
    if dropout:
        x = keras.layers.Dropout(float(dropout), name="bottom.dropout")(x)
    for level in range(len(skips), 0, -1):
        filters = widths[level - 1]
        x = keras.layers.Conv2DTranspose(filters, 2, strides=2, kernel_initializer="he_normal",
                                         name=f"up{level}.upconv")(x)
        x = keras.layers.Concatenate(name=f"up{level}.concat")([skips[level - 1], x])
        x = unet_conv_block(x, filters, f"up{level}", batch_norm)
    x = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="classifier")(x)
    return keras.Model(inputs, logits_output(x), name="unet")


@register_model(paper="U-Net decoder on MobileNetV2 (Sandler et al., CVPR 2018)", input_multiple=32,
                tags=("unet", "mobile"))
def unet_mobilenetv2(input_shape=(224, 224, 3), num_classes=2, decoder_widths=UNET_MOBILENETV2_DECODER_WIDTHS,
                     backbone_weights=None, normalization="symmetric", batch_size=None):
    """U-Net with a MobileNetV2 encoder: 5 transposed-conv x2 steps with concatenated skips, full resolution.

    ``backbone_weights`` is a local path to Keras' MobileNetV2 ImageNet ``no_top`` weights
    (alpha 1.0); nothing is downloaded, and without it the encoder starts from random
    initialization. ``decoder_widths``: five widths, from the 1/16 step to full resolution.
    """
    check_input_shape("unet_mobilenetv2", input_shape, 32)
    if len(decoder_widths) != 5:
        raise ValueError(f"unet_mobilenetv2: decoder needs 5 widths (one per x2 step), got {tuple(decoder_widths)}")
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    features = mobilenetv2_features(x, expanded_taps=UNET_MOBILENETV2_SKIPS)
    skips = [features[f"block_{i}_expand_relu"] for i in UNET_MOBILENETV2_SKIPS] + [None]
    x = features[32]
    for step, (filters, skip) in enumerate(zip(decoder_widths, skips), start=1):
        name = f"decoder.up{step}"
        x = keras.layers.Conv2DTranspose(int(filters), 2, strides=2, kernel_initializer="he_normal",
                                         name=f"{name}.upconv")(x)
        if skip is not None:
            x = keras.layers.Concatenate(name=f"{name}.concat")([skip, x])
        x = unet_conv_block(x, int(filters), name, batch_norm=True)
    x = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="classifier")(x)
    model = keras.Model(inputs, logits_output(x), name="unet_mobilenetv2")
    if backbone_weights is not None:
        load_mobilenetv2_weights(model, backbone_weights, input_shape, "unet_mobilenetv2")
    else:
        log.info("unet_mobilenetv2: no backbone_weights given; the MobileNetV2 encoder is randomly initialized")
    return model
