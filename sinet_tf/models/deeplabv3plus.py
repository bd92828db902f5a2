"""DeepLabv3+ (Chen, Zhu, Papandreou, Schroff, Adam: "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018).

Encoder (Sec. 3.1, Fig. 2): an atrous backbone at output stride 16 (or 8) followed by
DeepLabv3's ASPP (Chen et al. 2017, Sec. 3.3): a 1x1 conv, three 3x3 atrous convs at
rates 6, 12, 18 (doubled at output stride 8) and image-level pooling (global average
pool -> 1x1 conv -> BN -> ReLU -> broadcast back to the feature size), each 256 channels
with BN + ReLU, concatenated and projected by a 1x1 conv to 256 (+ BN + ReLU, dropout 0.1 as
in the authors' code). Decoder (Sec. 3.1): the backbone's low-level feature at 1/4 through
a 1x1 conv to 48 channels (+ BN + ReLU; "48" is the paper's Table 1 choice), the encoder
output bilinearly upsampled to 1/4 (x4 at output stride 16, x2 at 8), concatenated, two
3x3 convs of 256 and a 1x1 classifier, upsampled x4 to the input. The 3x3 convs of ASPP and
decoder are *atrous separable* (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU):
the paper's best model (Sec. 3.2/4.3, Table 5 "SC"), and the default of the authors' code
(``aspp_with_separable_conv``, ``decoder_use_separable_conv``).

Variants:

* ``deeplabv3plus_xception``: the paper's aligned Xception-65 (Sec. 3.2, Fig. 4;
  :mod:`sinet_tf.backbones.xception`), full ASPP. Low-level feature: the second separable
  conv of the 256-wide entry-flow module (256 channels).
* ``deeplabv3plus_mobilenetv2``: MobileNetV2 (:mod:`sinet_tf.backbones.mobilenetv2`, Keras
  layer names, up to the 320-channel block as the authors' ``layer_18``). ASPP without the
  atrous branches, i.e. the 1x1 conv and image pooling only: the authors' mobile
  configuration ("Mobile DeepLabv3", MobileNetV2 paper Sec. 6.3 / Table 7: ASPP raises the
  parameters from 2.11 M to 4.52 M and the multiply-adds from 2.75 B to 5.8 B for +0.4%
  mIOU; their released MobileNetV2 checkpoints use no ASPP). The DeepLabv3+ decoder is added
  as the paper adds it to any backbone; its low-level feature is the stride-4 block
  (``block_2_add``, 24 channels). The authors' code taps the depthwise output of that block
  instead (144 channels, ``layer_4/depthwise_output``): 5,760 more weights in the 48-channel
  projection. ``atrous_rates=(6, 12, 18)`` restores the full (separable) ASPP.

Upsampling uses half-pixel centers (``align_corners=False``). The authors' code resizes with
``align_corners=True``, which is the consistent choice for their crop sizes of the form
``16k + 1`` (513); our inputs are multiples of the output stride, where a stride-``s``
feature pixel covers input pixels ``[s*i, s*i + s)`` and half-pixel centers map them
exactly. The image-pooling branch broadcasts its 1x1 map with the same bilinear resize (a
RESIZE_BILINEAR of a 1x1 tensor, which the GPU delegate accepts; no TILE, no SHAPE).

Input sizes: height and width must be multiples of ``output_stride`` (16 by default, 8 at
output stride 8): the encoder halves the size log2(``output_stride``) times (padding
symmetrically) and the decoder scales back by exact integer factors. Default input 224x224,
the resolution of the portrait benchmarks the other models of this zoo follow (EG1800 as
PortraitNet and SINet evaluate it), so multiply-adds compare like for like. The paper trains
on 513x513 crops; at 224 the feature map is 14x14, so the rate-12 and rate-18 branches see
mostly padding (the "degenerate to 1x1" effect of DeepLabv3 Sec. 3.3): give a larger
``input_shape`` or smaller ``atrous_rates`` to change that.

Normalization: ``symmetric`` (RGB in [-1, 1]): the authors' preprocessing for both
backbones (``_preprocess_zero_mean_unit_range``) and Keras' MobileNetV2 ImageNet weights'.

Parameters (trainable: conv kernels, BN gamma/beta, classifier bias):

* Xception-65: 41,050,530 at 2 classes (41,055,413 at 21). The authors report DeepLabv3+
  with Xception-71 at 43.48 M parameters for Cityscapes' 19 classes (the DeepLabv3+ row of
  the Cityscapes comparisons in Auto-DeepLab, Liu, Chen, Schroff, Adam et al., CVPR 2019, and
  in DPC, Chen et al., NeurIPS 2018; HRNetV2 quotes it as 43.5 M). This file with the
  authors' Xception-71 (two more entry-flow modules, 2,422,424 parameters) and 19 classes
  gives 43,477,323: that figure to 0.01%.
* MobileNetV2: 2,260,466 at 2 classes (2,265,349 at 21). The MobileNetV2 paper (Sandler,
  Howard, Zhu, Zhmoginov, Chen, CVPR 2018, Table 7) reports 2.11 M for its Mobile DeepLabv3
  (320-channel feature, OS 16, no ASPP, 21 classes); the DeepLabv3+ decoder adds 151,792
  (48-channel projection 1,248; separable convs 81,680 and 68,864), i.e. 2.262 M expected at
  21 classes, 0.16% below ours.

Multiply-adds (:func:`sinet_tf.model_cost.count_macs`): 9.82 G (Xception) and 0.98 G
(MobileNetV2) at 224x224. At 512x512 the Xception model counts 51.3 G, against the 54.17 G
the authors' model zoo lists for 513x513 (33x33 instead of 32x32 features: 6% more).
"""

from __future__ import annotations

import logging

import keras

from sinet_tf.backbones import require_weights_file
from sinet_tf.backbones.mobilenetv2 import (
    load_mobilenetv2_weights,
    mobilenetv2_features,
)
from sinet_tf.backbones.xception import (
    check_xception_weights_path,
    load_xception_weights,
    xception_features,
)
from sinet_tf.layers.conv import batch_norm
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["ASPP_RATES", "deeplabv3plus_xception", "deeplabv3plus_mobilenetv2", "aspp", "deeplabv3plus_decoder"]

PAPER = "DeepLabv3+, ECCV 2018"

log = logging.getLogger("sinet_tf.models")

# Atrous rates of ASPP's 3x3 branches at output stride 16 (paper Sec. 4; doubled at 8).
ASPP_RATES = (6, 12, 18)

# Head BatchNorm epsilon of the authors' code (their backbones use 1e-3).
_HEAD_EPSILON = 1e-5


def _conv_bn_relu(x, filters, name):
    """1x1 conv (no bias) + BN + ReLU: ``{name}``, ``{name}.bn``, ``{name}.relu``."""
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=name)(x)
    return keras.layers.ReLU(name=f"{name}.relu")(batch_norm(x, f"{name}.bn", _HEAD_EPSILON))


def _separable_conv_bn_relu(x, filters, dilation, name):
    """Atrous separable conv: depthwise 3x3 (dilated) + BN + ReLU, pointwise 1x1 + BN + ReLU
    (the authors' ``_split_separable_conv2d``)."""
    x = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=dilation, use_bias=False,
                                     depthwise_initializer="he_normal", name=f"{name}_depthwise")(x)
    x = keras.layers.ReLU(name=f"{name}_depthwise.relu")(batch_norm(x, f"{name}_depthwise.bn", _HEAD_EPSILON))
    return _conv_bn_relu(x, filters, f"{name}_pointwise")


def aspp(x, rates, filters=256, dropout=0.1):
    """ASPP with image pooling (DeepLabv3 Sec. 3.3), separable atrous branches (DeepLabv3+
    Sec. 3.2). Branch order as in the authors' code: image pooling, 1x1, one per rate."""
    h, w = x.shape[1], x.shape[2]
    pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling.pool")(x)
    pooled = _conv_bn_relu(pooled, filters, "image_pooling")
    branches = [BilinearResize(size=(h, w), align_corners=False, name="image_pooling.broadcast")(pooled),
                _conv_bn_relu(x, filters, "aspp0")]
    branches += [_separable_conv_bn_relu(x, filters, rate, f"aspp{i}") for i, rate in enumerate(rates, 1)]
    x = keras.layers.Concatenate(name="aspp.concat")(branches)
    x = _conv_bn_relu(x, filters, "concat_projection")
    return keras.layers.Dropout(dropout, name="concat_projection.dropout")(x)


def deeplabv3plus_decoder(encoded, low_level, filters=256, low_level_filters=48):
    """Paper Sec. 3.1 / Fig. 2: project the 1/4 feature to 48 channels, upsample the encoder
    output to 1/4, concatenate, two separable 3x3 convs of 256."""
    low = _conv_bn_relu(low_level, low_level_filters, "decoder.feature_projection0")
    scale = low.shape[1] // encoded.shape[1]
    if scale * encoded.shape[1] != low.shape[1] or scale * encoded.shape[2] != low.shape[2]:
        raise ValueError(f"deeplabv3plus: encoder output {tuple(encoded.shape[1:3])} does not scale exactly to the "
                         f"low-level feature {tuple(low.shape[1:3])}")
    up = BilinearResize(scale=scale, align_corners=False, name="decoder.upsample")(encoded)
    x = keras.layers.Concatenate(name="decoder.concat")([up, low])
    x = _separable_conv_bn_relu(x, filters, 1, "decoder.decoder_conv0")
    return _separable_conv_bn_relu(x, filters, 1, "decoder.decoder_conv1")


def _check(name, input_shape, output_stride):
    if output_stride not in (8, 16):
        raise ValueError(f"{name}: output_stride must be 16 or 8, got {output_stride}")
    try:
        check_input_shape(name, input_shape, output_stride)
    except ValueError as e:
        raise ValueError(f"{e}; at output_stride={output_stride} the encoder reduces the input "
                         f"{output_stride}x and the decoder scales it back exactly") from None


def _rates(atrous_rates, output_stride):
    """``None``: the paper's rates for ``output_stride`` (6, 12, 18 at 16; doubled at 8)."""
    if atrous_rates is None:
        return tuple(r * 16 // output_stride for r in ASPP_RATES)
    return tuple(int(r) for r in atrous_rates)


def _deeplabv3plus(name, inputs, features, num_classes, rates):
    x = aspp(features[32], rates)
    x = deeplabv3plus_decoder(x, features[4])
    x = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="classifier")(x)
    x = BilinearResize(scale=4, align_corners=False, name="upsample")(x)
    return keras.Model(inputs, logits_output(x), name=name)


@register_model(default_input_size=(224, 224), paper=PAPER, input_multiple=16, tags=("deeplab", "xception", "large"))
def deeplabv3plus_xception(input_shape=(224, 224, 3), num_classes=2, output_stride=16, atrous_rates=None,
                           backbone_weights=None, normalization="symmetric", batch_size=None):
    """DeepLabv3+ with the aligned Xception-65 (the paper's model): ASPP + decoder, separable convs.

    ``output_stride`` 16 (paper's training setting) or 8; ``atrous_rates`` defaults to
    (6, 12, 18) at 16 and (12, 24, 36) at 8. ``backbone_weights``: a local ``.weights.h5``
    saved from :func:`sinet_tf.backbones.xception.xception_model` or a ``.keras`` model that
    contains the backbone (copied by layer name; see the backbone's docstring). Without it
    the encoder is randomly initialized.
    """
    name = "deeplabv3plus_xception"
    _check(name, input_shape, output_stride)
    if backbone_weights is not None:
        check_xception_weights_path(name, backbone_weights)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    features = xception_features(x, output_stride)
    model = _deeplabv3plus(name, inputs, features, num_classes, _rates(atrous_rates, output_stride))
    if backbone_weights is not None:
        load_xception_weights(model, backbone_weights, name)
    else:
        log.info("%s: no backbone_weights given; the aligned Xception-65 encoder is randomly initialized", name)
    return model


@register_model(default_input_size=(224, 224), paper=PAPER, input_multiple=16,
                tags=("deeplab", "mobile", "mobilenetv2"))
def deeplabv3plus_mobilenetv2(input_shape=(224, 224, 3), num_classes=2, output_stride=16, atrous_rates=(),
                              backbone_weights=None, normalization="symmetric", batch_size=None):
    """DeepLabv3+ with MobileNetV2: the authors' mobile ASPP (1x1 + image pooling) + decoder.

    ``atrous_rates=()`` (default) leaves out ASPP's atrous branches as the authors' mobile
    models do; pass the paper's (6, 12, 18) at output stride 16 (12, 24, 36 at 8), or any
    rates, for separable atrous branches. ``backbone_weights``: local path to Keras'
    MobileNetV2 ImageNet ``no_top`` weights (alpha 1.0), copied by layer name; nothing is
    downloaded.
    """
    name = "deeplabv3plus_mobilenetv2"
    _check(name, input_shape, output_stride)
    if backbone_weights is not None:
        require_weights_file(name, backbone_weights)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    features = mobilenetv2_features(x, output_stride)
    model = _deeplabv3plus(name, inputs, features, num_classes, _rates(atrous_rates, output_stride))
    if backbone_weights is not None:
        load_mobilenetv2_weights(model, backbone_weights, input_shape, name)
    else:
        log.info("%s: no backbone_weights given; the MobileNetV2 encoder is randomly initialized", name)
    return model
