"""PSPNet (Zhao, Shi, Qi, Wang, Jia: "Pyramid Scene Parsing Network", CVPR 2017).

A dilated encoder at output stride 8 (Sec. 4.1, "dilated network strategy") feeds the
pyramid pooling module (Sec. 3.3, Fig. 3(c)): the feature map of C channels is average
pooled to 1x1, 2x2, 3x3 and 6x6 bins, each bin map goes through a 1x1 conv to C/4 channels
+ BN + ReLU ("to maintain the weight of global feature ... reduce the dimension of context
representation to 1/N of the original one", N = 4 levels) and is bilinearly upsampled back;
the four maps are concatenated with the features (2C channels), then a 3x3 conv to 512 +
BN + ReLU, dropout 0.1, a 1x1 classifier, and a bilinear upsample to the input size (the
authors' released prototxts: ``conv5_4`` 3x3/512, ``Dropout`` 0.1, ``conv6``).

Auxiliary loss (Sec. 3.3 "deep supervision", Fig. 4, Sec. 4.1 weight 0.4): with
``aux_head=True`` a second head reads the encoder's stride-16-nominal stage (``res4b22``
of ResNet-101, ``res4f`` of ResNet-50: the output of ``conv4_x``, 1024 channels; for
MobileNetV2, ``block_12``, 96 channels, the last block before the 160-channel stage, in
the same place as mmsegmentation's auxiliary head for this encoder): 3x3 conv 256 + BN +
ReLU + dropout 0.1 + 1x1 classifier + upsample (the authors' ``conv4_f``/``conv6_1``).
The model then outputs ``[logits, aux_logits]``; the trainer adds ``aux_weight`` times
the loss of the second (``aux_weight`` in the recipe) and saves the deployable network
(main output only) as ``best.keras``. The default is the single-output network the
paper deploys (the auxiliary branch is "abandoned in the testing phase").

Pooling on a phone's GPU. The authors pool with fixed kernel == stride (``AVE`` pooling of
kernel 60/30/20/10 on their 60x60 map at 473x473 input); the TFLite GPU delegate needs
fixed-size pooling too, so each bin is an ``AveragePooling2D`` with kernel = stride = map
side / bin. The map side (input / 8) must then be divisible by 6 (and 1, 2, 3), so height
and width are multiples of 8 * 6 = 48. Default input 480x480 for the ResNet variants: the
multiple of 48 closest to the paper's 473x473 crops (Sec. 4.2, 4.3), giving the paper's
60x60 map and pooling kernels 60, 30, 20, 10 exactly; 240x240 for the MobileNetV2
variant: the multiple of 48 closest to the 224x224 of the project's other portrait models,
so their costs compare like for like.

Upsampling. The authors' Caffe ``Interp`` layer aligns corners, on inputs of size 8k+1
(473, 713) where corner alignment coincides with the stride-8 grid. Our sizes are
multiples of 48 with TF "same" strides, where pixel centres follow the half-pixel
convention, so every resize here uses ``align_corners=False``: the upsampled bin
values land on their cells' centres, and the logits on the input pixels.

Parameters (trainable, 2 classes, no auxiliary head; tests/test_pspnet.py checks each
against a published figure adjusted for classes):

* ``pspnet_resnet101``: 65,627,650. The authors' PSPNet-101 has 65.7 M (ESPNet, Mehta et
  al., ECCV 2018, Sec. 1, for the Cityscapes model: 19 classes, no auxiliary head); with 2
  classes 65.69 M (-0.10%). The remaining gap is the encoder's stem and conv biases
  (:mod:`sinet_tf.backbones.resnet`: +123,776 deep stem, -52,672 biases in the authors'
  network): ours with 19 classes and those two changes is 65,707,475, the 65.7 M.
* ``pspnet_resnet50``: 46,609,410 vs 46.58 M (OpenVINO Open Model Zoo ``pspnet-pytorch``,
  mmsegmentation's PSPNet R50-D8, 21 classes, inference graph without auxiliary head);
  with 2 classes 46.57 M (+0.08%).
* ``pspnet_mobilenetv2``: 4,865,922 (MobileNetV2 to ``block_16``: 1,811,712; pyramid
  pooling 320 -> 4 x 80: 103,040; 3x3 conv 640 -> 512 + BN: 2,950,144; classifier 1,026).
  No publication reports this head on MobileNetV2; the test compares with MobileNetV2's
  published 3.4 M (Sandler et al., CVPR 2018, Table 4) less its last 1x1 conv and
  classifier, plus the paper's head.

The auxiliary head adds 2,360,322 (ResNet) or 222,210 (MobileNetV2) parameters at 2 classes.

Encoders. ResNet layer names are keras.applications' (``backbone_weights`` = a local
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`` / ``resnet101_...``); the stem is
keras.applications' 7x7 conv, not the paper's deep stem (see
:mod:`sinet_tf.backbones.resnet`). MobileNetV2 is :mod:`sinet_tf.backbones.mobilenetv2` at
output stride 8 (``backbone_weights`` = Keras' ``..._no_top.h5``).

Input normalization defaults to the preprocessing the keras.applications ImageNet weights
were trained with: ``symmetric`` ([-1, 1], MobileNetV2) and, for ResNet, ``portraitnet``
(Caffe's BGR mean subtraction, as the authors' PSPNet and keras' ResNet weights; its extra
x0.017 is absorbed by ``conv1_bn``, see :mod:`sinet_tf.backbones.resnet`).
"""

from __future__ import annotations

import logging

import keras

from sinet_tf.backbones.mobilenetv2 import (
    load_mobilenetv2_weights,
    mobilenetv2_features,
)
from sinet_tf.backbones.resnet import load_resnet_weights, resnet_features
from sinet_tf.layers.conv import batch_norm
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.models._common import check_input_shape, logits_output, normalized_input
from sinet_tf.registry import register_model

__all__ = ["PSPNET_BINS", "PSPNET_INPUT_MULTIPLE", "pyramid_pooling_module", "pspnet_resnet50",
           "pspnet_resnet101", "pspnet_mobilenetv2"]

PAPER = "PSPNet, CVPR 2017"

log = logging.getLogger("sinet_tf.models")

PSPNET_BINS = (1, 2, 3, 6)          # Sec. 3.3: bin sizes of the four pyramid levels
PSPNET_OUTPUT_STRIDE = 8            # Sec. 4.1: dilated encoder, 1/8 feature map
PSPNET_INPUT_MULTIPLE = PSPNET_OUTPUT_STRIDE * 6   # fixed kernel == stride pooling to 6x6 bins
PSPNET_HEAD_WIDTH = 512             # the 3x3 conv after the concatenation
AUX_HEAD_WIDTH = 256                # the auxiliary head's 3x3 conv
DROPOUT = 0.1


def _conv_bn_relu(x, filters, kernel_size, name):
    x = keras.layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, kernel_initializer="he_normal",
                            name=f"{name}.conv")(x)
    return keras.layers.ReLU(name=f"{name}.relu")(batch_norm(x, f"{name}.bn"))


def pyramid_pooling_module(x, bins=PSPNET_BINS, name="ppm"):
    """Fig. 3(c): per bin size b, average pool to b x b (kernel = stride = side / b), 1x1 conv to
    C / len(bins) + BN + ReLU, bilinear upsample back; concatenated after the input features."""
    h, w, channels = (int(d) for d in x.shape[1:])
    if any(h % b or w % b for b in bins):
        raise ValueError(f"{name}: feature map {h}x{w} is not divisible by every bin size {tuple(bins)}")
    levels = [x]
    for b in bins:
        kernel = (h // b, w // b)
        y = keras.layers.AveragePooling2D(kernel, strides=kernel, name=f"{name}.pool{b}")(x)
        y = _conv_bn_relu(y, channels // len(bins), 1, f"{name}.bin{b}")
        levels.append(BilinearResize(size=(h, w), align_corners=False, name=f"{name}.bin{b}.upsample")(y))
    return keras.layers.Concatenate(name=f"{name}.concat")(levels)


def _head(x, width, num_classes, size, name):
    """3x3 conv ``width`` + BN + ReLU, dropout 0.1, 1x1 classifier, bilinear upsample to ``size``."""
    x = _conv_bn_relu(x, width, 3, name)
    x = keras.layers.Dropout(DROPOUT, name=f"{name}.dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name=f"{name}.classifier")(x)
    return BilinearResize(size=size, align_corners=False, name=f"{name}.upsample")(x)


def _pspnet(name, input_shape, num_classes, aux_head, normalization, batch_size, encoder, load_weights,
            backbone_weights):
    check_input_shape(name, input_shape, PSPNET_INPUT_MULTIPLE)
    inputs, x = normalized_input(input_shape, normalization, batch_size)
    features = encoder(x)
    size = tuple(int(d) for d in input_shape[:2])
    outputs = logits_output(_head(pyramid_pooling_module(features[32]), PSPNET_HEAD_WIDTH, num_classes, size,
                                  "head"), "logits")
    if aux_head:
        aux = _head(features[16], AUX_HEAD_WIDTH, num_classes, size, "aux")
        outputs = [outputs, logits_output(aux, "aux_logits")]
    model = keras.Model(inputs, outputs, name=name)
    if backbone_weights is not None:
        load_weights(model, backbone_weights)
    else:
        log.info("%s: no backbone_weights given; the encoder is randomly initialized", name)
    return model


def _resnet_pspnet(depth, input_shape, num_classes, aux_head, backbone_weights, normalization, batch_size):
    name = f"pspnet_resnet{depth}"
    return _pspnet(name, input_shape, num_classes, aux_head, normalization, batch_size,
                   lambda x: resnet_features(x, depth, output_stride=PSPNET_OUTPUT_STRIDE),
                   lambda model, path: load_resnet_weights(model, path, input_shape, name, depth),
                   backbone_weights)


_TAGS = ("pspnet", "large")


@register_model(default_input_size=(480, 480), paper=PAPER, input_multiple=PSPNET_INPUT_MULTIPLE, tags=_TAGS)
def pspnet_resnet50(input_shape=(480, 480, 3), num_classes=2, aux_head=False, backbone_weights=None,
                    normalization="portraitnet", batch_size=None):
    """PSPNet on a dilated ResNet-50 (output stride 8), pyramid pooling 1/2/3/6, logits at full resolution.

    ``aux_head=True`` adds the auxiliary head on ``conv4_x`` (``res4f``) and a second output,
    ``[logits, aux_logits]``. ``backbone_weights``: a local keras.applications ResNet50
    ImageNet ``notop`` file; nothing is downloaded.
    """
    return _resnet_pspnet(50, input_shape, num_classes, aux_head, backbone_weights, normalization, batch_size)


@register_model(default_input_size=(480, 480), paper=PAPER, input_multiple=PSPNET_INPUT_MULTIPLE, tags=_TAGS)
def pspnet_resnet101(input_shape=(480, 480, 3), num_classes=2, aux_head=False, backbone_weights=None,
                     normalization="portraitnet", batch_size=None):
    """PSPNet on a dilated ResNet-101 (output stride 8): the paper's network (Sec. 4.3, 4.4).

    ``aux_head=True`` adds the auxiliary head on ``res4b22`` (``conv4_block23_out``) and a second
    output, ``[logits, aux_logits]``. ``backbone_weights``: a local keras.applications ResNet101
    ImageNet ``notop`` file; nothing is downloaded.
    """
    return _resnet_pspnet(101, input_shape, num_classes, aux_head, backbone_weights, normalization, batch_size)


@register_model(default_input_size=(240, 240), paper=PAPER, input_multiple=PSPNET_INPUT_MULTIPLE,
                tags=("pspnet", "mobile"))
def pspnet_mobilenetv2(input_shape=(240, 240, 3), num_classes=2, aux_head=False, backbone_weights=None,
                       normalization="symmetric", batch_size=None):
    """PSPNet on MobileNetV2 at output stride 8 (dilated), pyramid pooling 1/2/3/6 of its 320 channels.

    ``aux_head=True`` adds the auxiliary head on ``block_12`` (96 channels, nominal stride 16)
    and a second output, ``[logits, aux_logits]``. ``backbone_weights``: a local Keras
    MobileNetV2 (alpha 1.0) ImageNet ``no_top`` file; nothing is downloaded.
    """
    name = "pspnet_mobilenetv2"
    return _pspnet(name, input_shape, num_classes, aux_head, normalization, batch_size,
                   lambda x: mobilenetv2_features(x, output_stride=PSPNET_OUTPUT_STRIDE),
                   lambda model, path: load_mobilenetv2_weights(model, path, input_shape, name),
                   backbone_weights)
