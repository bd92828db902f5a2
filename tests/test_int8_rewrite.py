"""The int8 graph rewrites (sinet_tf.export.rewrite): same function as the Keras model,
and the rewritten official SINet converts to a full-int8 file that XNNPACK runs whole."""

from collections import Counter

import keras
import numpy as np
import pytest

from sinet_tf.export.rewrite import ChannelAffine, DecomposedPReLU, FoldedAway, ScaledAdd, int8_friendly
from sinet_tf.layers.resize import BilinearResize

RNG = np.random.default_rng(0)


def _randomize(model):
    """Random weights everywhere, with BN statistics and PReLU slopes of both signs
    (including slopes > 1, which need the signed decomposition)."""
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            c = weights[0].shape
            layer.set_weights([RNG.normal(0, 1, c), RNG.normal(0, 0.5, c), RNG.normal(0, 0.5, c),
                               RNG.uniform(0.2, 2.0, c)])
        elif isinstance(layer, keras.layers.PReLU):
            layer.set_weights([RNG.uniform(-0.5, 1.5, weights[0].shape)])
        elif weights:
            layer.set_weights([RNG.normal(0, 0.5, w.shape) for w in weights])
    return model


def _bn(x):
    return keras.layers.BatchNormalization()(x)


def _small_model():
    """One instance of every pattern the rewrites handle."""
    inputs = keras.Input((16, 16, 8), batch_size=1)
    x = keras.layers.PReLU(shared_axes=[1, 2])(_bn(keras.layers.Conv2D(8, 3, padding="same")(inputs)))
    pooled = keras.layers.AveragePooling2D(2)(x)                                  # -> fixed depthwise
    up = _bn(BilinearResize(scale=2)(keras.layers.Conv2D(8, 1)(pooled)))          # BN folded into the conv
    a = _bn(keras.layers.DepthwiseConv2D(3, padding="same")(x))
    cat = _bn(keras.layers.Concatenate()([a, up]))                                # BN folded into both parts
    res = _bn(keras.layers.Add()([cat, keras.layers.Concatenate()([x, x])]))      # standalone -> ChannelAffine
    y = keras.layers.PReLU(shared_axes=[1, 2])(res)
    branches = keras.layers.Concatenate()([keras.layers.Conv2D(8, 1)(y), keras.layers.Conv2D(8, 3, padding="same")(y)])
    y = _bn(keras.layers.Add()([y, branches]))                                     # -> ScaledAdd, BN into the convs
    return _randomize(keras.Model(inputs, keras.layers.Conv2D(3, 1)(y)))


def _max_rel_diff(a, b, x):
    ya, yb = np.asarray(a(x)), np.asarray(b(x))
    return float(np.abs(ya - yb).max() / max(np.abs(ya).max(), 1e-6))


def test_small_model_rewrites_are_equivalent():
    model = _small_model()
    rewritten = int8_friendly(model)
    kinds = Counter(type(layer).__name__ for layer in rewritten.layers)
    assert not any(isinstance(layer, (keras.layers.PReLU, keras.layers.AveragePooling2D))
                   for layer in rewritten.layers)
    assert kinds[DecomposedPReLU.__name__] == 2
    assert kinds[FoldedAway.__name__] == 3          # BNs after the resize, the concat, the conv-branch add
    assert kinds[ChannelAffine.__name__] == 1       # the BN after the add of BN outputs
    assert kinds[ScaledAdd.__name__] == 1
    x = RNG.normal(0, 1, (2, 16, 16, 8)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5
    # the original model is left as it was
    assert any(isinstance(layer, keras.layers.PReLU) for layer in model.layers)


@pytest.mark.parametrize("alpha_high", [0.9, 1.5])
def test_decomposed_prelu_matches_prelu(alpha_high):
    inputs = keras.Input((8, 8, 6), batch_size=1)
    model = keras.Model(inputs, keras.layers.PReLU(shared_axes=[1, 2])(inputs))
    model.layers[1].set_weights([np.linspace(-0.5, alpha_high, 6).reshape(1, 1, 6).astype(np.float32)])
    rewritten = int8_friendly(model)
    assert rewritten.layers[1].signed == (alpha_high > 1)
    x = RNG.normal(0, 2, (1, 8, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rewritten(x)), np.asarray(model(x)), atol=1e-6)


def test_conv_then_pointwise_conv_is_one_conv():
    inputs = keras.Input((12, 12, 4), batch_size=1)
    x = keras.layers.Conv2D(2, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.Activation("linear", name="logits")(x)
    y = keras.layers.Activation("sigmoid")(keras.layers.Conv2D(2, 1, use_bias=False, name="head")(x))
    model = _randomize(keras.Model(inputs, y))
    rewritten = int8_friendly(model)
    assert isinstance(rewritten.get_layer("head"), FoldedAway)
    assert sum(isinstance(layer, keras.layers.Conv2D) for layer in rewritten.layers) == 1
    x = RNG.normal(0, 1, (2, 12, 12, 4)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5


@pytest.fixture(scope="module")
def official_sinet_64(sinet_checkpoint):
    from sinet_tf.export.heads import with_output_head
    from sinet_tf.inference import load_model

    model = with_output_head(load_model("sinet", sinet_checkpoint, input_size=(64, 64)), "probabilities")
    return model, int8_friendly(model)


def test_official_sinet_rewrite_is_equivalent(official_sinet_64):
    model, rewritten = official_sinet_64
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5
    kinds = Counter(type(layer).__name__ for layer in rewritten.layers)
    assert kinds["PReLU"] == kinds["AveragePooling2D"] == 0
    # no BatchNormalization is left that the converter would emit as MUL + ADD
    assert kinds[FoldedAway.__name__] >= 9 and kinds[ChannelAffine.__name__] >= 10
    assert kinds["BatchNormalization"] == 38  # each right after a conv: the converter folds them
    assert isinstance(rewritten.get_layer("head_difference"), FoldedAway)  # merged into classifier.1


def test_official_sinet_int8_has_no_float_islands_and_one_xnnpack_partition(official_sinet_64):
    from ai_edge_litert.interpreter import Interpreter

    from sinet_tf.export import _representative
    from sinet_tf.export.quantize import convert, inspect_tflite

    _, rewritten = official_sinet_64
    images = np.random.default_rng(2).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    data = convert(rewritten, "int8", "float32", _representative(images))
    contents = inspect_tflite(data, "int8")
    assert contents.problems == []
    ops = contents.op_counts()
    assert "PRELU" not in ops and "AVERAGE_POOL_2D" not in ops and "SOFTMAX" not in ops
    assert ops.get("MUL", 0) <= 3  # the data-dependent products only (two SE scales, the IB gate)
    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    names = [op["op_name"] for op in interpreter._get_ops_details()]
    assert names.count("DELEGATE") == 1
