"""ExtremeC3Net (Park, Lee, Lee, Kim, Kwak: "ExtremeC3Net: Extreme Lightweight Portrait
Segmentation Networks using Advanced C3-modules", 2019).

The network is the one the official checkpoint encodes (see
``shared/reference/README.md``): 37,738 trainable parameters with one logit at the
paper's p=1, q=5. Layer names are the checkpoint's ``state_dict`` prefixes.
"""

from __future__ import annotations

import keras

from sinet_tf.layers.c3 import TORCH_DEFAULT_BN_EPS, c3_module
from sinet_tf.layers.conv import batch_norm, bn_prelu, conv2d, conv_bn_prelu
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["extremec3net", "extremec3net_encoder", "extremec3net_encoder_features"]

PAPER = "ExtremeC3Net, arXiv 2019"


def extremec3net_encoder_features(x, p=1, q=5):
    """ExtremeC3Net encoder on normalized input ``x``: returns ``b3`` (1/4 resolution, 112 channels)."""
    if p < 1 or q < 1:
        raise ValueError(f"extremec3net: p and q must be >= 1, got p={p}, q={q}")
    level1 = conv_bn_prelu(x, 24, 3, strides=2, name="encoder.level1")
    sample1 = keras.layers.AveragePooling2D(2, name="encoder.sample1")(x)
    sample2 = keras.layers.AveragePooling2D(2, name="encoder.sample2")(sample1)
    b1 = bn_prelu(keras.layers.Concatenate(name="encoder.b1.concat")([level1, sample1]), "encoder.b1")
    level2_0 = c3_module(b1, 48, dilations=(1, 2, 3), downsample=True, name="encoder.level2_0")
    out = level2_0
    for i in range(p):
        out = c3_module(out, 48, dilations=(1, 3, 4), name=f"encoder.level2.{i}")
    b2 = bn_prelu(keras.layers.Concatenate(name="encoder.b2.concat")([out, level2_0, sample2]), "encoder.b2")
    level3_0 = c3_module(b2, 56, dilations=(1, 3, 5), residual=False, name="encoder.level3_0")
    out = level3_0
    for i in range(q):
        out = c3_module(out, 56, dilations=(2, 4, 8), name=f"encoder.level3.{i}")
    return bn_prelu(keras.layers.Concatenate(name="encoder.b3.concat")([level3_0, out]), "encoder.b3")


@register_model(num_classes=1, paper=PAPER, input_multiple=4, tags=("portrait", "mobile", "extremec3net"))
def extremec3net(input_shape=(224, 224, 3), num_classes=1, p=1, q=5, decoder_width=24,
                 normalization="official_sinet", batch_size=None):
    """ExtremeC3Net: advanced-C3 encoder + coarse/fine decoder (one logit by default, person where > 0)."""
    check_input_shape("extremec3net", input_shape, 4)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    b3 = extremec3net_encoder_features(x, p, q)
    coarse = keras.layers.Conv2D(decoder_width, 1, use_bias=False, kernel_initializer="he_normal",
                                 name="upsample.0")(b3)
    coarse = batch_norm(coarse, "upsample.1", epsilon=TORCH_DEFAULT_BN_EPS)
    coarse = BilinearResize(scale=2, name="upsample.2")(coarse)
    fine = conv2d(x, decoder_width, 3, strides=2, name="Fine.0.conv")
    fine = c3_module(fine, decoder_width, dilations=(2, 4, 8), name="Fine.1")
    y = bn_prelu(keras.layers.Add(name="decoder.merge")([coarse, fine]), "classifier.0")
    y = BilinearResize(scale=2, name="classifier.1")(y)
    y = keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer="he_normal", name="classifier.2")(y)
    return keras.Model(inputs, logits_output(y), name="extremec3net")


@register_model(num_classes=1, paper=PAPER, input_multiple=4, tags=("portrait", "mobile", "extremec3net", "stage1"))
def extremec3net_encoder(input_shape=(224, 224, 3), num_classes=1, p=1, q=5,
                         normalization="official_sinet", batch_size=None):
    """ExtremeC3Net stage-1 network: the encoder and a 1x1 classifier, logits at 1/4 resolution."""
    check_input_shape("extremec3net_encoder", input_shape, 4)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    b3 = extremec3net_encoder_features(x, p, q)
    y = keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer="he_normal",
                            name="encoder.classifier.conv")(b3)
    return keras.Model(inputs, logits_output(y), name="extremec3net_encoder")
