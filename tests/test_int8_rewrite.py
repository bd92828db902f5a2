"""The int8 graph rewrites (sinet_tf.export.rewrite): same function as the Keras model,
each pass alone and all in order; the pass registry; and the rewritten official SINet
converts to a full-int8 file that XNNPACK runs whole and the GPU-delegate check accepts."""

import re
from collections import Counter

import keras
import numpy as np
import pytest

from sinet_tf.export.passes.graph import is_linear, read_graph, rebuild
from sinet_tf.export.rewrite import (PASSES, AffineThenResize, ChannelAffine, ColumnBlockConv2D, DecomposedPReLU,
                                     FoldedAway, OffsetConv2D, RewritePass, ScaledAdd, SpaceToDepthConv2D,
                                     absorb_channel_shuffles, equalize_channels, int8_friendly, int8_friendly_variants,
                                     register_pass, unregister_pass)
from sinet_tf.layers.normalization import InputNormalization
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import s2_module

from registry_cases import randomize_weights

RNG = np.random.default_rng(0)


def _randomize(model):
    return randomize_weights(model, RNG)


def _bn(x):
    return keras.layers.BatchNormalization()(x)


def _small_model():
    """One instance of every pattern the BN placement handles."""
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
    y = _bn(BilinearResize(scale=2)(keras.layers.Add()([y, y])))                   # -> AffineThenResize
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
    assert kinds[FoldedAway.__name__] == 4          # BNs after the resizes, the concat, the conv-branch add
    assert kinds[ChannelAffine.__name__] == 1       # the BN after the add of BN outputs
    assert kinds[ScaledAdd.__name__] == 1
    assert kinds[AffineThenResize.__name__] == 1
    x = RNG.normal(0, 1, (2, 16, 16, 8)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5
    # the original model is left as it was
    assert any(isinstance(layer, keras.layers.PReLU) for layer in model.layers)


@pytest.mark.parametrize("mode", DecomposedPReLU.MODES)
@pytest.mark.parametrize("alpha_high", [0.9, 1.5])
def test_decomposed_prelu_matches_prelu(alpha_high, mode):
    inputs = keras.Input((8, 8, 6), batch_size=1)
    model = keras.Model(inputs, keras.layers.PReLU(shared_axes=[1, 2])(inputs))
    model.layers[1].set_weights([np.linspace(-0.5, alpha_high, 6).reshape(1, 1, 6).astype(np.float32)])
    rewritten = int8_friendly(model, prelu_mode=mode)
    assert rewritten.layers[1].signed == (alpha_high > 1) and rewritten.layers[1].mode == mode
    x = RNG.normal(0, 2, (1, 8, 8, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rewritten(x)), np.asarray(model(x)), atol=1e-6)


def test_prelu_mode_can_depend_on_alpha():
    inputs = keras.Input((8, 8, 4), batch_size=1)
    y = keras.layers.PReLU(shared_axes=[1, 2], name="near_relu")(inputs)
    y = keras.layers.PReLU(shared_axes=[1, 2], name="leaky")(y)
    model = keras.Model(inputs, y)
    model.get_layer("near_relu").set_weights([np.full((1, 1, 4), 0.01, np.float32)])
    model.get_layer("leaky").set_weights([np.full((1, 1, 4), 0.3, np.float32)])
    rewritten = int8_friendly(model)
    assert rewritten.get_layer("near_relu").mode == "split" and rewritten.get_layer("leaky").mode == "add"


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


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_few_channel_conv_runs_on_2x2_blocks(kernel_size):
    inputs = keras.Input((64, 64, 2), batch_size=1)
    model = _randomize(keras.Model(inputs, keras.layers.Conv2D(3, kernel_size, padding="same", name="c")(inputs)))
    rewritten = int8_friendly(model, passes=["space_to_depth"])  # by name: column_blocks has its place in the list
    assert isinstance(rewritten.get_layer("c"), SpaceToDepthConv2D)
    x = RNG.normal(0, 1, (2, 64, 64, 2)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5


def test_input_normalization_folds_into_the_first_conv_with_its_border():
    inputs = keras.Input((32, 32, 3), batch_size=1)
    x = InputNormalization("official_sinet", name="normalize")(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="first")(x)
    model = _randomize(keras.Model(inputs, keras.layers.PReLU(shared_axes=[1, 2])(_bn(x))))
    rewritten = int8_friendly(model)  # 32 wide: too narrow for column blocks, the OffsetConv2D stays
    assert isinstance(rewritten.get_layer("normalize"), FoldedAway)
    assert isinstance(rewritten.get_layer("first"), OffsetConv2D)
    x = RNG.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    ya, yb = np.asarray(model(x)), np.asarray(rewritten(x))
    np.testing.assert_allclose(yb, ya, atol=1e-4 * np.abs(ya).max())
    np.testing.assert_allclose(yb[:, 0], ya[:, 0], atol=1e-4 * np.abs(ya).max())  # the padded border row


def test_channel_shuffle_moves_into_the_weights_after_it():
    inputs = keras.Input((16, 16, 32), batch_size=1)
    y = s2_module(inputs, 32, [(3, 1), (5, 2)], residual=True, name="m")
    model = _randomize(keras.Model(inputs, y))
    absorbed = absorb_channel_shuffles(model)
    c1 = absorbed.get_layer("m.c1.conv")
    assert type(c1) is keras.layers.Conv2D and c1.groups == 2
    x = RNG.normal(0, 1, (2, 16, 16, 32)).astype(np.float32)
    assert _max_rel_diff(model, absorbed, x) < 1e-5


def test_equalization_keeps_the_function_and_fills_small_channels():
    inputs = keras.Input((16, 16, 4), batch_size=1)
    x = keras.layers.Conv2D(6, 1, name="root")(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2])(_bn(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    model = _randomize(keras.Model(inputs, keras.layers.Conv2D(2, 1)(x)))
    w = model.get_layer("root").get_weights()
    w[0][..., 0] *= 1e-3  # one channel far below the others
    model.get_layer("root").set_weights(w)
    rewritten = int8_friendly(model)
    x = RNG.normal(0, 1, (8, 16, 16, 4)).astype(np.float32)
    probe = keras.Model(rewritten.inputs, rewritten.get_layer("root").output)
    before = np.abs(np.asarray(probe(x))).max(axis=(0, 1, 2))
    equalize_channels(rewritten, x)
    after = np.abs(np.asarray(probe(x))).max(axis=(0, 1, 2))
    assert after.max() <= before.max() * (1 + 1e-5) and after[0] > 5 * before[0]
    assert _max_rel_diff(model, rewritten, x) < 1e-4


# The (kernel, pool) of both branches of SINet's ten S2 modules (level2.0, level2.1, level3.0 ..
# level3.7), as ../shared/reference/README.md lists them.
SINET_S2_BRANCHES = [[(3, 1), (5, 1)], [(3, 1), (3, 1)], [(3, 1), (5, 1)], [(3, 1), (3, 1)], [(5, 1), (3, 2)],
                     [(5, 2), (3, 4)], [(3, 1), (3, 1)], [(5, 1), (5, 1)], [(3, 2), (3, 4)], [(3, 1), (5, 2)]]


@pytest.fixture(scope="module")
def official_sinet_64(sinet_checkpoint):
    from sinet_tf.export.heads import with_output_head
    from sinet_tf.export.tflite import with_fixed_batch
    from sinet_tf.loading import load_model

    model = with_output_head(with_fixed_batch(load_model("sinet", sinet_checkpoint, input_size=(64, 64)), 1),
                             "probabilities")
    return model, int8_friendly(model)


def test_official_sinet_rewrite_is_equivalent(official_sinet_64):
    model, rewritten = official_sinet_64
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5
    kinds = Counter(type(layer).__name__ for layer in rewritten.layers)
    assert kinds["PReLU"] == kinds["AveragePooling2D"] == kinds["GroupedPointwiseConv"] == 0
    # Counted from the architecture (../shared/reference/README.md, "SINet, as the checkpoint
    # encodes it"). PReLUs: level1's CBR; level2_0's squeeze-excite and the one after its BN;
    # each S2 module's two branches and its BR; BR2; level3_0's two in the squeeze-excite and
    # the one after its BN; BR3; the decoder's level2_C CBR. Every one becomes a DecomposedPReLU.
    assert kinds[DecomposedPReLU.__name__] == 1 + 2 + 3 * len(SINET_S2_BRANCHES) + 1 + 3 + 1 + 1 == 39
    # no BatchNormalization is left that the converter would emit as MUL + ADD
    assert kinds[FoldedAway.__name__] >= 10 and kinds[ChannelAffine.__name__] >= 10
    # BatchNorms right after a conv (the converter folds them): level1, level2_0 and level3_0 (after
    # their 1x1 convs), level2_C, and in every S2 branch the one after its depthwise conv and its
    # last one when no pooling (an upsampling) comes between its 1x1 conv and it; level1's is
    # folded by the rewrite itself, with the input normalization, into the first conv (below).
    after_conv = 4 + sum(2 + sum(pool == 1 for _, pool in branches) for branches in SINET_S2_BRANCHES)
    assert kinds["BatchNormalization"] == after_conv - 1 == 37
    assert isinstance(rewritten.get_layer("normalize"), FoldedAway)  # into encoder.level1.conv
    first = rewritten.get_layer("encoder.level1.conv")  # an OffsetConv2D, then on 4-column blocks
    assert isinstance(first, ColumnBlockConv2D) and first.with_offset and first.block == 4
    assert isinstance(rewritten.get_layer("head_difference"), FoldedAway)  # merged into classifier.1
    assert isinstance(rewritten.get_layer("classifier.1"), ColumnBlockConv2D)
    assert isinstance(rewritten.get_layer("decoder.up2"), AffineThenResize)  # bn_2 before the resize
    assert all(rewritten.get_layer(f"encoder.level{lv}.{i}.c1.conv").groups == 2
               for lv, n in ((2, 2), (3, 8)) for i in range(n))


# What each built-in pass does to the official SINet when it runs alone: (layer, its class
# afterwards, or a check of the whole rewritten model).
_ALONE = {
    "channel_shuffles": lambda m: type(m.get_layer("encoder.level2.0.c1.conv")) is keras.layers.Conv2D,
    "input_normalization": lambda m: isinstance(m.get_layer("encoder.level1.conv"), OffsetConv2D),
    "batch_norms": lambda m: isinstance(m.get_layer("decoder.up2"), AffineThenResize),
    "pointwise_merge": lambda m: isinstance(m.get_layer("head_difference"), FoldedAway),
    "prelu": lambda m: isinstance(m.get_layer("encoder.level1.act"), DecomposedPReLU),
    "average_pools": lambda m: type(m.get_layer("encoder.level3.2.d2.pool")) is keras.layers.DepthwiseConv2D,
    "space_to_depth": lambda m: isinstance(m.get_layer("classifier.1"), SpaceToDepthConv2D),
    "column_blocks": lambda m: isinstance(m.get_layer("classifier.1"), ColumnBlockConv2D),
    "implicit_padding": lambda m: m.get_layer("encoder.level2_0.conv.0").padding == "same",
}


def test_a_rewrite_shares_no_layer_with_its_input(official_sinet_64):
    """Within the pass chain the unchanged layers are reused, not copied
    (``sharing_unchanged_layers``); the chain's result is one copy, so exporting it, or
    training it with quantization-aware ranges, cannot touch the model it came from."""
    model, rewritten = official_sinet_64
    assert not {id(layer) for layer in rewritten.layers} & {id(layer) for layer in model.layers}
    assert not {id(w) for w in rewritten.weights} & {id(w) for w in model.weights}


def test_read_graph_reads_each_model_s_own_calls_of_shared_layers():
    """Three layers called a -> b -> c in one model and a -> c -> b in another: each
    model's graph is its own wiring, though every name is in both."""
    a, b, c = (keras.layers.Conv2D(4, 1, name=n) for n in "abc")
    x = keras.Input((8, 8, 4), name="x")
    first = keras.Model(x, c(b(a(x))))
    y = keras.Input((8, 8, 4), name="y")
    second = keras.Model(y, b(c(a(y))))
    assert {n: read_graph(first).producers[n] for n in "abc"} == {"a": ["x"], "b": ["a"], "c": ["b"]}
    assert {n: read_graph(second).producers[n] for n in "abc"} == {"a": ["y"], "b": ["c"], "c": ["a"]}
    assert read_graph(second).consumers["b"] == [None]


@pytest.mark.parametrize("name", [*_ALONE, "equalize"])
def test_each_pass_alone_keeps_the_function(official_sinet_64, name):
    model, _ = official_sinet_64
    x = np.random.default_rng(7).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    rewritten = int8_friendly(model, passes=[name], images=x)
    if name == "equalize":  # only weights change
        assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), rewritten.get_weights()))
    else:
        assert _ALONE[name](rewritten)
    assert not any(check(rewritten) for other, check in _ALONE.items() if other != name)
    assert _max_rel_diff(model, rewritten, x) < 1e-5


def test_variants_share_the_passes_before_equalization_and_equal_the_separate_rewrites():
    """What the exporter's calibration search converts: the rewrite without and with
    equalization from one run of the earlier passes, weight for weight what
    :func:`int8_friendly` gives for each setting on its own."""
    model = _small_model()
    images = RNG.normal(0, 1, (4, 16, 16, 8)).astype(np.float32)
    without, with_eq = int8_friendly_variants(model, [None, images])
    for shared, alone in ((without, int8_friendly(model)), (with_eq, int8_friendly(model, images=images))):
        assert [type(layer) for layer in shared.layers] == [type(layer) for layer in alone.layers]
        for a, b in zip(shared.get_weights(), alone.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(without.get_weights(), with_eq.get_weights()))
    assert without is not model and with_eq is not without


def test_passes_run_in_registry_order_and_unknown_names_are_listed():
    assert [p.name for p in PASSES] == ["channel_shuffles", "input_normalization", "batch_norms", "pointwise_merge",
                                        "concat_activations", "prelu", "average_pools", "space_to_depth", "equalize",
                                        "column_blocks", "implicit_padding"]
    assert all(p.description and "\n" not in p.description for p in PASSES)
    inputs = keras.Input((8, 8, 4), batch_size=1)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="act")(inputs)
    model = _randomize(keras.Model(inputs, keras.layers.AveragePooling2D(2, name="pool")(x)))
    both = int8_friendly(model, passes=["average_pools", "prelu"])
    only = int8_friendly(model, passes="prelu")
    assert isinstance(both.get_layer("act"), DecomposedPReLU) and isinstance(only.get_layer("act"), DecomposedPReLU)
    assert type(both.get_layer("pool")) is keras.layers.DepthwiseConv2D
    assert type(only.get_layer("pool")) is keras.layers.AveragePooling2D
    none = int8_friendly(model, passes=[])
    assert none is not model and [type(a) for a in none.layers] == [type(b) for b in model.layers]
    x = RNG.normal(0, 1, (2, 8, 8, 4)).astype(np.float32)
    for rewritten in (both, only, none):
        assert _max_rel_diff(model, rewritten, x) < 1e-6
    listed = ", ".join(p.name for p in PASSES)
    unknown = f"unknown rewrite pass 'prelus'; registered, in order: {listed}"
    with pytest.raises(ValueError, match=re.escape(unknown)):
        int8_friendly(model, passes=["prelu", "prelus"])
    with pytest.raises(ValueError, match="'equalize' needs calibration images"):
        int8_friendly(model, passes=["equalize"])


def _double_then_halve(model, context):
    """A toy pass: a linear Conv2D read only by another Conv2D outputs twice its values
    (kernel and bias times 2) and that conv reads them with half its kernel."""
    graph = read_graph(model)
    for name, layer in graph.layers.items():
        nxt = graph.consumers[name][0] if graph.single(name) else None
        if type(layer) is keras.layers.Conv2D and is_linear(layer) \
                and type(graph.layers.get(nxt)) is keras.layers.Conv2D:
            kernel, bias = layer.get_weights()
            second = graph.layers[nxt].get_weights()
            return rebuild(model, weights={name: [2 * kernel, 2 * bias], nxt: [0.5 * second[0], *second[1:]]})
    return model


@pytest.fixture
def toy_pass():
    """``_double_then_halve`` registered right after ``pointwise_merge``, and removed again."""
    toy = RewritePass("double_then_halve", "a conv's output doubled, the next conv's kernel halved", _double_then_halve)
    registered = register_pass(toy, after="pointwise_merge")
    yield registered
    unregister_pass(registered.name)


def test_a_registered_pass_runs_in_its_place_and_keeps_the_function(toy_pass):
    names = [p.name for p in PASSES]
    assert names[names.index("pointwise_merge") + 1] == "double_then_halve"
    inputs = keras.Input((16, 16, 3), batch_size=1)
    y = keras.layers.Conv2D(4, 3, padding="same", name="b")(keras.layers.Conv2D(6, 3, padding="same", name="a")(inputs))
    model = _randomize(keras.Model(inputs, keras.layers.PReLU(shared_axes=[1, 2], name="act")(y)))
    kernel = model.get_layer("a").get_weights()[0].copy()
    x = RNG.normal(0, 1, (2, 16, 16, 3)).astype(np.float32)
    for passes in (None, ["double_then_halve"]):
        rewritten = int8_friendly(model, passes=passes)
        np.testing.assert_array_equal(rewritten.get_layer("a").get_weights()[0], 2 * kernel)
        np.testing.assert_array_equal(rewritten.get_layer("b").get_weights()[0],
                                      0.5 * model.get_layer("b").get_weights()[0])
        assert isinstance(rewritten.get_layer("act"), DecomposedPReLU if passes is None else keras.layers.PReLU)
        assert _max_rel_diff(model, rewritten, x) < 1e-5
    assert _max_rel_diff(model, toy_pass(model), x) < 1e-5  # the pass alone
    np.testing.assert_array_equal(model.get_layer("a").get_weights()[0], kernel)  # the model is left as it was


def test_registering_checks_names_and_unregistering_restores_the_list():
    before = list(PASSES)
    noop = RewritePass("noop", "returns the model", lambda model, context: model)
    register_pass(noop, before="channel_shuffles")
    try:
        assert PASSES[0] is noop
        with pytest.raises(ValueError, match="'noop' is already registered"):
            register_pass(RewritePass("noop", "again", lambda model, context: model))
        with pytest.raises(ValueError, match="unknown rewrite pass 'nowhere'"):
            register_pass(RewritePass("other", "x", lambda model, context: model), after="nowhere")
    finally:
        unregister_pass("noop")
    assert PASSES == before
    with pytest.raises(ValueError, match="one non-empty line"):
        RewritePass("two_lines", "first\nsecond", lambda model, context: model)
    with pytest.raises(ValueError, match="lowercase letters"):
        RewritePass("Bad Name", "x", lambda model, context: model)
    with pytest.raises(TypeError, match="returned NoneType, not a keras.Model"):
        RewritePass("broken", "returns nothing", lambda model, context: None)(keras.Sequential())


def test_official_sinet_int8_is_one_xnnpack_partition_and_gpu_compatible(official_sinet_64):
    from ai_edge_litert.interpreter import Interpreter

    from sinet_tf.compat import interpreter_ops
    from sinet_tf.export import check_gpu_compatibility
    from sinet_tf.export.exporter import representative_dataset
    from sinet_tf.export.quantize import convert, inspect_tflite

    _, rewritten = official_sinet_64
    images = np.random.default_rng(2).uniform(0, 255, (4, 64, 64, 3)).astype(np.float32)
    data = convert(rewritten, "int8", "float32", representative_dataset(images))
    contents = inspect_tflite(data, "int8")
    assert contents.problems == []  # no float islands, no Flex/custom ops
    ops = contents.op_counts()
    assert "PRELU" not in ops and "AVERAGE_POOL_2D" not in ops and "SOFTMAX" not in ops
    # depthwise convs: the 22 of the network, 6 pools, 12 standalone BNs; PReLUs are MUL + ADD
    assert ops["DEPTHWISE_CONV_2D"] <= 40 and ops["MUL"] >= 39
    assert ops["RESHAPE"] == 4  # the first conv and the classifier on column blocks, in and out
    assert "SPACE_TO_DEPTH" not in ops
    assert ops["PAD"] == 3  # the first conv's (inside its column blocks) and the two down-samplers'
    assert check_gpu_compatibility(data).compatible
    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    names = [op["op_name"] for op in interpreter_ops(interpreter)]
    assert names.count("DELEGATE") == 1


def _tiny_int8_model():
    inputs = keras.Input((16, 16, 3), batch_size=1, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.PReLU(shared_axes=[1, 2])(_bn(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    return _randomize(keras.Model(inputs, keras.layers.Conv2D(2, 1)(x)))


def test_calibrate_then_quantize_matches_the_converter():
    """convert() calibrates and quantizes in two steps; with min/max ranges the file is
    the one TFLiteConverter.convert() writes in one."""
    import contextlib
    import io

    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from sinet_tf.export.exporter import representative_dataset
    from sinet_tf.export.frozen import frozen_graph_converter
    from sinet_tf.export.quantize import convert, inspect_tflite

    model = int8_friendly(_tiny_int8_model())
    images = np.random.default_rng(3).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    ours = convert(model, "int8", "float32", representative_dataset(images), ranges="minmax")
    converter = frozen_graph_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with contextlib.redirect_stdout(io.StringIO()):
        reference = converter.convert()
    assert inspect_tflite(ours).ops == inspect_tflite(reference).ops
    outputs = []
    for data in (ours, reference):
        it = Interpreter(model_content=data)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], images[:1])
        it.invoke()
        outputs.append(it.get_tensor(it.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_averaged_ranges_are_inside_the_min_max_ranges():
    from sinet_tf.export.exporter import representative_dataset
    from sinet_tf.export.quantize import convert

    model = int8_friendly(_tiny_int8_model())
    images = np.random.default_rng(4).uniform(0, 255, (6, 16, 16, 3)).astype(np.float32)
    scales = {}
    for ranges in ("minmax", "average"):
        from ai_edge_litert import schema_py_generated as schema

        sub = schema.ModelT.InitFromPackedBuf(convert(model, "int8", "float32", representative_dataset(images),
                                                      ranges=ranges), 0).subgraphs[0]
        scales[ranges] = {t.name: float(t.quantization.scale[0]) for t in sub.tensors
                          if t.type == schema.TensorType.INT8 and t.quantization is not None
                          and t.quantization.scale is not None and len(t.quantization.scale) == 1}
    shared = set(scales["minmax"]) & set(scales["average"])
    assert shared and all(scales["average"][n] <= scales["minmax"][n] * (1 + 1e-6) for n in shared)
    assert any(scales["average"][n] < 0.99 * scales["minmax"][n] for n in shared)
