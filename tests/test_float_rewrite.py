"""The rewrite passes of float exports and the column-block convolution
(sinet_tf.export.rewrite, sinet_tf.export.passes.column_blocks): the block kernel against a
NumPy convolution, every float pass (alone and all in order) against the unrewritten
graph on random and real photos, the fp32 export against the official PyTorch logits, and
the pass lists per export mode."""

import keras
import numpy as np
import pytest

from sinet_tf.export.passes.column_blocks import BLOCK_WIDTHS, ColumnBlockConv2D, column_block_kernel
from sinet_tf.export.passes.graph import FoldedAway
from sinet_tf.export.passes.implicit_padding import paddings_into_convs, same_kernel_size
from sinet_tf.export.rewrite import (PASSES, REWRITE_MODES, OffsetConv2D, RewriteContext, RewritePass,
                                     float_friendly, int8_friendly, passes_for, rewrite_for_export, rewrite_mode)
from sinet_tf.layers.normalization import InputNormalization

from registry_cases import randomize_weights

RNG = np.random.default_rng(3)
FLOAT_PASSES = ["channel_shuffles", "batch_norms", "pointwise_merge", "concat_activations", "column_blocks"]


def _conv_numpy(x, kernel, bias, stride, pad):
    """Direct convolution (cross-correlation) of ``x`` [H, W, C] with symmetric zero padding."""
    k = kernel.shape[0]
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    ho, wo = (xp.shape[0] - k) // stride + 1, (xp.shape[1] - k) // stride + 1
    out = np.zeros((ho, wo, kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            window = xp[i * stride:i * stride + k, j * stride:j * stride + k]
            out[i, j] = np.einsum("abc,abco->o", window, kernel)
    return out + bias


def _same_conv_numpy(x, kernel, strides):
    """TensorFlow's "same" convolution in NumPy, from its definition: ``ceil(n / s)``
    outputs per axis, ``max((out - 1) s + k - n, 0)`` zeros, the smaller half before."""
    pads = []
    for a in (0, 1):
        n, k, s = x.shape[a], kernel.shape[a], strides[a]
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, (*pads, (0, 0)))
    ho, wo = -(-x.shape[0] // strides[0]), -(-x.shape[1] // strides[1])
    out = np.zeros((ho, wo, kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            window = xp[i * strides[0]:i * strides[0] + kernel.shape[0], j * strides[1]:j * strides[1] + kernel.shape[1]]
            out[i, j] = np.einsum("abc,abco->o", window, kernel)
    return out


def _padded_valid_conv_numpy(x, kernel, strides, pads):
    """A valid convolution of ``x`` zero-padded by ``pads`` ((top, bottom), (left, right))."""
    xp = np.pad(x, (*pads, (0, 0)))
    k0, k1 = kernel.shape[:2]
    ho, wo = (xp.shape[0] - k0) // strides[0] + 1, (xp.shape[1] - k1) // strides[1] + 1
    out = np.zeros((ho, wo, kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            window = xp[i * strides[0]:i * strides[0] + k0, j * strides[1]:j * strides[1] + k1]
            out[i, j] = np.einsum("abc,abco->o", window, kernel)
    return out


@pytest.mark.parametrize("n", [7, 8, 9, 10, 16, 17])
@pytest.mark.parametrize("k,s,before,after", [(3, 2, 1, 1), (3, 1, 1, 1), (5, 2, 2, 2), (5, 1, 2, 2), (3, 2, 1, 0),
                                              (3, 1, 2, 0), (1, 2, 0, 0), (3, 2, 0, 1), (3, 2, 2, 2)])
def test_same_kernel_size_reproduces_the_padded_valid_conv(n, k, s, before, after):
    """Where :func:`same_kernel_size` finds a size, the "same" conv with zero taps appended
    equals the valid conv of the padded input (NumPy, both from their definitions); where
    it finds none, no size up to k + 2s does."""
    x = RNG.normal(0, 1, (n, 5, 2))
    kernel = RNG.normal(0, 1, (k, 1, 2, 3))
    expected = _padded_valid_conv_numpy(x, kernel, (s, 1), ((before, after), (0, 0)))
    k2 = same_kernel_size(n, before, after, k, s)

    def same_with(size):
        grown = np.zeros((size, 1, 2, 3))
        grown[:k] = kernel
        got = _same_conv_numpy(x, grown, (s, 1))
        return got.shape == expected.shape and np.allclose(got, expected, atol=1e-9)

    if k2 is None:
        assert not any(same_with(size) for size in range(k, k + 2 * s + 1))
    else:
        assert k2 >= k and same_with(k2)
        assert not any(same_with(size) for size in range(k, k2))  # the smallest that works
    if (before, after, k) == (1, 1, 3) and s == 2:  # SINet's down-samplers: 4 taps on even sizes, 3 on odd
        assert k2 == (4 if n % 2 == 0 else 3)


@pytest.mark.parametrize("depthwise", [False, True])
def test_paddings_become_the_convs_own_padding(depthwise):
    """PyTorch-padded stride-2 3x3 convs on even and odd sizes (the kernel grows to 4 taps
    on even axes) and a stride-1 one: no ZeroPadding2D left, the same outputs."""
    inputs = keras.Input((32, 31, 4), batch_size=1)

    def conv(name, strides):
        if depthwise:
            return keras.layers.DepthwiseConv2D(3, strides=strides, name=name)
        return keras.layers.Conv2D(6 if name == "a" else 4, 3, strides=strides, name=name)

    x = conv("a", 2)(keras.layers.ZeroPadding2D(1, name="pad_a")(inputs))          # 32 x 31 -> 16 x 16
    x = conv("b", 1)(keras.layers.ZeroPadding2D(1, name="pad_b")(x))
    x = conv("c", 2)(keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pad_c")(x))  # 16 x 16 -> 8 x 8
    kept = keras.layers.ZeroPadding2D(((3, 0), (0, 0)), name="pad_kept")(x)         # no "same" form: stays
    model = _randomize(keras.Model(inputs, conv("d", 1)(kept)))
    rewritten = paddings_into_convs(model)
    for name, size in (("a", (4, 3)), ("b", (3, 3)), ("c", (4, 4))):
        layer = rewritten.get_layer(name)
        assert layer.padding == "same" and tuple(layer.kernel_size) == size, name
        assert isinstance(rewritten.get_layer(f"pad_{name}"), FoldedAway)
    assert type(rewritten.get_layer("pad_kept")) is keras.layers.ZeroPadding2D
    x = RNG.normal(0, 1, (2, 32, 31, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(rewritten(x)), np.asarray(model(x)), atol=1e-5 * np.abs(model(x)).max())


def _block_conv_numpy(x, block_kernel, block_bias, stride, block, rows):
    """What ColumnBlockConv2D computes, in NumPy: reshape, pad, valid conv, reshape."""
    h, w, c = x.shape
    k, kw = block_kernel.shape[:2]
    left = 1 if k // 2 else 0
    right = kw - 1 - left
    y = x.reshape(h, w // block, block * c)
    y = np.pad(y, (rows, (left, right), (0, 0)))
    ho, wo = (y.shape[0] - k) // stride + 1, y.shape[1] - kw + 1
    out = np.zeros((ho, wo, block_kernel.shape[-1]))
    for i in range(ho):
        for j in range(wo):
            out[i, j] = np.einsum("abc,abco->o", y[i * stride:i * stride + k, j:j + kw], block_kernel)
    return (out + block_bias).reshape(ho, w // stride, -1)


@pytest.mark.parametrize("k,stride,block", [(1, 1, 8), (3, 1, 4), (3, 1, 16), (5, 1, 8), (3, 2, 4), (5, 2, 4),
                                            (3, 2, 8)])
def test_column_block_kernel_is_the_same_convolution(k, stride, block):
    x = RNG.normal(0, 1, (12, 32, 3))
    kernel, bias = RNG.normal(0, 1, (k, k, 3, 2)), RNG.normal(0, 1, 2)
    expected = _conv_numpy(x, kernel, bias, stride, k // 2)
    block_kernel, block_bias = column_block_kernel(kernel, bias, stride, block)
    got = _block_conv_numpy(x, block_kernel.astype(np.float64), block_bias, stride, block, (k // 2, k // 2))
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _randomize(model):
    return randomize_weights(model, RNG)


def _max_rel_diff(a, b, x):
    ya, yb = np.asarray(a(x)), np.asarray(b(x))
    return float(np.abs(ya - yb).max() / max(np.abs(ya).max(), 1e-6))


@pytest.mark.parametrize("mode", ["float", "int8"])
def test_few_channel_convs_run_on_column_blocks(mode):
    """The classifier-like conv (stride 1, "same") in both modes; the PyTorch-padded stride-2
    first conv in int8 (in float XNNPACK runs it faster as it is)."""
    inputs = keras.Input((64, 128, 3), batch_size=1)
    first = keras.layers.Conv2D(8, 3, strides=2, name="first")(keras.layers.ZeroPadding2D(1, name="pad")(inputs))
    up = keras.layers.UpSampling2D(2, interpolation="bilinear")(keras.layers.Conv2D(2, 1)(first))
    model = _randomize(keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same", name="classifier")(up)))
    rewritten = float_friendly(model) if mode == "float" else int8_friendly(model)
    classifier = rewritten.get_layer("classifier")
    assert isinstance(classifier, ColumnBlockConv2D) and classifier.block == BLOCK_WIDTHS[(mode, 1)]
    first = rewritten.get_layer("first")
    assert isinstance(first, ColumnBlockConv2D) == (mode == "int8")
    x = RNG.uniform(0, 255, (2, 64, 128, 3)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5


def test_first_conv_with_folded_normalization_runs_on_column_blocks_with_its_border():
    inputs = keras.Input((64, 64, 3), batch_size=1)
    x = keras.layers.ZeroPadding2D(1)(InputNormalization("official_sinet", name="normalize")(inputs))
    x = keras.layers.Conv2D(12, 3, strides=2, use_bias=False, name="first")(x)
    model = _randomize(keras.Model(inputs, keras.layers.PReLU(shared_axes=[1, 2])(x)))
    rewritten = int8_friendly(model, passes=["input_normalization", "column_blocks"])
    first = rewritten.get_layer("first")
    assert isinstance(first, ColumnBlockConv2D) and first.with_offset and first.strides == 2
    x = RNG.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    ya, yb = np.asarray(model(x)), np.asarray(rewritten(x))
    np.testing.assert_allclose(yb, ya, atol=1e-4 * np.abs(ya).max())
    np.testing.assert_allclose(yb[:, 0], ya[:, 0], atol=1e-4 * np.abs(ya).max())  # the padded border row
    np.testing.assert_allclose(yb[:, :, 0], ya[:, :, 0], atol=1e-4 * np.abs(ya).max())  # and column


def test_convs_the_pass_leaves_alone():
    inputs = keras.Input((64, 60, 2), batch_size=1)  # width not a multiple of the block
    y = keras.layers.Conv2D(2, 3, padding="same", name="odd_width")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same", name="wide")(y)           # 8 inputs next: too many
    y = keras.layers.Conv2D(2, 3, padding="same", dilation_rate=2, name="dilated")(y)
    wide_out = keras.Input((64, 64, 2), batch_size=1)  # sinet_fast's sub-pixel classifier: 8 outputs at stride 1
    subpixel = keras.layers.Conv2D(8, 3, padding="same", name="subpixel")(wide_out)
    for model in (_randomize(keras.Model(inputs, y)), _randomize(keras.Model(wide_out, subpixel))):
        for mode in REWRITE_MODES:
            rewritten = float_friendly(model) if mode == "float" else int8_friendly(model, passes=["column_blocks"])
            assert not any(isinstance(layer, ColumnBlockConv2D) for layer in rewritten.layers)


@pytest.mark.parametrize("mode", ["float", "int8"])
def test_relu_after_a_concat_of_conv_outputs_is_fused_into_the_convs(mode):
    inputs = keras.Input((16, 16, 4), batch_size=1)
    a = keras.layers.BatchNormalization(name="a_bn")(keras.layers.Conv2D(3, 3, padding="same", name="a")(inputs))
    b = keras.layers.DepthwiseConv2D(3, padding="same", name="b")(inputs)
    y = keras.layers.ReLU(name="act")(keras.layers.Concatenate()([a, b]))
    up = keras.layers.UpSampling2D(1)(keras.layers.Conv2D(3, 1, name="c")(y))   # a part that is not a conv output
    z = keras.layers.ReLU(max_value=6.0, name="act6")(keras.layers.Concatenate()([up, keras.layers.Conv2D(2, 1)(y)]))
    model = _randomize(keras.Model(inputs, z))
    rewritten = float_friendly(model) if mode == "float" else int8_friendly(model)
    assert type(rewritten.get_layer("act")).__name__ == "FoldedAway"
    assert rewritten.get_layer("a").activation is keras.activations.relu
    assert rewritten.get_layer("b").activation is keras.activations.relu
    assert type(rewritten.get_layer("a_bn")).__name__ == "FoldedAway"  # folded into "a" first
    assert isinstance(rewritten.get_layer("act6"), keras.layers.ReLU)  # left: one part is an upsampling
    x = RNG.normal(0, 1, (2, 16, 16, 4)).astype(np.float32)
    assert _max_rel_diff(model, rewritten, x) < 1e-5


def test_pass_lists_per_export_mode():
    assert passes_for("float") == FLOAT_PASSES
    assert passes_for("int8") == ["channel_shuffles", "input_normalization", "batch_norms", "pointwise_merge",
                                  "concat_activations", "prelu", "average_pools", "equalize", "column_blocks"]
    assert [rewrite_mode(q) for q in ("none", "fp16", "dynamic", "int8")] == ["float", "float", "float", "int8"]
    assert all(set(p.modes) <= set(REWRITE_MODES) for p in PASSES)
    with pytest.raises(ValueError, match="unknown rewrite mode 'fp16'"):
        passes_for("fp16")
    with pytest.raises(ValueError, match="unknown mode 'int4'"):
        RewritePass("x", "a pass", lambda model, context: model, modes=("int4",))
    assert RewritePass("x", "a pass", lambda model, context: model, modes="float").modes == ("float",)
    assert RewriteContext().mode == "int8"


@pytest.fixture(scope="module")
def official_sinet_64(sinet_checkpoint):
    from sinet_tf.export.heads import with_output_head
    from sinet_tf.export.tflite import with_fixed_batch
    from sinet_tf.loading import load_model

    return with_output_head(with_fixed_batch(load_model("sinet", sinet_checkpoint, input_size=(64, 64)), 1), "mask")


def _real_photos(humanseg, size, n=2):
    from sinet_tf.data.sources import open_source
    from sinet_tf.inference import resize_to_input

    source = open_source(str(humanseg), "val", seed=0, size=(size, size))
    return np.stack([resize_to_input(source.read(i)[0], (size, size)) for i in range(n)]).astype(np.float32)


@pytest.mark.parametrize("name", FLOAT_PASSES + ["implicit_padding", "all"])
def test_each_float_pass_keeps_the_function_on_random_and_real_photos(official_sinet_64, humanseg, name):
    model = official_sinet_64
    rewritten = float_friendly(model, passes=None if name == "all" else [name])
    kinds = {type(layer).__name__ for layer in rewritten.layers}
    if name in ("column_blocks", "all"):
        assert isinstance(rewritten.get_layer("classifier.1"), ColumnBlockConv2D)
    if name in ("channel_shuffles", "all"):  # grouped 1x1 convs stay grouped (no dense block-diagonal kernel)
        squeeze = rewritten.get_layer("encoder.level3.1.c1.conv")
        assert type(squeeze) is keras.layers.Conv2D and squeeze.groups == 2
    if name in ("batch_norms", "all"):
        assert "ChannelAffine" in kinds and "AffineThenResize" in kinds
    if name in ("pointwise_merge", "all"):
        assert type(rewritten.get_layer("head_difference")).__name__ == "FoldedAway"
    if name == "implicit_padding":  # the first conv (even size: 4 x 4 taps) and the two down-samplers
        assert [n for n in ("encoder.level1.conv", "encoder.level2_0.conv.0", "encoder.level3_0.conv.0")
                if rewritten.get_layer(n).padding == "same"] == ["encoder.level1.conv", "encoder.level2_0.conv.0",
                                                                 "encoder.level3_0.conv.0"]
        assert tuple(rewritten.get_layer("encoder.level1.conv").kernel_size) == (4, 4)
    assert "PReLU" in kinds and "DecomposedPReLU" not in kinds  # float keeps PRELU as one op
    assert not isinstance(rewritten.get_layer("encoder.level1.conv"), OffsetConv2D)
    random = np.random.default_rng(5).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    for x in (random, _real_photos(humanseg, 64)):
        assert _max_rel_diff(model, rewritten, x) < 1e-5


def test_fp32_export_matches_the_official_logits_and_the_gpu_rules(sinet_checkpoint, official_outputs, tmp_path):
    from sinet_tf.export import check_gpu_compatibility, export_tflite
    from sinet_tf.runtime.interpreter import TFLiteRunner
    from sinet_tf.runtime.model_file import read_contents

    report = export_tflite("sinet", tmp_path / "sinet.tflite", weights=sinet_checkpoint)
    data = (tmp_path / "sinet.tflite").read_bytes()
    ops = read_contents(data).op_counts()
    # the float passes ran: the 20 standalone BNs (MUL + ADD each) are folded or one op; the
    # classifier runs on column blocks (two RESHAPEs); PRELU stays one op; the ten grouped
    # 1x1 convs stay grouped (a kernel of c_in / 2 input channels)
    assert ops["MUL"] == 3 and ops["ADD"] == 9 and ops["RESHAPE"] == 2 and ops["PRELU"] == 39
    from sinet_tf.runtime.model_file import op_name, parse_model

    flat = parse_model(data)
    sub = flat.subgraphs[0]
    assert sum(op_name(flat, op.opcodeIndex) == "CONV_2D"
               and 2 * sub.tensors[op.inputs[1]].shape[-1] == sub.tensors[op.inputs[0]].shape[-1]
               for op in sub.operators) == 10
    assert ops["PAD"] == 3  # implicit_padding is asked for by name only (XNNPACK fuses these PADs itself)
    assert report.gpu.compatible and check_gpu_compatibility(data).compatible
    from sinet_tf.layers.normalization_presets import get_preset

    preset = get_preset("official_sinet")  # the official random input is normalized BGR: back to RGB pixels
    random_bgr = official_outputs["sinet_random_input"] / np.asarray(preset.scale) + np.asarray(preset.mean)
    runner = TFLiteRunner(data)
    for kind, rgb in (("real", official_outputs["image_bgr_uint8_224"][..., ::-1]), ("random", random_bgr[..., ::-1])):
        out = runner(np.ascontiguousarray(rgb, np.float32))
        assert np.abs(out - official_outputs[f"sinet_{kind}_output"]).max() <= 1e-4, kind


def test_rewrite_for_export_picks_the_mode_list(official_sinet_64):
    model = official_sinet_64
    fp16 = rewrite_for_export(model, "fp16")
    int8 = rewrite_for_export(model, "int8")
    assert type(fp16.get_layer("encoder.level1.act")) is keras.layers.PReLU
    assert type(int8.get_layer("encoder.level1.act")).__name__ == "DecomposedPReLU"
