"""PSPNet (Zhao et al., CVPR 2017): size against published figures, input sizes, ImageNet
weights by name, the auxiliary head, the dilated encoder and the pyramid pooling graph."""

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.backbones.resnet import resnet_features
from sinet_tf.model_cost import count_params

SMALL = (96, 96, 3)      # the smallest square input PSPNet takes (a multiple of 8 * 6 = 48 above 64)
CLASSIFIER_IN = 512      # the 1x1 classifier reads the 512-channel 3x3 conv


def _pixels(seed, batch=1, shape=SMALL):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


def _aux_params(model):
    return int(sum(np.prod(w.shape) for layer in model.layers if layer.name.startswith("aux.")
                   for w in layer.trainable_weights))


def _classes_adjustment(published_classes, classes=2):
    """Parameters of the 1x1 classifier (weights + bias) that a count at ``published_classes`` has
    beyond one at ``classes``."""
    return (published_classes - classes) * (CLASSIFIER_IN + 1)


@pytest.fixture(scope="module")
def resnet50_with_aux():
    keras.utils.set_random_seed(0)
    return sinet_tf.build_model("pspnet_resnet50", input_shape=SMALL, aux_head=True)


@pytest.fixture(scope="module")
def mobilenetv2_with_aux():
    keras.utils.set_random_seed(0)
    return sinet_tf.build_model("pspnet_mobilenetv2", input_shape=SMALL, aux_head=True)


@pytest.mark.slow   # 66 M parameters to build; ResNet-50's count, the same builder, stays in the default suite
def test_pspnet_resnet101_params_match_the_authors_figure():
    # 65.7 M: Mehta et al., "ESPNet", ECCV 2018, Sec. 1 ("PSPNet [1] has 65.7 million
    # parameters"), the authors' ResNet-101 PSPNet of their Cityscapes comparison: 19 classes,
    # the deployed network without the auxiliary head. Qualcomm AI Hub's card for the authors'
    # pspnet101_ade20k checkpoint also reads 65.7 M.
    published = 65.7e6 - _classes_adjustment(19)
    model = sinet_tf.build_model("pspnet_resnet101", input_shape=SMALL)
    n = count_params(model)
    print(f"pspnet_resnet101 trainable parameters (2 classes): {n:,} vs published {published:,.0f} "
          f"({(n - published) / published:+.2%})")
    assert abs(n - published) / published < 0.03
    # encoder 42,552,832 + pyramid pooling 4 x (2048*512 + 2*512) + 3x3 conv 4096 -> 512 + BN
    # (18,875,392) + classifier 512*2 + 2
    assert n == 42_552_832 + 4 * (2048 * 512 + 2 * 512) + 18_875_392 + 1026 == 65_627_650
    # What is left is the encoder's stem and biases (sinet_tf/backbones/resnet.py): the authors'
    # deep stem has 123,776 more parameters and their convs no biases (52,672 here); with those
    # and 19 classes the count is the 65,707,475 the published 65.7 M rounds.
    assert n + _classes_adjustment(19) + 123_776 - 52_672 == 65_707_475
    # and the encoder's layers are keras.applications.ResNet101's, res4b22 the aux tap
    reference = keras.applications.ResNet101(input_shape=SMALL, include_top=False, weights=None)
    theirs = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in reference.layers if layer.weights}
    assert {name: [tuple(w.shape) for w in model.get_layer(name).weights] for name in theirs} == theirs
    assert tuple(model.get_layer("conv4_block23_out").output.shape) == (None, 12, 12, 1024)


def test_pspnet_resnet50_params_match_the_published_figure(resnet50_with_aux):
    # 46.5827 M: OpenVINO Open Model Zoo, "pspnet-pytorch" (mmsegmentation's PSPNet R50-D8,
    # Pascal VOC: 21 classes), counted on the converted inference graph, which has no
    # auxiliary head. (mmsegmentation's ResNetV1c stem is three 3x3 convs, 32-32-64 channels;
    # the converted graph folds BatchNorm into the convs, one value per channel instead of two,
    # which explains most of the 0.08% left below.)
    aux = _aux_params(resnet50_with_aux)
    n = count_params(resnet50_with_aux) - aux
    published = 46.5827e6 - _classes_adjustment(21)
    print(f"pspnet_resnet50 trainable parameters (2 classes): {n:,} vs published {published:,.0f} "
          f"({(n - published) / published:+.2%})")
    assert abs(n - published) / published < 0.03
    assert n == 23_534_592 + 4 * (2048 * 512 + 2 * 512) + 18_875_392 + 1026 == 46_609_410
    # auxiliary head on conv4_x (1024 channels): 3x3 conv 256 + BN + classifier 256*2 + 2
    assert aux == 1024 * 9 * 256 + 2 * 256 + 514 == 2_360_322


def test_pspnet_mobilenetv2_params_match_mobilenetv2_and_the_papers_head(mobilenetv2_with_aux):
    # No publication reports PSPNet's head (C/4 pyramid branches, 3x3 conv to 512) on MobileNetV2.
    # Reference: MobileNetV2's published 3.4 M (Sandler et al., CVPR 2018, Table 4; width 1.0,
    # 224x224, 1000 classes), less what PSPNet does not use (the last 1x1 conv 320 -> 1280 + BN
    # and the 1280 -> 1000 classifier), plus PSPNet's head by the paper's definition (Sec. 3.3).
    mobilenetv2_encoder = 3.4e6 - (320 * 1280 + 2 * 1280) - (1280 * 1000 + 1000)
    c = 320
    head = 4 * (c * (c // 4) + 2 * (c // 4)) + (2 * c * 9 * 512 + 2 * 512) + (512 * 2 + 2)
    published = mobilenetv2_encoder + head
    aux = _aux_params(mobilenetv2_with_aux)
    n = count_params(mobilenetv2_with_aux) - aux
    print(f"pspnet_mobilenetv2 trainable parameters (2 classes): {n:,} vs reference {published:,.0f} "
          f"({(n - published) / published:+.2%})")
    assert abs(n - published) / published < 0.03
    # MobileNetV2 to block_16 (1,811,712; Keras' 3.5 M minus the same parts) + the head
    assert n == 1_811_712 + head == 4_865_922
    assert aux == 96 * 9 * 256 + 2 * 256 + 514 == 222_210


def test_aux_head_outputs_logits_first_both_at_input_size(mobilenetv2_with_aux):
    model = mobilenetv2_with_aux
    assert model.output_names == ["logits", "aux_logits"]
    logits, aux = model(_pixels(1, batch=2), training=False)
    assert tuple(logits.shape) == (2, 96, 96, 2) and tuple(aux.shape) == (2, 96, 96, 2)
    assert logits.dtype == "float32" and aux.dtype == "float32"
    # the auxiliary head reads block_12 (96 channels, 1/8 at output stride 8)
    assert tuple(model.get_layer("aux.conv").input.shape) == (None, 12, 12, 96)
    plain = sinet_tf.build_model("pspnet_mobilenetv2", input_shape=SMALL)
    assert len(plain.outputs) == 1 and not any(layer.name.startswith("aux.") for layer in plain.layers)


def test_aux_head_of_resnet_reads_res4(resnet50_with_aux):
    conv = resnet50_with_aux.get_layer("aux.conv")
    assert tuple(conv.input.shape) == (None, 12, 12, 1024)
    assert resnet50_with_aux.get_layer("conv4_block6_out").output is conv.input   # res4f


def test_pyramid_pooling_uses_fixed_kernel_equal_to_stride(resnet50_with_aux):
    side = SMALL[0] // 8
    for b in (1, 2, 3, 6):
        pool = resnet50_with_aux.get_layer(f"ppm.pool{b}")
        assert pool.pool_size == pool.strides == (side // b, side // b)
        assert tuple(pool.output.shape) == (None, b, b, 2048)
        assert tuple(resnet50_with_aux.get_layer(f"ppm.bin{b}.conv").output.shape) == (None, b, b, 512)
    assert tuple(resnet50_with_aux.get_layer("ppm.concat").output.shape) == (None, side, side, 4096)
    assert resnet50_with_aux.get_layer("head.dropout").rate == 0.1


def test_dilated_resnet_keeps_stride_8_with_dilation_2_and_4(resnet50_with_aux):
    m = resnet50_with_aux
    for name, dilation in (("conv3_block1_2_conv", 1), ("conv4_block1_2_conv", 2), ("conv4_block6_2_conv", 2),
                           ("conv5_block1_2_conv", 4), ("conv5_block3_2_conv", 4)):
        assert m.get_layer(name).dilation_rate == (dilation, dilation), name
    assert m.get_layer("conv4_block1_1_conv").strides == m.get_layer("conv5_block1_0_conv").strides == (1, 1)
    assert tuple(m.get_layer("conv5_block3_out").output.shape) == (None, 12, 12, 2048)


def test_resnet_output_stride_16_dilates_conv5_only():
    features = resnet_features(keras.Input((64, 64, 3)), 50, output_stride=16)
    assert [features[s].shape[1] for s in (4, 8, 16, 32)] == [16, 8, 4, 4]
    assert [features[s].shape[-1] for s in (4, 8, 16, 32)] == [256, 512, 1024, 2048]
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        resnet_features(keras.Input((64, 64, 3)), 50, output_stride=4)


@pytest.mark.parametrize("name", ["pspnet_resnet50", "pspnet_mobilenetv2"])
@pytest.mark.parametrize("size", [64, 100, 224])
def test_pspnet_refuses_sizes_not_multiple_of_48(name, size):
    with pytest.raises(ValueError, match=rf"{name}: input size {size}x{size}.*multiples of 48"):
        sinet_tf.build_model(name, input_shape=(size, size, 3))


def test_registry_entries():
    for name, size in (("pspnet_resnet50", 480), ("pspnet_resnet101", 480), ("pspnet_mobilenetv2", 240)):
        info = sinet_tf.get_model_info(name)
        assert info.input_multiple == 48 and info.default_input_size == (size, size)
        assert size % 48 == 0
    assert sinet_tf.get_model_info("pspnet_resnet101").default_input_size[0] // 8 == 60   # the paper's map


# ResNet-50 (tag "large"): with -m slow like the registry checks of the large variants; the
# MobileNetV2 backbone's copy by layer name above goes through the same loader in the default suite.
@pytest.mark.slow
def test_resnet50_backbone_weights_are_copied_by_layer_name(tmp_path):
    keras.utils.set_random_seed(1)
    reference = keras.applications.ResNet50(input_shape=SMALL, include_top=False, weights=None)
    path = tmp_path / "resnet50_notop.weights.h5"
    reference.save_weights(path)
    model = sinet_tf.build_model("pspnet_resnet50", input_shape=SMALL, backbone_weights=path)
    for name in ("conv1_conv", "conv1_bn", "conv2_block1_0_conv", "conv4_block3_2_conv", "conv5_block3_3_bn"):
        for a, b in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="pspnet_resnet50: backbone_weights"):
        sinet_tf.build_model("pspnet_resnet50", input_shape=SMALL, backbone_weights=tmp_path / "none.h5")


def test_mobilenetv2_backbone_weights_are_copied_by_layer_name(tmp_path):
    keras.utils.set_random_seed(2)
    reference = keras.applications.MobileNetV2(input_shape=SMALL, include_top=False, weights=None, alpha=1.0)
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    reference.save_weights(path)
    model = sinet_tf.build_model("pspnet_mobilenetv2", input_shape=SMALL, backbone_weights=path)
    for name in ("Conv1", "block_12_project_BN", "block_16_depthwise"):
        for a, b in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert model.get_layer("block_16_depthwise").dilation_rate == (4, 4)   # output stride 8


def test_defaults_normalize_as_the_imagenet_weights_expect(resnet50_with_aux, mobilenetv2_with_aux):
    assert mobilenetv2_with_aux.get_layer("normalize").get_config()["preset"] == "symmetric"
    assert resnet50_with_aux.get_layer("normalize").get_config()["preset"] == "portraitnet"


def test_recipe_is_the_papers_schedule():
    from sinet_tf.train import load_recipe
    from sinet_tf.train.config import RECIPE_DIR

    (stage,) = load_recipe(RECIPE_DIR / "pspnet.yaml").stages
    assert (stage.model, stage.model_kwargs, stage.aux_weight) == ("pspnet_resnet101", {"aux_head": True}, 0.4)
    assert (stage.optimizer, stage.momentum, stage.learning_rate) == ("sgd", 0.9, 0.01)
    assert (stage.lr_schedule, stage.lr_power, stage.weight_decay, stage.batch_size) == ("poly", 0.9, 1e-4, 16)
    assert stage.augment.scale == (0.5, 2.0) and stage.augment.rotation_deg == (-10.0, 10.0)
    assert stage.input_size[0] % 48 == 0
