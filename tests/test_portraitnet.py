"""PortraitNet (Zhang et al., Computers & Graphics 2019): size, outputs, preset, export."""

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.export import check_gpu_compatibility, convert_float32
from sinet_tf.model_cost import count_params
from sinet_tf.runtime import TFLiteRunner

from registry_cases import assert_outputs_match, batchnorm_from_data

PAPER_PARAMS = 2.08e6  # paper: 2.08 M parameters (2.1 M in the text)
SMALL = (64, 64, 3)


def _pixels(seed, batch=1, shape=SMALL):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


@pytest.fixture(scope="module")
def two_output_model():
    keras.utils.set_random_seed(0)
    return sinet_tf.build_model("portraitnet", input_shape=SMALL, boundary_head=True)


def test_portraitnet_params_match_the_paper(two_output_model):
    n = count_params(two_output_model)
    print(f"portraitnet trainable parameters (2 classes, boundary head): {n:,} vs paper {PAPER_PARAMS:,.0f}")
    assert abs(n - PAPER_PARAMS) / PAPER_PARAMS < 0.03
    # From the paper's structure: MobileNetV2 up to its 320-channel block_16 (keras.applications'
    # MobileNetV2 less its last 1x1 conv 320 -> 1280 + BN), five D-Blocks (Fig. 3: two depthwise
    # separable convs, each depthwise 3x3 + BN and 1x1 + BN, and a 1x1 + BN shortcut) from 320,
    # 96, 32, 24, 16 to 96, 32, 24, 16, 8 channels, a 4x4 transposed conv (no bias) after each,
    # and the 1x1 heads with bias (mask: 2 classes, boundary: 1).
    mobilenetv2 = count_params(keras.applications.MobileNetV2(input_shape=SMALL, include_top=False, weights=None))
    encoder = mobilenetv2 - (320 * 1280 + 2 * 1280)

    def d_block(c_in, c_out):
        return (9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out) + (9 * c_out + 2 * c_out + c_out * c_out + 2 * c_out) \
            + (c_in * c_out + 2 * c_out)

    widths = [320, 96, 32, 24, 16, 8]
    decoder = sum(d_block(a, b) + 16 * b * b for a, b in zip(widths, widths[1:]))
    assert n == encoder + decoder + (8 * 2 + 2) + (8 + 1)
    assert count_params(sinet_tf.build_model("portraitnet", input_shape=SMALL)) == n - 9


def test_portraitnet_two_outputs_mask_first(two_output_model):
    assert two_output_model.output_names == ["logits", "edge_logits"]
    mask, edge = two_output_model(_pixels(1, batch=2), training=False)
    assert tuple(mask.shape) == (2, 64, 64, 2) and tuple(edge.shape) == (2, 64, 64, 1)
    assert mask.dtype == "float32" and edge.dtype == "float32"
    assert np.isfinite(np.asarray(mask)).all() and np.isfinite(np.asarray(edge)).all()


def test_portraitnet_default_is_single_output_with_portraitnet_preset():
    model = sinet_tf.build_model("portraitnet", input_shape=SMALL, num_classes=3)
    assert len(model.outputs) == 1 and model.output_shape == (None, 64, 64, 3)
    assert sinet_tf.get_model_info("portraitnet").default_input_size == (224, 224)
    assert model.get_layer("normalize").get_config()["preset"] == "portraitnet"


@pytest.mark.parametrize("size", [200, 48])
def test_portraitnet_refuses_sizes_not_multiple_of_32(size):
    with pytest.raises(ValueError, match=rf"portraitnet: input size {size}x{size}.*multiples of 32"):
        sinet_tf.build_model("portraitnet", input_shape=(size, size, 3))


def test_portraitnet_missing_backbone_weights_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        sinet_tf.build_model("portraitnet", input_shape=SMALL, backbone_weights=tmp_path / "none.h5")


def test_portraitnet_two_output_tflite_matches_keras_and_is_gpu_compatible(two_output_model):
    batchnorm_from_data(two_output_model, _pixels(7, batch=4))   # O(1) outputs, as in a trained network
    data = convert_float32(two_output_model)
    x = _pixels(6)
    mask, edge = (np.asarray(t) for t in two_output_model(x, training=False))
    runner = TFLiteRunner(data)
    assert runner.input_shape == (1, *SMALL)
    outputs = runner.interpreter.get_output_details()
    assert len(outputs) == 2
    runner(x)  # the runner returns the first output only; read both from the interpreter
    by_channels = {int(o["shape"][-1]): runner.interpreter.get_tensor(o["index"]) for o in outputs}
    assert sorted(by_channels) == [1, 2]
    assert_outputs_match(by_channels[2], mask, rtol=1e-4, what="mask logits, TFLite vs Keras")
    assert_outputs_match(by_channels[1], edge, rtol=1e-4, what="edge logits, TFLite vs Keras")
    report = check_gpu_compatibility(data)
    assert report.compatible, report.summary()
    assert report.op_counts().get("TRANSPOSE_CONV") == 5


def test_portraitnet_backbone_weights_are_copied_by_layer_name(tmp_path):
    keras.utils.set_random_seed(1)
    reference = keras.applications.MobileNetV2(input_shape=SMALL, include_top=False, weights=None, alpha=1.0)
    path = tmp_path / "mobilenet_v2_no_top.weights.h5"
    reference.save_weights(path)
    model = sinet_tf.build_model("portraitnet", input_shape=SMALL, backbone_weights=path)
    for name in ("Conv1", "bn_Conv1", "block_8_expand", "block_16_project_BN"):
        for a, b in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
