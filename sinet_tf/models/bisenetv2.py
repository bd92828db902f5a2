"""BiSeNet V2 (Yu, Gao, Wang, Yu, Shen, Sang: "BiSeNet V2: Bilateral Network with Guided
Aggregation for Real-time Semantic Segmentation", IJCV 129, 2021; arXiv 2004.02147).

Two branches read the image (paper Sec. 3, Fig. 3, Table 1):

- Detail Branch (Sec. 3.1): VGG-like 3x3 conv + BN + ReLU stacks, stages S1, S2, S3 of
  2, 3, 3 convs with 64, 64, 128 channels, the first of each with stride 2 (1/8, 128 ch).
- Semantic Branch (Sec. 3.2), channels lambda = 1/4 of the Detail Branch's: the Stem Block
  (Fig. 4a: 3x3 conv s2 to 16 ch, then a 1x1 conv to 8 + 3x3 conv s2 to 16 beside a 3x3
  max-pool s2, concatenated, 3x3 conv to 16; 1/4) and Gather-and-Expansion layers (Fig. 5,
  expansion ratio 6): S3 = GE(32, s2) + GE(32), S4 = GE(64, s2) + GE(64), S5 = GE(128, s2)
  + 3 x GE(128) (1/32), then the Context Embedding block (Fig. 4b: global average pool, BN,
  1x1 conv + BN + ReLU, added to the input by broadcasting, then a plain 3x3 conv).
- Bilateral Guided Aggregation (Sec. 3.3, Fig. 6): the detail map gated by
  ``sigmoid(4x-upsampled 3x3 conv + BN of the semantic map)``, plus the detail map taken
  to 1/32 (3x3 conv s2 + BN, 3x3 average pool s2) gated by ``sigmoid(3x3 dw conv + BN +
  1x1 conv of the semantic map)`` and upsampled 4x; the sum goes through 3x3 conv + BN.
- Seg Head (Sec. 3.4, Fig. 7): 3x3 conv + BN + ReLU to ``C_t`` channels, 1x1 conv to the
  classes, bilinear upsampling to the input (x8). ``aux_heads=True`` adds the booster heads
  (Sec. 3.4) on the Semantic Branch's S2 (stem), S3, S4 and S5_4 (before the CE block),
  used in training only; the model then returns ``[logits, aux_s2, aux_s3, aux_s4, aux_s5_4]``,
  all at the input resolution.

Where the figures leave a detail open we follow them literally: no ReLU after the GE
layers' depthwise convs (Fig. 5), the CE block's last 3x3 conv and the BGA layer's 1x1
convs are plain convs with bias (no BN follows them), and the BGA's output conv has BN and
no ReLU (Fig. 6). Upsampling is bilinear with ``align_corners=False``. Strided convs and
pools pad one pixel on every side (the padding of the PyTorch reimplementations).

The main head's ``C_t`` is 1024 (``head_channels``): the paper gives no value; 1024 is what
the widely used reimplementations use (CoinCheung/BiSeNet ``lib/models/bisenetv2.py``,
mmsegmentation's BiSeNetV2 config) and what gives the "3.4 M" parameters that comparison
tables quote for BiSeNetV2; PaddleSeg's ``C_t = 128`` gives 2.3 M. Booster heads use
``C_t = 128`` (``aux_head_channels``, CoinCheung's width).

Parameters (trainable, no booster heads): 3,358,755 with 19 classes, 3,341,330 with 2
(the classifier has ``C_t + 1`` parameters per class). CoinCheung's network (eval mode, 19
classes) has 3,358,627: 128 fewer, because its CE 3x3 conv has BN instead of a bias
(+256 - 128) and its BGA 1x1 convs no bias (-256). Against the quoted 3.4 M adjusted to 2
classes (3,382,575) ours is 1.2 % smaller. The booster heads add 278,536 (2 classes).
See tests/test_bisenetv2.py.

Multiply-adds (convolutions, :func:`sinet_tf.model_cost.count_macs`), 19 classes: 24.6 G at
1024x512, the size the paper resizes Cityscapes images to for inference, against the
paper's 21.15 GFLOPs (Table 8); 98.4 G at 2048x1024, so the paper's figure cannot be at
full size. With ``C_t = 128`` it would be 16.0 G: the paper's count lies between the two
head widths and it does not say how it counts.

GPU delegate. The GE layers' expanding depthwise conv (each input channel to 6 outputs)
is a DEPTHWISE_CONV_2D with depth multiplier 6, which the TFLite GPU delegate refuses
("depth_multiplier != 1 && input.c != 1"). :class:`ExpandingDepthwiseConv2D` keeps the
same weights (``[3, 3, C, 6]``) but computes it as a constant 1x1 CONV_2D that repeats
each channel 6 times (channel ``c`` to ``6c .. 6c+5``, the order of Keras' and PyTorch's
multiplier-6 depthwise outputs) followed by a multiplier-1 depthwise conv: the same
numbers, two delegate-supported ops. The CE block's broadcast add is written as a
RESIZE_BILINEAR of the pooled ``[1, 1, 1, 128]`` map to ``[1, H, W, 128]`` (every pixel an
exact copy) and a same-shape ADD: a plain Keras broadcast ``Add`` is rewritten by the TF
2.21 converter into a RESHAPE of the pooled map to a 1-D ``[128]`` tensor plus an ADD with
that 1-D runtime operand; written this way every runtime tensor stays 4-D at batch 1.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.layers.conv import batch_norm, conv2d, depthwise_conv2d
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["DETAIL_STAGES", "STEM_CHANNELS", "SEMANTIC_STAGES", "EXPANSION", "ExpandingDepthwiseConv2D",
           "detail_branch", "stem_block", "gather_expansion", "context_embedding", "semantic_branch",
           "bilateral_guided_aggregation", "seg_head", "bisenetv2"]

PAPER = "BiSeNet V2, IJCV 2021"

# Table 1, Detail Branch: (channels, convs) per stage; the first conv of a stage has stride 2.
DETAIL_STAGES = ((64, 2), (64, 3), (128, 3))

# Table 1, Semantic Branch after the Stem (16 channels, 1/4): (channels, GE layers) per
# stage; the first GE layer of a stage has stride 2. S5 ends with the CE block.
STEM_CHANNELS = 16
SEMANTIC_STAGES = ((32, 2), (64, 2), (128, 4))
EXPANSION = 6


@keras.saving.register_keras_serializable(package="sinet_tf")
class ExpandingDepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``DepthwiseConv2D`` with ``depth_multiplier > 1`` computed as a channel repeat (a
    constant one-hot 1x1 convolution) followed by a multiplier-1 depthwise convolution.

    Weights, their shapes and the output channel order are those of
    ``keras.layers.DepthwiseConv2D(depth_multiplier=m)``; only the graph differs, so that
    TFLite gets CONV_2D + DEPTHWISE_CONV_2D (multiplier 1), both of which the GPU delegate
    runs. The repeat costs ``C * m`` multiply-adds per input pixel on the device; MAC
    counts (:func:`sinet_tf.model_cost.count_macs`) report the depthwise conv, as papers do.
    """

    def call(self, inputs):
        m = self.depth_multiplier
        if m == 1:
            return super().call(inputs)
        c = int(inputs.shape[-1])
        repeat = np.zeros((1, 1, c, c * m), np.float32)
        repeat[0, 0, np.repeat(np.arange(c), m), np.arange(c * m)] = 1.0
        x = ops.conv(inputs, ops.cast(repeat, inputs.dtype), strides=1, padding="valid")
        kernel = ops.reshape(self.kernel, (*self.kernel_size, c * m, 1))
        y = ops.depthwise_conv(x, kernel, strides=self.strides, padding=self.padding,
                               dilation_rate=self.dilation_rate, data_format=self.data_format)
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y


def _conv_bn(x, filters, kernel_size, name, strides=1, relu=True):
    """conv (no bias; symmetric padding for stride 2) + BN [+ ReLU]: ``{name}.conv``, ``.bn``, ``.relu``."""
    x = conv2d(x, filters, kernel_size, strides=strides, name=f"{name}.conv")
    x = batch_norm(x, f"{name}.bn")
    return keras.layers.ReLU(name=f"{name}.relu")(x) if relu else x


def _dw_bn(x, name, strides=1, multiplier=1):
    """3x3 depthwise conv (``multiplier`` outputs per channel) + BN."""
    if multiplier == 1:
        x = depthwise_conv2d(x, 3, strides=strides, name=f"{name}.dw")
    else:
        if strides > 1:
            x = keras.layers.ZeroPadding2D(1, name=f"{name}.dw_pad")(x)
        x = ExpandingDepthwiseConv2D(3, strides=strides, padding="valid" if strides > 1 else "same",
                                     depth_multiplier=multiplier, use_bias=False,
                                     depthwise_initializer="he_normal", name=f"{name}.dw")(x)
    return batch_norm(x, f"{name}.dw_bn")


def _pointwise(x, filters, name, use_bias=False):
    return keras.layers.Conv2D(filters, 1, use_bias=use_bias, kernel_initializer="he_normal", name=name)(x)


def detail_branch(x, stages=DETAIL_STAGES):
    """Sec. 3.1 / Table 1: three stages of 3x3 conv + BN + ReLU, to 1/8."""
    for s, (filters, convs) in enumerate(stages, start=1):
        for i in range(convs):
            x = _conv_bn(x, filters, 3, f"detail.s{s}.conv{i + 1}", strides=2 if i == 0 else 1)
    return x


def stem_block(x, filters, name="semantic.stem"):
    """Fig. 4(a): 3x3 conv s2; [1x1 conv to C/2, 3x3 conv s2] beside a 3x3 max-pool s2;
    concatenation; 3x3 conv. Output at 1/4."""
    x = _conv_bn(x, filters, 3, f"{name}.conv", strides=2)
    left = _conv_bn(x, filters // 2, 1, f"{name}.left1")
    left = _conv_bn(left, filters, 3, f"{name}.left2", strides=2)
    # the input is post-ReLU (>= 0), so zero padding is PyTorch's -inf padding for a max-pool
    right = keras.layers.ZeroPadding2D(1, name=f"{name}.pool_pad")(x)
    right = keras.layers.MaxPooling2D(3, strides=2, name=f"{name}.pool")(right)
    x = keras.layers.Concatenate(name=f"{name}.concat")([left, right])
    return _conv_bn(x, filters, 3, f"{name}.fuse")


def gather_expansion(x, filters, name, strides=1, expansion=EXPANSION):
    """Gather-and-Expansion layer (Fig. 5b, stride 1; Fig. 5c, stride 2).

    3x3 conv + BN + ReLU (gather); 3x3 depthwise conv expanding to ``expansion * C_in``
    channels + BN (with stride 2, then a second 3x3 depthwise conv + BN); 1x1 projection +
    BN; the input is added (with stride 2 through a 3x3 depthwise conv s2 + BN + 1x1 conv +
    BN); ReLU.
    """
    c_in = x.shape[-1]
    if strides == 1 and c_in != filters:
        raise ValueError(f"{name}: a stride-1 GE layer keeps its width, got {c_in} -> {filters}")
    y = _conv_bn(x, c_in, 3, f"{name}.gather")
    y = _dw_bn(y, f"{name}.expand", strides=strides, multiplier=expansion)
    if strides > 1:
        y = _dw_bn(y, f"{name}.expand2")
    y = batch_norm(_pointwise(y, filters, f"{name}.project"), f"{name}.project_bn")
    shortcut = x
    if strides > 1:
        shortcut = _dw_bn(x, f"{name}.shortcut", strides=strides)
        shortcut = batch_norm(_pointwise(shortcut, filters, f"{name}.shortcut.pw"), f"{name}.shortcut.pw_bn")
    y = keras.layers.Add(name=f"{name}.add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}.relu")(y)


def context_embedding(x, name="semantic.ce"):
    """Context Embedding block (Fig. 4b): GAP -> BN -> 1x1 conv + BN + ReLU, broadcast-added
    to the input, then a plain 3x3 conv. The broadcast is an explicit resize of the
    ``[N, 1, 1, C]`` map to the input's size (exact copies), then a same-shape add."""
    c, (h, w) = x.shape[-1], x.shape[1:3]
    g = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.gap")(x)
    g = batch_norm(g, f"{name}.gap_bn")
    g = keras.layers.ReLU(name=f"{name}.relu")(batch_norm(_pointwise(g, c, f"{name}.conv1x1"), f"{name}.bn"))
    g = BilinearResize(size=(h, w), align_corners=False, name=f"{name}.broadcast")(g)
    y = keras.layers.Add(name=f"{name}.add")([x, g])
    return keras.layers.Conv2D(c, 3, padding="same", kernel_initializer="he_normal", name=f"{name}.conv3x3")(y)


def semantic_branch(x, expansion=EXPANSION):
    """Sec. 3.2 / Table 1. Returns the stage outputs ``{"s2", "s3", "s4", "s5_4", "s5_5"}``
    (the booster heads read the first four; the BGA layer reads ``s5_5``)."""
    x = stem_block(x, STEM_CHANNELS)
    outs = {"s2": x}
    for s, (filters, layers) in enumerate(SEMANTIC_STAGES, start=3):
        for i in range(layers):
            x = gather_expansion(x, filters, f"semantic.s{s}.ge{i + 1}", strides=2 if i == 0 else 1,
                                 expansion=expansion)
        outs[f"s{s}" if s < 5 else "s5_4"] = x
    outs["s5_5"] = context_embedding(x)
    return outs


def bilateral_guided_aggregation(detail, semantic, name="bga"):
    """Bilateral Guided Aggregation layer (Sec. 3.3, Fig. 6); output at the detail map's 1/8."""
    c = detail.shape[-1]
    detail_keep = _pointwise(_dw_bn(detail, f"{name}.detail_keep"), c, f"{name}.detail_keep.pw", use_bias=True)
    detail_down = _conv_bn(detail, c, 3, f"{name}.detail_down", strides=2, relu=False)
    detail_down = keras.layers.ZeroPadding2D(1, name=f"{name}.detail_down.pool_pad")(detail_down)
    detail_down = keras.layers.AveragePooling2D(3, strides=2, name=f"{name}.detail_down.pool")(detail_down)
    semantic_up = _conv_bn(semantic, c, 3, f"{name}.semantic_up", relu=False)
    semantic_up = BilinearResize(scale=4, align_corners=False, name=f"{name}.semantic_up.resize")(semantic_up)
    semantic_up = keras.layers.Activation("sigmoid", name=f"{name}.semantic_up.sigmoid")(semantic_up)
    semantic_keep = _pointwise(_dw_bn(semantic, f"{name}.semantic_keep"), c, f"{name}.semantic_keep.pw",
                               use_bias=True)
    semantic_keep = keras.layers.Activation("sigmoid", name=f"{name}.semantic_keep.sigmoid")(semantic_keep)
    high = keras.layers.Multiply(name=f"{name}.detail_gate")([detail_keep, semantic_up])
    low = keras.layers.Multiply(name=f"{name}.semantic_gate")([detail_down, semantic_keep])
    low = BilinearResize(scale=4, align_corners=False, name=f"{name}.low_resize")(low)
    x = keras.layers.Add(name=f"{name}.sum")([high, low])
    return _conv_bn(x, c, 3, f"{name}.out", relu=False)


def seg_head(x, num_classes, mid_channels, scale, name):
    """Seg Head (Fig. 7): 3x3 conv + BN + ReLU to ``C_t``, 1x1 conv, bilinear x``scale``."""
    x = _conv_bn(x, mid_channels, 3, f"{name}.conv")
    x = _pointwise(x, num_classes, f"{name}.classifier", use_bias=True)
    return BilinearResize(scale=scale, align_corners=False, name=f"{name}.resize")(x)


@register_model(paper=PAPER, input_multiple=32, tags=("bisenet", "realtime", "mobile"))
def bisenetv2(input_shape=(224, 224, 3), num_classes=2, head_channels=1024, aux_heads=False,
              aux_head_channels=128, normalization="imagenet", batch_size=None):
    """BiSeNet V2: Detail + Semantic branches, BGA aggregation, Seg Head; logits at full resolution.

    ``head_channels`` is the main Seg Head's ``C_t`` (1024, see the module docstring).
    ``aux_heads=True`` adds the four booster heads (``aux_head_channels`` wide) and returns
    ``[logits, aux_s2, aux_s3, aux_s4, aux_s5_4]``; the trainer (``sinet train``) fits
    single-output models, so booster training needs a loss over the five outputs; export
    the model built without them (the same layer names, so weights transfer by name).
    """
    check_input_shape("bisenetv2", input_shape, 32)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    detail = detail_branch(x)
    semantic = semantic_branch(x)
    x = bilateral_guided_aggregation(detail, semantic["s5_5"])
    outputs = logits_output(seg_head(x, num_classes, int(head_channels), 8, "head"), "logits")
    if aux_heads:
        strides = {"s2": 4, "s3": 8, "s4": 16, "s5_4": 32}
        outputs = [outputs] + [
            logits_output(seg_head(semantic[k], num_classes, int(aux_head_channels), s, f"aux_{k}"), f"aux_{k}")
            for k, s in strides.items()]
    return keras.Model(inputs, outputs, name="bisenetv2")
