"""The modified aligned Xception of DeepLabv3+ (Chen, Zhu, Papandreou, Schroff, Adam:
"Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation",
ECCV 2018, Sec. 3.2 and Fig. 4), Xception-65, as a feature extractor.

Changes to Chollet's Xception, as the paper lists them (Sec. 3.2):

1. deeper: the middle flow is repeated 16 times instead of 8 (MSRA's aligned Xception);
2. every max-pooling is replaced by a depthwise separable convolution with stride 2, so
   the whole network can run atrous (dilated) at any output stride;
3. extra batch normalization and ReLU after each 3x3 depthwise convolution (MobileNet design).

Layout (Fig. 4): entry flow = conv 3x3/32 stride 2 and conv 3x3/64 (each + BN + ReLU),
then three Xception modules of widths 128, 256 and 728, each three separable convs (the
third with stride 2) plus a 1x1 stride-2 conv (+ BN) shortcut; middle flow = 16 modules of
three 728-wide separable convs with identity shortcuts; exit flow = one module of widths
728, 1024, 1024 (stride 2, 1x1 conv shortcut) and three separable convs 1536, 1536, 2048
without a shortcut. A separable conv is ``ReLU -> depthwise 3x3 -> BN -> ReLU -> pointwise
1x1 -> BN``; in the last exit-flow module the ReLUs come after the BNs instead
(``depthwise -> BN -> ReLU -> pointwise -> BN -> ReLU``), so the final feature is
rectified. The authors' released code (``tensorflow/models`` ``research/deeplab/core/
xception.py``, ``xception_65``) is the same network except that only that last module has
the ReLU after its depthwise BNs; ReLUs carry no parameters, so the counts agree.

Output stride (Sec. 3.1, "atrous convolution"): with ``output_stride`` 16 (default) the
exit flow's stride-2 module keeps stride 1 and the module after it dilates by 2; with 8
the entry flow's third module keeps stride 1 too, and the middle flow dilates by 2 and
the exit flow by 2 and 4 (the rule of the authors' ``stack_blocks_dense``). Stride-2
convolutions pad symmetrically (explicit padding + "valid", the authors'
``fixed_padding``), so every strided layer samples the same, aligned grid.

Features (:func:`xception_features`, nominal stride -> tensor, as
:func:`sinet_tf.backbones.mobilenetv2.mobilenetv2_features`): ``4`` is the low-level
feature of the decoder. The paper asks for the backbone feature at 1/4 "before striding"
(Sec. 3.1, "Conv2 before striding in ResNet-101"); for Xception the authors' code takes
``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``: the output (pointwise
conv + BN, no ReLU) of the *second* separable conv of the 256-wide entry-flow module, whose
third conv then strides to 1/8. 256 channels at 1/4. ``8`` and ``16`` are the last module
outputs at those nominal strides (the 256-wide entry module; the middle flow, 728
channels), ``32`` the exit flow's 2048-channel output (at 1/``output_stride``).

Depth. ``depth=65`` is the paper's network; 41 (middle flow x8) and 71 (two more entry
modules, the low-level tap moving to the second 256-wide module) are the authors' other
released variants, kept for comparisons with published figures (the DPC / Auto-DeepLab
papers report DeepLabv3+ with Xception-71).

Layer names follow the authors' variable scopes with ``/`` turned into ``.`` (``entry_flow.
block1.unit_1.separable_conv1_depthwise``, ``...separable_conv1_depthwise.bn``, ``middle_flow.
block1.unit_16...``, ``exit_flow.block2.unit_1.separable_conv3_pointwise.bn``).

Weights. ``keras.applications.Xception`` is Chollet's original network (max-pooling, 8
middle blocks, no BN after depthwise convs), not this one, so its ImageNet weights do not
fit. :func:`load_xception_weights` copies weights by layer name from a file saved from
this very backbone: a ``.weights.h5`` written by ``xception_model().save_weights(path)``,
or any ``.keras`` model containing these layers (a backbone saved with ``.save``, or a
whole trained ``deeplabv3plus_xception``, whose encoder is taken). Without a file the
backbone is randomly initialized.

Parameters: 37,867,312 trainable (conv kernels + BN gamma/beta) for Xception-65,
40,289,736 for Xception-71; the whole DeepLabv3+ is compared with the authors' figures in
:mod:`sinet_tf.models.deeplabv3plus`.
"""

from __future__ import annotations

import logging

import keras

from sinet_tf.backbones import copy_weights_by_name, require_weights_file
from sinet_tf.layers.conv import batch_norm, conv2d, depthwise_conv2d

__all__ = ["XCEPTION_BLOCKS", "XCEPTION_PREFIXES", "xception_features", "xception_model",
           "check_xception_weights_path", "load_xception_weights"]

log = logging.getLogger("sinet_tf.backbones")

# (scope, widths of the three separable convs, shortcut, stride, repeats, ReLU after the BNs):
# paper Fig. 4 (65) and the authors' xception_41 / xception_71 (model_zoo.md lists all three).
_EXIT_FLOW = (
    ("exit_flow.block1", (728, 1024, 1024), "conv", 2, 1, False),
    ("exit_flow.block2", (1536, 1536, 2048), "none", 1, 1, True),
)
XCEPTION_BLOCKS = {
    41: (
        ("entry_flow.block1", (128, 128, 128), "conv", 2, 1, False),
        ("entry_flow.block2", (256, 256, 256), "conv", 2, 1, False),
        ("entry_flow.block3", (728, 728, 728), "conv", 2, 1, False),
        ("middle_flow.block1", (728, 728, 728), "sum", 1, 8, False),
        *_EXIT_FLOW),
    65: (
        ("entry_flow.block1", (128, 128, 128), "conv", 2, 1, False),
        ("entry_flow.block2", (256, 256, 256), "conv", 2, 1, False),
        ("entry_flow.block3", (728, 728, 728), "conv", 2, 1, False),
        ("middle_flow.block1", (728, 728, 728), "sum", 1, 16, False),
        *_EXIT_FLOW),
    71: (
        ("entry_flow.block1", (128, 128, 128), "conv", 2, 1, False),
        ("entry_flow.block2", (256, 256, 256), "conv", 1, 1, False),
        ("entry_flow.block3", (256, 256, 256), "conv", 2, 1, False),
        ("entry_flow.block4", (728, 728, 728), "conv", 1, 1, False),
        ("entry_flow.block5", (728, 728, 728), "conv", 2, 1, False),
        ("middle_flow.block1", (728, 728, 728), "sum", 1, 16, False),
        *_EXIT_FLOW),
}

# Every backbone layer name starts with one of these.
XCEPTION_PREFIXES = ("entry_flow.", "middle_flow.", "exit_flow.")


def _separable_conv(x, filters, stride, dilation, relu_after, name):
    """One separable conv of an Xception module (see the module docstring for the order)."""
    if not relu_after:
        x = keras.layers.ReLU(name=f"{name}_relu_in")(x)
    x = depthwise_conv2d(x, 3, strides=stride, dilation=dilation, name=f"{name}_depthwise")
    x = keras.layers.ReLU(name=f"{name}_depthwise.relu")(batch_norm(x, f"{name}_depthwise.bn"))
    x = keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}_pointwise")(x)
    x = batch_norm(x, f"{name}_pointwise.bn")
    if relu_after:
        x = keras.layers.ReLU(name=f"{name}_pointwise.relu")(x)
    return x


def _xception_module(x, widths, shortcut, stride, dilation, relu_after, name):
    """Three separable convs (the third strided) + a 1x1 conv, identity or no shortcut.
    Returns ``(output, output of the second separable conv)``."""
    inputs, second = x, None
    for i, filters in enumerate(widths):
        x = _separable_conv(x, filters, stride if i == 2 else 1, dilation, relu_after,
                            f"{name}.separable_conv{i + 1}")
        if i == 1:
            second = x
    if shortcut == "conv":
        s = keras.layers.Conv2D(widths[-1], 1, strides=stride, use_bias=False, kernel_initializer="he_normal",
                                name=f"{name}.shortcut")(inputs)
        x = keras.layers.Add(name=f"{name}.add")([x, batch_norm(s, f"{name}.shortcut.bn")])
    elif shortcut == "sum":
        x = keras.layers.Add(name=f"{name}.add")([x, inputs])
    return x, second


def xception_features(x, output_stride=16, depth=65):
    """Aligned Xception on normalized input ``x``. Returns ``{nominal stride: tensor}``:
    ``4`` the decoder's low-level feature (the second separable conv of the module that
    strides from 1/4 to 1/8: 256 channels), ``8`` and ``16`` the last module output at
    those nominal strides (256 / 728 channels for Xception-65), ``32`` the final
    2048-channel feature, at 1/``output_stride`` (16 or 8; 32 gives the undilated network).
    ``depth`` 65 (the paper's), or the authors' 41 and 71."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"xception: output_stride must be 8, 16 or 32, got {output_stride}")
    if depth not in XCEPTION_BLOCKS:
        raise ValueError(f"xception: depth must be one of {sorted(XCEPTION_BLOCKS)}, got {depth}")
    x = conv2d(x, 32, 3, strides=2, name="entry_flow.conv1_1")
    x = keras.layers.ReLU(name="entry_flow.conv1_1.relu")(batch_norm(x, "entry_flow.conv1_1.bn"))
    x = conv2d(x, 64, 3, name="entry_flow.conv1_2")
    x = keras.layers.ReLU(name="entry_flow.conv1_2.relu")(batch_norm(x, "entry_flow.conv1_2.bn"))
    features, nominal, current, dilation = {}, 2, 2, 1
    for scope, widths, shortcut, stride, repeats, relu_after in XCEPTION_BLOCKS[depth]:
        for unit in range(repeats):
            if current == output_stride:        # reached the output stride: dilate instead of striding
                unit_stride, unit_dilation = 1, dilation
                dilation *= stride
            else:
                unit_stride, unit_dilation = stride, 1
                current *= stride
            x, second = _xception_module(x, widths, shortcut, unit_stride, unit_dilation, relu_after,
                                         f"{scope}.unit_{unit + 1}")
            if nominal == 4 and stride == 2:
                low_level = second
            nominal *= stride
            features[nominal] = x
    features[4] = low_level
    return features


def xception_model(input_shape=(64, 64, 3), output_stride=16, depth=65):
    """The backbone alone as a model (normalized input -> ``[low-level, final]``): what a
    ``.weights.h5`` for ``backbone_weights`` is saved from. Weights do not depend on the
    input size or the output stride."""
    inputs = keras.Input(shape=tuple(input_shape), name="normalized_image")
    features = xception_features(inputs, output_stride, depth)
    return keras.Model(inputs, [features[4], features[32]], name=f"xception_{depth}")


def check_xception_weights_path(model_name, path):
    """The file ``backbone_weights`` names, checked before anything is built: it must exist
    and be a ``.weights.h5`` or ``.keras`` file. Returns it as a string."""
    path = require_weights_file(model_name, path)
    if not path.endswith((".keras", ".weights.h5")):
        raise ValueError(f"{model_name}: backbone_weights for the aligned Xception must be a .weights.h5 saved from "
                         f"xception_model() or a .keras model containing it, got {path}")
    return path


def load_xception_weights(model, path, model_name, depth=65):
    """Copy aligned-Xception weights by layer name into ``model``'s encoder from a local
    ``.weights.h5`` saved from :func:`xception_model` (Keras keys these files by the model's
    structure, so it must be that model), or from a ``.keras`` model holding every backbone
    layer by name (a saved backbone, or e.g. a trained ``deeplabv3plus_xception``, whose
    encoder alone is taken). Returns the number of layers copied. Nothing is downloaded."""
    path = check_xception_weights_path(model_name, path)
    if path.endswith(".weights.h5"):
        backbone = xception_model(depth=depth)
        try:
            backbone.load_weights(path)
        except ValueError as e:
            raise ValueError(f"{model_name}: {path} does not hold the weights of "
                             f"sinet_tf.backbones.xception.xception_model() ({e})") from None
        return copy_weights_by_name(model, backbone, model_name, path)
    reference = keras.models.load_model(path, compile=False, safe_mode=True)
    theirs = {layer.name: layer for layer in reference.layers}
    ours = [layer for layer in model.layers if layer.name.startswith(XCEPTION_PREFIXES) and layer.weights]
    missing = [layer.name for layer in ours if layer.name not in theirs]
    if missing:
        raise ValueError(f"{model_name}: {path} lacks {len(missing)} of the {len(ours)} aligned-Xception "
                         f"layers (first: {missing[0]!r}); it was not saved from this backbone")
    for layer in ours:
        src = theirs[layer.name]
        if [tuple(w.shape) for w in layer.weights] != [tuple(w.shape) for w in src.weights]:
            raise ValueError(f"{model_name}: backbone layer {layer.name!r} has weights "
                             f"{[tuple(w.shape) for w in layer.weights]} but {path} has "
                             f"{[tuple(w.shape) for w in src.weights]}")
        layer.set_weights(src.get_weights())
    log.info("%s: loaded backbone weights into %d layers from %s", model_name, len(ours), path)
    return len(ours)
