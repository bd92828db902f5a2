"""BiSeNet V2 (Yu et al., IJCV 2021): size, branch resolutions, booster heads, the GPU-friendly GE layer."""

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.export import check_gpu_compatibility, convert_float32
from sinet_tf.model_cost import count_macs, count_params
from sinet_tf.models.bisenetv2 import ExpandingDepthwiseConv2D, context_embedding
from sinet_tf.runtime import TFLiteRunner

from registry_cases import assert_outputs_match

# "3.4 M" is the count comparison tables quote for BiSeNetV2 (19 Cityscapes classes, no
# booster heads); CoinCheung/BiSeNet's lib/models/bisenetv2.py (C_t = 1024, eval mode) has
# 3,358,627. The only class-dependent layer is the head's 1x1 classifier, C_t + 1 = 1025
# parameters per class, so at 2 classes the published figure is 3.4 M - 17 * 1025.
PAPER_PARAMS_19 = 3.4e6
PAPER_PARAMS_2 = PAPER_PARAMS_19 - 17 * 1025
SMALL = (64, 64, 3)


def _pixels(seed, batch=1, shape=SMALL):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def booster_model():
    keras.utils.set_random_seed(0)
    return sinet_tf.build_model("bisenetv2", input_shape=SMALL, aux_heads=True)


def test_bisenetv2_params_match_the_published_count():
    n = count_params(sinet_tf.build_model("bisenetv2", input_shape=SMALL))
    print(f"bisenetv2 trainable parameters (2 classes): {n:,} vs published {PAPER_PARAMS_2:,.0f}")
    assert abs(n - PAPER_PARAMS_2) / PAPER_PARAMS_2 < 0.03
    n19 = count_params(sinet_tf.build_model("bisenetv2", input_shape=SMALL, num_classes=19))
    assert abs(n19 - PAPER_PARAMS_19) / PAPER_PARAMS_19 < 0.03
    # CoinCheung's count + 128: our CE 3x3 conv has a bias instead of BN (-128), our BGA 1x1 convs biases (+256)
    assert n19 == 3_358_627 + 128
    assert n == n19 - 17 * (1024 + 1)       # only the classifier depends on the class count
    # PaddleSeg's head width C_t = 128: the head's 3x3 conv 128 -> C_t (no bias) + BN (2 C_t) and the
    # classifier C_t -> 19 (+ bias) shrink by 896 channels
    narrow = count_params(sinet_tf.build_model("bisenetv2", input_shape=SMALL, num_classes=19, head_channels=128))
    assert narrow == n19 - (1024 - 128) * (9 * 128 + 2 + 19)


def test_bisenetv2_macs_at_the_papers_cityscapes_input():
    # Paper Table 8: 21.15 GFLOPs (Cityscapes, images resized to 1024x512 for inference), head
    # width not stated (see the module docstring). Convolution multiply-adds here, 19 classes:
    # the paper's figure lies between the two head widths in use, C_t = 128 and 1024.
    # (count_macs itself equals the converted graph's multiply-adds: test_registry_export.py.)
    wide = count_macs(sinet_tf.build_model("bisenetv2", input_shape=(512, 1024, 3), num_classes=19))
    narrow = count_macs(sinet_tf.build_model("bisenetv2", input_shape=(512, 1024, 3), num_classes=19,
                                             head_channels=128))
    print(f"bisenetv2 multiply-adds at 1024x512, 19 classes: {narrow / 1e9:.2f} G (C_t 128) to "
          f"{wide / 1e9:.2f} G (C_t 1024) vs paper 21.15 GFLOPs")
    assert narrow < 21.15e9 < wide
    # the two differ by the head alone: at 1/8 of the input, its 3x3 conv 128 -> C_t and the
    # classifier C_t -> 19, for 1024 - 128 more channels
    assert wide - narrow == (512 // 8) * (1024 // 8) * (9 * 128 + 19) * (1024 - 128)


def test_bisenetv2_branches_follow_table_1():
    model = sinet_tf.build_model("bisenetv2", input_shape=(64, 128, 3), num_classes=3)
    assert model.output_shape == (None, 64, 128, 3)
    assert model.get_layer("normalize").get_config()["preset"] == "imagenet"
    shape = lambda name: tuple(model.get_layer(name).output.shape[1:])  # noqa: E731
    assert shape("detail.s1.conv2.relu") == (32, 64, 64)
    assert shape("detail.s2.conv3.relu") == (16, 32, 64)
    assert shape("detail.s3.conv3.relu") == (8, 16, 128)
    assert shape("semantic.stem.fuse.relu") == (16, 32, 16)
    assert shape("semantic.s3.ge2.relu") == (8, 16, 32)
    assert shape("semantic.s4.ge2.relu") == (4, 8, 64)
    assert shape("semantic.s5.ge4.relu") == (2, 4, 128)
    assert shape("semantic.ce.conv3x3") == (2, 4, 128)
    assert shape("bga.out.bn") == (8, 16, 128)
    assert shape("head.conv.relu") == (8, 16, 1024)
    # expansion ratio 6 in every GE layer (Fig. 5): a stride-2 layer expands its input width
    assert model.get_layer("semantic.s3.ge1.expand.dw").kernel.shape == (3, 3, 16, 6)
    assert model.get_layer("semantic.s5.ge4.expand.dw").kernel.shape == (3, 3, 128, 6)
    assert isinstance(model.get_layer("semantic.s5.ge4.expand.dw"), ExpandingDepthwiseConv2D)


@pytest.mark.parametrize("strides,padding", [(1, "same"), (2, "valid")])
def test_expanding_depthwise_equals_a_depth_multiplier_6_depthwise_conv(strides, padding):
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 5)).astype(np.float32)
    ours = ExpandingDepthwiseConv2D(3, strides=strides, padding=padding, depth_multiplier=6, use_bias=True,
                                    bias_initializer="random_normal")
    keras_dw = keras.layers.DepthwiseConv2D(3, strides=strides, padding=padding, depth_multiplier=6, use_bias=True)
    y = np.asarray(ours(x))
    keras_dw.build(x.shape)
    keras_dw.set_weights(ours.get_weights())
    assert_outputs_match(y, keras_dw(x), rtol=1e-5, what="expanding depthwise vs DepthwiseConv2D")
    clone = ExpandingDepthwiseConv2D.from_config(ours.get_config())
    assert clone.depth_multiplier == 6


def test_context_embedding_broadcast_is_exact():
    model = sinet_tf.build_model("bisenetv2", input_shape=SMALL)
    probe = keras.Model(model.input, [model.get_layer("semantic.ce.relu").output,
                                       model.get_layer("semantic.ce.broadcast").output])
    pooled, broadcast = (np.asarray(t) for t in probe(_pixels(3), training=False))
    np.testing.assert_array_equal(broadcast, np.broadcast_to(pooled, broadcast.shape))


def test_bisenetv2_booster_heads(booster_model):
    assert booster_model.output_names == ["logits", "aux_s2", "aux_s3", "aux_s4", "aux_s5_4"]
    outs = booster_model(_pixels(1, batch=2), training=False)
    assert all(tuple(o.shape) == (2, 64, 64, 2) and o.dtype == "float32" for o in outs)
    plain = sinet_tf.build_model("bisenetv2", input_shape=SMALL)
    # four heads of 3x3 conv to 128 + BN + 1x1 classifier on 16, 32, 64, 128 channels
    assert count_params(booster_model) - count_params(plain) == sum(
        9 * c * 128 + 2 * 128 + 128 * 2 + 2 for c in (16, 32, 64, 128)) == 278_536
    # the heads only read the semantic branch: with the same weights the main logits agree
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(booster_model.get_layer(layer.name).get_weights())
    x = _pixels(2)
    assert_outputs_match(plain(x, training=False), booster_model(x, training=False)[0], rtol=1e-5,
                         what="main logits with and without booster heads")


def _converted_ops(build, input_shape):
    inputs = keras.Input(input_shape, batch_size=1)
    model = keras.Model(inputs, build(inputs))
    data = convert_float32(model)
    x = np.random.default_rng(5).normal(size=(1, *input_shape)).astype(np.float32)
    assert_outputs_match(TFLiteRunner(data)(x), model(x), rtol=1e-4, what="TFLite vs Keras")
    report = check_gpu_compatibility(data)
    assert report.compatible, report.summary()
    return report.op_counts()


def test_expanding_depthwise_converts_to_gpu_delegate_ops():
    ops = _converted_ops(lambda x: ExpandingDepthwiseConv2D(3, depth_multiplier=6, use_bias=False)(x), (8, 8, 16))
    assert ops == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1}


def test_context_embedding_converts_to_4d_ops_only():
    # a plain broadcast Add would become RESHAPE to a 1-D [C] tensor + ADD (see the module docstring)
    ops = _converted_ops(context_embedding, (4, 6, 128))
    assert "RESHAPE" not in ops and ops.get("RESIZE_BILINEAR") == 1 and ops.get("MEAN") == 1


@pytest.mark.parametrize("size", [80, 48])
def test_bisenetv2_refuses_sizes_not_multiple_of_32(size):
    with pytest.raises(ValueError, match=rf"bisenetv2: input size {size}x{size}.*multiples of 32"):
        sinet_tf.build_model("bisenetv2", input_shape=(size, size, 3))
