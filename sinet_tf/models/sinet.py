"""SINet (Park, Lee, Lee, Kim, Kwak: "SINet: Extreme Lightweight Portrait Segmentation
Networks with Spatial Squeeze Modules and Information Blocking Decoder", WACV 2020).

The network is the one the official checkpoint encodes (see
``shared/reference/README.md``): 86,910 trainable parameters with 2 classes at the
paper's p=2, q=8. Layer names are the checkpoint's ``state_dict`` prefixes.
"""

from __future__ import annotations

import keras

from sinet_tf.layers.conv import (
    batch_norm,
    bn_prelu,
    conv_bn_prelu,
    depthwise_conv2d,
    prelu,
)
from sinet_tf.layers.information_blocking import InformationBlockingGate
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import s2_module
from sinet_tf.layers.squeeze_excite import squeeze_excite
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["SINET_S2_CONFIG", "sinet", "sinet_encoder", "sinet_encoder_features", "information_blocking_decoder"]

PAPER = "SINet, WACV 2020"

# (kernel, pool) of the two S2 blocks of each S2 module: level2.0, level2.1, level3.0 .. level3.7
# (the configuration the paper's Table 1 search found and the official checkpoint uses).
SINET_S2_CONFIG = (
    ((3, 1), (5, 1)), ((3, 1), (3, 1)),
    ((3, 1), (5, 1)), ((3, 1), (3, 1)), ((5, 1), (3, 2)), ((5, 2), (3, 4)),
    ((3, 1), (3, 1)), ((5, 1), (5, 1)), ((3, 2), (3, 4)), ((3, 1), (5, 2)),
)


def _down_sampler(x, filters, se_reduction, name):
    """SINet's down-sampling block: depthwise 3x3 stride 2 -> squeeze-excite -> 1x1 conv -> BN -> PReLU."""
    c = x.shape[-1]
    x = depthwise_conv2d(x, 3, strides=2, name=f"{name}.conv.0")
    hidden = [] if se_reduction == 1 else [c // se_reduction]
    x = squeeze_excite(x, hidden, name=f"{name}.conv.1")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}.conv.2")(x)
    x = batch_norm(x, f"{name}.bn")
    return prelu(x, f"{name}.act")


def _resolve_config(p, q, s2_config):
    config = tuple(tuple(tuple(b) for b in m) for m in (s2_config or SINET_S2_CONFIG))
    if s2_config is None and (p, q) != (2, 8):
        # Keep the searched blocks and cycle them when a deeper/shallower net is asked for.
        lvl2, lvl3 = config[:2], config[2:]
        config = tuple(lvl2[i % 2] for i in range(p)) + tuple(lvl3[i % 8] for i in range(q))
    if len(config) != p + q:
        raise ValueError(f"sinet: s2_config has {len(config)} modules but p + q = {p + q}")
    return config


def sinet_encoder_features(x, num_classes=2, p=2, q=8, chnn=1, s2_config=None):
    """The SINet encoder on normalized input ``x``.

    Returns ``(output2, logits_1_8)``: the level-2 S2 output (1/4 resolution, used by the
    decoder's ``level2_C``) and the encoder classifier's logits at 1/8 resolution.
    ``chnn`` widens levels 2 and 3 by ``4 * (chnn - 1)`` channels, as in the official code.
    """
    if p < 1 or q < 1:
        raise ValueError(f"sinet: p and q must be >= 1, got p={p}, q={q}")
    config = _resolve_config(p, q, s2_config)
    dim1, dim2, dim3 = 16, 48 + 4 * (chnn - 1), 96 + 4 * (chnn - 1)
    level1 = conv_bn_prelu(x, 12, 3, strides=2, name="encoder.level1")
    level2_0 = _down_sampler(level1, dim1, se_reduction=1, name="encoder.level2_0")
    out = level2_0
    for i in range(p):
        out = s2_module(out, dim2, config[i], residual=i > 0, name=f"encoder.level2.{i}")
    output2 = out
    x = keras.layers.Concatenate(name="encoder.BR2.concat")([level2_0, output2])
    x = bn_prelu(x, "encoder.BR2")
    level3_0 = _down_sampler(x, dim2, se_reduction=2, name="encoder.level3_0")
    out = level3_0
    for i in range(q):
        out = s2_module(out, dim3, config[p + i], residual=i > 0, name=f"encoder.level3.{i}")
    x = keras.layers.Concatenate(name="encoder.BR3.concat")([level3_0, out])
    x = bn_prelu(x, "encoder.BR3")
    logits = keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer="he_normal",
                                 name="encoder.classifier.conv")(x)
    return output2, logits


def information_blocking_decoder(output2, encoder_logits, num_classes):
    """SINet's Information Blocking decoder (paper Sec. 3.2, Fig. 4).

    ``stage1 = BN(up2(enc))``; ``gate = 1 - max softmax(stage1)``;
    ``stage2 = BN(up2(CBR_1x1(output2) * gate + stage1))``; logits = conv3x3(up2(stage2)).
    """
    stage1 = batch_norm(BilinearResize(scale=2, name="decoder.up1")(encoder_logits), "bn_3")
    gate = InformationBlockingGate(name="decoder.gate")(stage1)
    detail = conv_bn_prelu(output2, num_classes, 1, name="level2_C")
    blocked = keras.layers.Multiply(name="decoder.block")([detail, gate])
    x = keras.layers.Add(name="decoder.merge")([blocked, stage1])
    stage2 = batch_norm(BilinearResize(scale=2, name="decoder.up2")(x), "bn_2")
    x = BilinearResize(scale=2, name="classifier.0")(stage2)
    return keras.layers.Conv2D(num_classes, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                               name="classifier.1")(x)


@register_model(paper=PAPER, tags=("portrait", "mobile", "sinet"))
def sinet(input_shape=(224, 224, 3), num_classes=2, p=2, q=8, chnn=1, s2_config=None,
          normalization="official_sinet", batch_size=None):
    """SINet: S2-module encoder + Information Blocking decoder, logits at full resolution."""
    check_input_shape("sinet", input_shape, 32)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    output2, enc = sinet_encoder_features(x, num_classes, p, q, chnn, s2_config)
    logits = information_blocking_decoder(output2, enc, num_classes)
    return keras.Model(inputs, logits_output(logits), name="sinet")


@register_model(paper=PAPER, tags=("portrait", "mobile", "sinet", "stage1"))
def sinet_encoder(input_shape=(224, 224, 3), num_classes=2, p=2, q=8, chnn=1, s2_config=None,
                  normalization="official_sinet", batch_size=None):
    """SINet stage-1 network: the encoder alone, logits at 1/8 resolution."""
    check_input_shape("sinet_encoder", input_shape, 32)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    _, enc = sinet_encoder_features(x, num_classes, p, q, chnn, s2_config)
    return keras.Model(inputs, logits_output(enc), name="sinet_encoder")
