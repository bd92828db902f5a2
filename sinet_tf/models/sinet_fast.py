"""An accelerator-friendly SINet: the network of Park et al. (WACV 2020) with the ops that
deployment runtimes handle worst replaced, to be trained from the official checkpoint by
distillation (every layer keeps its official name and shape, so ``init:`` with the
official ``state_dict`` and ``init_strict: false`` starts from the official weights).

What changes, and why (the op kinds, not the multiply-adds, decide on-device time):

* **ReLU instead of PReLU** (``activation="relu"``). A ReLU after a conv, depthwise conv,
  BN or add is fused into that op by the TFLite converter (a clamp, in float and int8);
  a PReLU is an op of its own (in int8 two: XNNPACK has no int8 PRELU, see
  :mod:`sinet_tf.export.passes.prelu`).
* **No squeeze-excite** in the down-samplers (``squeeze_excite=False``): its global mean
  is a full pass over the tensor before the multiply can start, and SINet's form
  (Linear + PReLU, no sigmoid) is five ops on a 1x1 map.
* **No full-resolution work** (``classifier="subpixel"``): the classifier's 3x3 conv runs
  at half resolution with ``4 x`` the classes as outputs and DEPTH_TO_SPACE puts them on
  the full-resolution grid (a sub-pixel convolution: Shi et al., "Real-Time Single Image
  and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural Network",
  CVPR 2016, Sec. 2.2). At full resolution a 2-channel 3x3 conv and the bilinear upsampling
  before it are the model's slowest ops in float and int8 (two channels waste the kernels'
  vector lanes); DEPTH_TO_SPACE only moves bytes. ``classifier="half"`` keeps the bilinear
  upsampling, after the conv.

``activation="prelu", squeeze_excite=True, classifier="full"`` is the official SINet. Every
layer but ``classifier.subpixel`` has an official counterpart of the same name and shape;
the PReLU slopes and squeeze-excite weights are the ones left out.
"""

from __future__ import annotations

import keras

from sinet_tf.layers.conv import batch_norm, conv2d, depthwise_conv2d
from sinet_tf.layers.information_blocking import InformationBlockingGate
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import GroupedPointwiseConv
from sinet_tf.layers.squeeze_excite import squeeze_excite
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.models.sinet import SINET_S2_CONFIG
from sinet_tf.registry import register_model

__all__ = ["ACTIVATIONS", "CLASSIFIER_PLACES", "DepthToSpace", "sinet_fast"]

PAPER = "SINet, WACV 2020 (accelerator-friendly variant)"
ACTIVATIONS = ("relu", "relu6", "prelu")
CLASSIFIER_PLACES = ("subpixel", "half", "full")


@keras.saving.register_keras_serializable(package="sinet_tf")
class DepthToSpace(keras.layers.Layer):
    """``[H, W, s^2 C] -> [s H, s W, C]`` (TFLite DEPTH_TO_SPACE): channel ``(s a + b) C + c``
    of pixel ``(Y, X)`` goes to pixel ``(s Y + a, s X + b)``, channel ``c``."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def call(self, x):
        import tensorflow as tf

        return tf.nn.depth_to_space(x, self.block)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        s = self.block
        return (n, None if h is None else h * s, None if w is None else w * s, c // (s * s))

    def get_config(self):
        return {**super().get_config(), "block": self.block}


def _act(x, activation, name):
    if activation == "prelu":
        return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name)(x)
    return keras.layers.ReLU(max_value=6.0 if activation == "relu6" else None, name=name)(x)


def _bn_act(x, activation, name):
    return _act(batch_norm(x, f"{name}.bn"), activation, f"{name}.act")


def _down_sampler(x, filters, se_reduction, activation, squeeze, name):
    """Depthwise 3x3 stride 2 -> [squeeze-excite] -> 1x1 conv -> BN -> activation."""
    c = x.shape[-1]
    x = depthwise_conv2d(x, 3, strides=2, name=f"{name}.conv.0")
    if squeeze:
        x = squeeze_excite(x, [] if se_reduction == 1 else [c // se_reduction], name=f"{name}.conv.1")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}.conv.2")(x)
    return _bn_act(x, activation, name)


def _s2_block(x, filters, kernel_size, pool, activation, name):
    if pool > 1:
        x = keras.layers.AveragePooling2D(pool, strides=pool, padding="valid", name=f"{name}.pool")(x)
    x = depthwise_conv2d(x, kernel_size, name=f"{name}.conv.0")
    x = _act(batch_norm(x, f"{name}.conv.1"), activation, f"{name}.act_conv1x1.0")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal",
                            name=f"{name}.act_conv1x1.1")(x)
    if pool > 1:
        x = BilinearResize(scale=pool, name=f"{name}.upsample")(x)
    return batch_norm(x, f"{name}.bn")


def _s2_module(x, filters, branches, residual, activation, name):
    width = filters // len(branches)
    squeezed = GroupedPointwiseConv(width, groups=2, shuffle_groups=2, name=f"{name}.c1.conv")(x)
    outs = [_s2_block(squeezed, width, k, s, activation, name=f"{name}.d{i + 1}") for i, (k, s) in enumerate(branches)]
    y = keras.layers.Concatenate(name=f"{name}.concat")(outs)
    if residual:
        y = keras.layers.Add(name=f"{name}.add")([x, y])
    return _bn_act(y, activation, f"{name}.BR")


@register_model(paper=PAPER, tags=("portrait", "mobile", "sinet"))
def sinet_fast(input_shape=(224, 224, 3), num_classes=2, activation="relu", squeeze_excite=False,
               classifier="subpixel", normalization="official_sinet", batch_size=None):
    """SINet with fused-friendly ops: ReLU, no squeeze-excite, a sub-pixel classifier at half resolution."""
    check_input_shape("sinet_fast", input_shape, 32)
    if activation not in ACTIVATIONS:
        raise ValueError(f"sinet_fast: activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if classifier not in CLASSIFIER_PLACES:
        raise ValueError(f"sinet_fast: classifier {classifier!r}; choose one of {', '.join(CLASSIFIER_PLACES)}")
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    config = SINET_S2_CONFIG
    level1 = _bn_act(conv2d(x, 12, 3, strides=2, name="encoder.level1.conv"), activation, "encoder.level1")
    level2_0 = _down_sampler(level1, 16, 1, activation, squeeze_excite, "encoder.level2_0")
    out = level2_0
    for i in range(2):
        out = _s2_module(out, 48, config[i], i > 0, activation, f"encoder.level2.{i}")
    output2 = out
    x = _bn_act(keras.layers.Concatenate(name="encoder.BR2.concat")([level2_0, output2]), activation, "encoder.BR2")
    level3_0 = _down_sampler(x, 48, 2, activation, squeeze_excite, "encoder.level3_0")
    out = level3_0
    for i in range(8):
        out = _s2_module(out, 96, config[2 + i], i > 0, activation, f"encoder.level3.{i}")
    x = _bn_act(keras.layers.Concatenate(name="encoder.BR3.concat")([level3_0, out]), activation, "encoder.BR3")
    enc = keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer="he_normal",
                              name="encoder.classifier.conv")(x)

    # Information Blocking decoder (paper Sec. 3.2), as in sinet_tf.models.sinet
    stage1 = batch_norm(BilinearResize(scale=2, name="decoder.up1")(enc), "bn_3")
    gate = InformationBlockingGate(name="decoder.gate")(stage1)
    detail = _bn_act(keras.layers.Conv2D(num_classes, 1, use_bias=False, kernel_initializer="he_normal",
                                         name="level2_C.conv")(output2), activation, "level2_C")
    merged = keras.layers.Add(name="decoder.merge")([keras.layers.Multiply(name="decoder.block")([detail, gate]),
                                                     stage1])
    stage2 = batch_norm(BilinearResize(scale=2, name="decoder.up2")(merged), "bn_2")
    if classifier == "subpixel":
        logits = keras.layers.Conv2D(4 * num_classes, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                                     name="classifier.subpixel")(stage2)
        logits = DepthToSpace(2, name="classifier.depth_to_space")(logits)
    else:
        head = keras.layers.Conv2D(num_classes, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                                   name="classifier.1")
        if classifier == "half":
            logits = BilinearResize(scale=2, name="classifier.0")(head(stage2))
        else:
            logits = head(BilinearResize(scale=2, name="classifier.0")(stage2))
    return keras.Model(inputs, logits_output(logits), name="sinet_fast")
