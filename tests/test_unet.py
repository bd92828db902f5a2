"""U-Net (Ronneberger et al., MICCAI 2015) and U-Net on MobileNetV2: size, skips, refusals, weights."""

import math

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.backbones.mobilenetv2 import mobilenetv2_features
from sinet_tf.model_cost import count_params

# The same-padded 64-channel U-Net with 2 classes as commonly quoted (torchsummary of the
# plain PyTorch U-Net, model-zoo tables: "U-Net | 2015 | 31,031,810"; "31.0 M"). The paper
# itself gives no count; its valid-padded network has exactly the same weights.
PAPER_PARAMS = 31_031_810
# milesial/Pytorch-UNet's UNet (BatchNorm after every 3x3 conv, bias-free convs), 2 classes;
# the README-quoted 31,037,633 is its 1-class count (64 + 1 fewer classifier weights).
BN_VARIANT_PARAMS = 31_037_698
SMALL = (64, 64, 3)


def _pixels(seed, batch=1, shape=SMALL):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


def _params(model, names):
    return sum(math.prod(w.shape) for n in names for w in model.get_layer(n).trainable_weights)


def test_unet_params_match_the_published_count():
    n = count_params(sinet_tf.build_model("unet", input_shape=SMALL))
    print(f"unet trainable parameters (2 classes): {n:,} vs published {PAPER_PARAMS:,}")
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.03
    assert n == 31_031_810
    bn = count_params(sinet_tf.build_model("unet", input_shape=SMALL, batch_norm=True))
    # + gamma/beta of the 18 BatchNorms (2 x 5,888 channels) - the 5,888 conv biases they replace
    assert bn == BN_VARIANT_PARAMS == n + 2 * 5_888 - 5_888


def test_unet_layout_follows_figure_1():
    model = sinet_tf.build_model("unet", input_shape=(64, 128, 3), num_classes=3)
    assert model.output_shape == (None, 64, 128, 3)
    assert model.get_layer("normalize").get_config()["preset"] == "imagenet"
    for level, (width, side) in enumerate(zip((64, 128, 256, 512), (64, 32, 16, 8)), start=1):
        assert model.get_layer(f"down{level}.conv2").output.shape == (None, side, 2 * side, width)
        up = model.get_layer(f"up{level}.upconv")
        assert tuple(up.kernel.shape) == (2, 2, width, 2 * width)  # 2x2 up-conv halving the channels (kh, kw, out, in)
        assert model.get_layer(f"up{level}.concat").output.shape[-1] == 2 * width
    assert model.get_layer("bottom.conv2").output.shape == (None, 4, 8, 1024)
    assert model.get_layer("bottom.dropout").rate == 0.5
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    slim = sinet_tf.build_model("unet", input_shape=SMALL, base_width=16, dropout=0)
    assert count_params(slim) < PAPER_PARAMS / 15
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in slim.layers)


def test_unet_mobilenetv2_params_and_encoder_match_keras_applications():
    model = sinet_tf.build_model("unet_mobilenetv2", input_shape=SMALL)
    n = count_params(model)
    print(f"unet_mobilenetv2 trainable parameters (2 classes): {n:,}")
    # No paper gives this variant a count; composition: MobileNetV2 encoder to block_16
    # (1,811,712) + five decoder steps (3,734,448) + 1x1 classifier (16 * 2 + 2).
    assert n == 5_546_194
    reference = keras.applications.MobileNetV2(input_shape=SMALL, include_top=False, weights=None, alpha=1.0)
    reference_params = count_params(reference)
    assert reference_params == 2_223_872
    encoder = [layer.name for layer in reference.layers if layer.weights and layer.name not in ("Conv_1", "Conv_1_bn")]
    assert _params(model, encoder) == 1_811_712 == reference_params - (320 * 1280 + 2 * 1280)
    decoder = [layer.name for layer in model.layers if layer.name.startswith("decoder.")]
    assert _params(model, decoder) == 3_734_448
    assert n == 1_811_712 + 3_734_448 + 34


def test_unet_mobilenetv2_skips_are_the_expansion_outputs():
    model = sinet_tf.build_model("unet_mobilenetv2", input_shape=(64, 96, 3))
    assert model.output_shape == (None, 64, 96, 2)
    assert model.get_layer("normalize").get_config()["preset"] == "symmetric"
    expected = {1: ("block_13_expand_relu", 4, 576), 2: ("block_6_expand_relu", 8, 192),
                3: ("block_3_expand_relu", 16, 144), 4: ("block_1_expand_relu", 32, 96)}
    for step, (tap, side, channels) in expected.items():
        concat = model.get_layer(f"decoder.up{step}.concat")
        skip, up = concat.input
        assert skip.shape == (None, side, side * 3 // 2, channels)
        assert skip is model.get_layer(tap).output
        assert up.shape[1:3] == skip.shape[1:3]
    with pytest.raises(ValueError, match="decoder_widths|5 widths"):
        sinet_tf.build_model("unet_mobilenetv2", input_shape=SMALL, decoder_widths=(64, 32))


def test_mobilenetv2_expanded_taps_are_optional_and_named():
    x = keras.Input(SMALL)
    plain = mobilenetv2_features(x)
    assert sorted(plain) == [4, 8, 16, 32]
    features = mobilenetv2_features(keras.Input(SMALL), expanded_taps=(1, 3, 6, 13))
    shapes = {k: tuple(v.shape[1:]) for k, v in features.items() if isinstance(k, str)}
    assert shapes == {"block_1_expand_relu": (32, 32, 96), "block_3_expand_relu": (16, 16, 144),
                      "block_6_expand_relu": (8, 8, 192), "block_13_expand_relu": (4, 4, 576)}
    with pytest.raises(ValueError, match="expanded_taps"):
        mobilenetv2_features(keras.Input(SMALL), expanded_taps=(0,))


@pytest.mark.parametrize("name,size,multiple", [("unet", 72, 16), ("unet", 200, 16), ("unet_mobilenetv2", 80, 32)])
def test_unets_refuse_sizes_off_their_multiple(name, size, multiple):
    with pytest.raises(ValueError, match=rf"{name}: input size {size}x{size}.*multiples of {multiple}"):
        sinet_tf.build_model(name, input_shape=(size, size, 3))


def test_unet_mobilenetv2_missing_backbone_weights_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="unet_mobilenetv2: backbone_weights"):
        sinet_tf.build_model("unet_mobilenetv2", input_shape=SMALL, backbone_weights=tmp_path / "none.h5")


def test_unet_mobilenetv2_backbone_weights_are_copied_by_layer_name(tmp_path):
    keras.utils.set_random_seed(1)
    reference = keras.applications.MobileNetV2(input_shape=SMALL, include_top=False, weights=None, alpha=1.0)
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    reference.save_weights(path)
    model = sinet_tf.build_model("unet_mobilenetv2", input_shape=SMALL, backbone_weights=path)
    for name in ("Conv1", "bn_Conv1", "block_1_expand", "block_13_expand_BN", "block_16_project_BN"):
        for a, b in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    y = np.asarray(model(_pixels(2), training=False))
    assert y.shape == (1, 64, 64, 2) and np.isfinite(y).all()
