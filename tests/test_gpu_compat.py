"""Tests for sinet_tf.export.gpu_compat (offline TFLite GPU-delegate checker).

The main tests convert tiny Keras 3 models with the real TFLite converter and
check the verdicts; the rule unit tests at the bottom feed hand-built operator
signatures to ``check_op`` for cases a converter will not easily produce.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from ai_edge_litert import schema_py_generated as schema  # noqa: E402

from sinet_tf.export.gpu_compat import (  # noqa: E402
    GpuReport,
    OpVerdict,
    TensorSpec,
    check_gpu_compatibility,
    check_op,
)

MODULE_PATH = Path(__file__).resolve().parents[1] / "sinet_tf" / "export" / "gpu_compat.py"


# ---------------------------------------------------------------------------
# Tiny Keras models and their conversion.
# ---------------------------------------------------------------------------
def _convert(model, select_tf_ops: bool = False) -> bytes:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if select_tf_ops:
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS,
            tf.lite.OpsSet.SELECT_TF_OPS,
        ]
    return converter.convert()


def _seg_head(batch_size=1):
    """conv + BN + PReLU(shared_axes=[1,2]) + depthwise + resize + concat + softmax."""
    inp = keras.Input((16, 16, 3), batch_size=batch_size)
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.PReLU(shared_axes=[1, 2])(x)
    y = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    y = keras.layers.UpSampling2D(2, interpolation="bilinear")(y)
    x = keras.layers.Concatenate()([x, y])
    x = keras.layers.Conv2D(2, 1)(x)
    out = keras.layers.Softmax()(x)
    return inp, out


class _ArgMax(keras.layers.Layer):
    def call(self, x):
        return tf.math.argmax(x, axis=-1, output_type=tf.int32)


class _ChannelShuffle(keras.layers.Layer):
    """ShuffleNet channel shuffle through a 5-D reshape."""

    def call(self, x):
        _, h, w, c = x.shape
        x = tf.reshape(x, (1, h, w, 2, c // 2))
        x = tf.transpose(x, (0, 1, 2, 4, 3))
        return tf.reshape(x, (1, h, w, c))


class _Int64RoundTrip(keras.layers.Layer):
    def call(self, x):
        return tf.cast(tf.cast(x * 10.0, tf.int64), tf.float32)


class _BitwiseAnd(keras.layers.Layer):
    """tf.bitwise.bitwise_and has no TFLite builtin -> a Flex op."""

    def call(self, x):
        return tf.cast(tf.bitwise.bitwise_and(tf.cast(x, tf.int32), 1), tf.float32)


class _Misc(keras.layers.Layer):
    def call(self, x):
        y = tf.reduce_max(x, axis=-1, keepdims=True) + tf.reduce_sum(x, axis=-1, keepdims=True)
        y = tf.maximum(y, 0.1) - tf.minimum(y, 0.2) / (y + 1.0)
        z = tf.transpose(x, (0, 2, 1, 3))
        s1, s2 = tf.split(z, 2, axis=-1)
        gate = tf.cast(y > 0.5, tf.float32)  # comparison -> CAST to float
        return tf.concat([y[:, 1:] * gate[:, 1:], s1[:, 1:], s2[:, :-1]], axis=-1)


@pytest.fixture(scope="module")
def seg_head_tflite() -> bytes:
    inp, out = _seg_head()
    return _convert(keras.Model(inp, out))


@pytest.fixture(scope="module")
def seg_head_report(seg_head_tflite) -> GpuReport:
    return check_gpu_compatibility(seg_head_tflite)


# ---------------------------------------------------------------------------
# Real converted models.
# ---------------------------------------------------------------------------
def test_segmentation_head_is_compatible(seg_head_report):
    report = seg_head_report
    assert report.compatible, report.summary()
    assert report.graph_problems == []
    assert report.incompatible == []
    counts = report.op_counts()
    for op in ("CONV_2D", "PRELU", "DEPTHWISE_CONV_2D", "RESIZE_BILINEAR",
               "CONCATENATION", "SOFTMAX"):
        assert counts.get(op, 0) >= 1, counts
    assert all(isinstance(v, OpVerdict) and v.compatible and v.reasons == []
               for v in report.ops)
    assert "COMPATIBLE" in report.summary()
    d = report.to_dict()
    json.dumps(d)  # JSON-serialisable
    assert d["compatible"] is True and d["ops"] == []
    assert d["op_types"]["PRELU"]["compatible"] is True


def test_many_supported_op_types_are_compatible():
    inp = keras.Input((16, 16, 3), batch_size=1)
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    a = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2)(a)
    a = keras.layers.BatchNormalization()(a)
    a = keras.layers.PReLU(shared_axes=[1, 2])(a)
    b = keras.layers.AveragePooling2D(2)(a)
    b = keras.layers.MaxPooling2D(2)(b)
    b = keras.layers.Conv2DTranspose(8, 3, strides=4, padding="same")(b)
    c = keras.layers.Add()([a, b])
    c = keras.layers.Multiply()([c, a])
    c = keras.layers.Activation("sigmoid")(c)
    c = keras.layers.Activation("tanh")(c)
    c = keras.layers.Activation("hard_swish")(c)
    c = keras.layers.LeakyReLU()(c)
    c = keras.layers.ReLU(6.0)(c)
    g = keras.layers.GlobalAveragePooling2D(keepdims=True)(c)
    g = keras.layers.Dense(8)(g)  # FULLY_CONNECTED on a 1x1 tensor
    c = keras.layers.Multiply()([c, g])
    c = keras.layers.UpSampling2D(2, interpolation="bilinear")(c)
    c = keras.layers.ZeroPadding2D(1)(c)
    c = keras.layers.Cropping2D(1)(c)
    c = keras.layers.Concatenate()([c, c])
    c = keras.layers.Softmax()(c)
    out = _Misc()(c)
    report = check_gpu_compatibility(_convert(keras.Model(inp, out)))
    assert report.compatible, report.summary()
    counts = report.op_counts()
    for op in ("AVERAGE_POOL_2D", "MAX_POOL_2D", "TRANSPOSE_CONV", "HARD_SWISH",
               "MEAN", "FULLY_CONNECTED", "PAD", "STRIDED_SLICE", "TRANSPOSE",
               "SPLIT", "REDUCE_MAX", "SUM", "GREATER", "CAST"):
        assert op in counts, counts


def test_argmax_model_is_rejected_naming_arg_max():
    inp, out = _seg_head()
    report = check_gpu_compatibility(_convert(keras.Model(inp, _ArgMax()(out))))
    assert not report.compatible
    bad = report.incompatible
    assert [v.op for v in bad] == ["ARG_MAX"]
    assert bad[0].reasons == ["ARG_MAX: operation is not supported by the GPU delegate"]
    # every other op of the model is still accepted
    assert all(v.compatible for v in report.ops if v.op != "ARG_MAX")
    summary = report.summary()
    assert "INCOMPATIBLE" in summary
    assert f"op #{bad[0].index} ARG_MAX" in summary
    d = report.to_dict()
    json.dumps(d)
    assert d["compatible"] is False
    assert d["ops"][0]["op"] == "ARG_MAX"
    assert d["op_types"]["ARG_MAX"] == {"count": 1, "incompatible": 1, "compatible": False}
    assert d["op_types"]["CONV_2D"]["compatible"] is True


def test_dynamic_batch_is_a_graph_problem():
    inp, out = _seg_head(batch_size=None)
    report = check_gpu_compatibility(_convert(keras.Model(inp, out)))
    assert not report.compatible
    assert all(v.compatible for v in report.ops)  # the ops themselves are fine
    first = report.graph_problems[0]
    assert "dynamic" in first and "dimension 0" in first
    assert "shape_signature [-1, 16, 16, 3]" in first
    assert "graph:" in report.summary()


def test_five_dimensional_channel_shuffle_is_rejected():
    inp = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same")(inp)
    out = _ChannelShuffle()(x)
    report = check_gpu_compatibility(_convert(keras.Model(inp, out)))
    assert not report.compatible
    by_op = {}
    for v in report.incompatible:
        by_op.setdefault(v.op, []).append(v)
    assert set(by_op) == {"RESHAPE", "TRANSPOSE"}
    first_reshape = by_op["RESHAPE"][0]
    assert any(r.startswith("RESHAPE: output tensor")
               and "has 5 dimensions" in r and "at most 4" in r
               for r in first_reshape.reasons), first_reshape.reasons
    assert any("5 dimensions" in r for r in by_op["TRANSPOSE"][0].reasons)
    assert [v.op for v in report.ops if v.compatible] == ["CONV_2D"]


def test_int64_cast_is_rejected():
    inp = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(4, 1)(inp)
    out = _Int64RoundTrip()(x)
    report = check_gpu_compatibility(_convert(keras.Model(inp, out)))
    casts = [v for v in report.ops if v.op == "CAST"]
    assert len(casts) == 2
    assert not any(v.compatible for v in casts)
    assert any("INT64" in r and "cast" in r.lower() for r in casts[0].reasons)
    assert not report.compatible


def test_flex_op_is_rejected():
    inp = keras.Input((8, 8, 3), batch_size=1)
    out = _BitwiseAnd()(keras.layers.Conv2D(4, 1)(inp))
    report = check_gpu_compatibility(_convert(keras.Model(inp, out), select_tf_ops=True))
    flex = [v for v in report.incompatible if v.op.startswith("FLEX:")]
    assert [v.op for v in flex] == ["FLEX:BitwiseAnd"]
    assert "Flex" in flex[0].reasons[0]


def test_dense_on_spatial_tensor_is_rejected():
    # FULLY_CONNECTED on (1, H, W, C) fails in the delegate's parser
    # ("Amount of input data should match weights width").
    inp = keras.Input((16, 16, 3), batch_size=1)
    out = keras.layers.Dense(4)(inp)
    report = check_gpu_compatibility(_convert(keras.Model(inp, out)))
    fc = [v for v in report.ops if v.op == "FULLY_CONNECTED"]
    assert fc and not fc[0].compatible
    assert "weights width" in fc[0].reasons[0]


def test_path_inputs_and_file_errors(tmp_path, seg_head_tflite):
    path = tmp_path / "head.tflite"
    path.write_bytes(seg_head_tflite)
    assert check_gpu_compatibility(path).compatible
    report = check_gpu_compatibility(str(path))
    assert report.compatible and str(path) in report.summary()

    missing = tmp_path / "nope.tflite"
    with pytest.raises(FileNotFoundError, match="nope.tflite"):
        check_gpu_compatibility(missing)

    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(ValueError, match="weights.h5"):
        check_gpu_compatibility(bogus)

    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        check_gpu_compatibility(b"definitely not a model")
    with pytest.raises(ValueError, match="directory"):
        check_gpu_compatibility(tmp_path)


def test_module_does_not_import_tensorflow():
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('gpu_compat', {str(MODULE_PATH)!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "sys.modules['gpu_compat'] = mod\n"
        "spec.loader.exec_module(mod)\n"
        "assert 'tensorflow' not in sys.modules, 'gpu_compat imported tensorflow'\n"
        "assert 'keras' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------
# Rule unit tests (hand-built operator signatures).
# ---------------------------------------------------------------------------
def T(*dims, type="FLOAT32", const=False, data=None):
    return TensorSpec(dims=dims, type=type, is_const=const, data=data)


def _opts(cls, **fields):
    obj = cls()
    for k, v in fields.items():
        setattr(obj, k, v)
    return obj


def test_rule_resize_bilinear_align_corners_and_half_pixel():
    inp, size, out = T(1, 8, 8, 4), T(2, type="INT32", const=True), T(1, 16, 16, 4)
    both = _opts(schema.ResizeBilinearOptionsT, alignCorners=True, halfPixelCenters=True)
    reasons = check_op("RESIZE_BILINEAR", [inp, size], [out], both)
    assert len(reasons) == 1
    assert reasons[0].startswith("RESIZE_BILINEAR:")
    assert "align_corners" in reasons[0] and "half_pixel_centers" in reasons[0]
    for fields in ({"alignCorners": True}, {"halfPixelCenters": True}, {}):
        opts = _opts(schema.ResizeBilinearOptionsT, **fields)
        assert check_op("RESIZE_BILINEAR", [inp, size], [out], opts) == []


def test_rule_depthwise_multiplier():
    opts = _opts(schema.DepthwiseConv2DOptionsT, strideW=1, strideH=1, depthMultiplier=2)
    bias = T(8, const=True)
    bad = check_op("DEPTHWISE_CONV_2D",
                   [T(1, 8, 8, 4), T(1, 3, 3, 8, const=True), bias], [T(1, 8, 8, 8)], opts)
    assert bad and "depth_multiplier != 1 && input.c != 1" in bad[0]
    # a multiplier is fine on a single-channel input
    ok = check_op("DEPTHWISE_CONV_2D",
                  [T(1, 8, 8, 1), T(1, 3, 3, 2, const=True), T(2, const=True)],
                  [T(1, 8, 8, 2)],
                  _opts(schema.DepthwiseConv2DOptionsT, strideW=1, strideH=1, depthMultiplier=2))
    assert ok == []
    zero_stride = _opts(schema.DepthwiseConv2DOptionsT, strideW=0, strideH=1, depthMultiplier=1)
    assert "stride" in check_op("DEPTHWISE_CONV_2D",
                                [T(1, 8, 8, 4), T(1, 3, 3, 4, const=True)],
                                [T(1, 8, 8, 4)], zero_stride)[0]


def test_rule_prelu_alpha_shapes():
    x, y = T(1, 16, 16, 8), T(1, 16, 16, 8)
    for alpha_dims in ((1, 1, 8), (8,), (1, 1, 1, 8), (16, 16, 8), (1, 16, 16, 8)):
        assert check_op("PRELU", [x, T(*alpha_dims, const=True)], [y]) == [], alpha_dims
    for alpha_dims in ((1, 16, 8), (4,), (16, 1, 8)):
        reasons = check_op("PRELU", [x, T(*alpha_dims, const=True)], [y])
        assert reasons and "alpha" in reasons[0], alpha_dims
    assert "constant" in check_op("PRELU", [x, T(1, 1, 8)], [y])[0]


def test_rule_mul_and_add_broadcasting():
    # outer-product style MUL: each input is smaller in some dimension
    reasons = check_op("MUL", [T(1, 256, 1), T(1, 1, 256)], [T(1, 256, 256)],
                       schema.MulOptionsT())
    assert reasons and "not smaller" in reasons[0]
    assert check_op("MUL", [T(1, 16, 16, 8), T(1, 1, 1, 8, const=True)],
                    [T(1, 16, 16, 8)], schema.MulOptionsT()) == []
    # 3D -> 4D broadcast needs batch 1 with the runtime's standard flags
    args = ([T(2, 4, 4, 8), T(4, 4, 8)], [T(2, 4, 4, 8)], schema.AddOptionsT())
    assert check_op("ADD", *args) and "broadcast" in check_op("ADD", *args)[0]
    assert check_op("ADD", *args, enhanced_broadcast=True) == []


def test_rule_reductions_need_constant_int32_axes():
    x, out = T(1, 8, 8, 4), T(1, 1, 1, 4)
    assert check_op("MEAN", [x, T(2, type="INT32", const=True)], [out]) == []
    runtime_axes = check_op("MEAN", [x, T(2, type="INT32")], [out])
    assert runtime_axes and runtime_axes[0].startswith("MEAN:")
    for op in ("SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD"):
        assert check_op(op, [x, T(2, type="INT32", const=True)], [out]) == []
        reasons = check_op(op, [x, T(2, type="INT32")], [out])
        assert reasons and "constant axes" in " ".join(reasons), op
        reasons = check_op(op, [x, T(2, type="INT64", const=True)], [out])
        assert reasons and "int32" in reasons[0], op


def test_rule_unsupported_and_custom_ops():
    x = T(1, 8, 8, 4)
    for op in ("SHAPE", "GATHER_ND", "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND",
               "ARG_MIN", "WHILE", "REVERSE_V2"):
        assert check_op(op, [x], [T(4, type="INT32")]) == [
            f"{op}: operation is not supported by the GPU delegate"]
    assert "Flex" in check_op("FLEX:BitwiseAnd", [x], [x])[0]
    assert "not supported" in check_op("CUSTOM:MyOp", [x], [x])[0]
    assert check_op("CUSTOM:Resampler", [x, T(1, 8, 8, 2)], [x]) == []
    # Convolution2DTransposeBias stores a raw TfLiteTransposeConvParams
    weights, bias = T(4, 3, 3, 4, const=True), T(4, const=True)
    params = struct.pack("<3i", 1, 2, 2)  # padding, stride_w, stride_h
    assert check_op("CUSTOM:Convolution2DTransposeBias", [x, weights, bias],
                    [T(1, 16, 16, 4)], custom_options=params) == []
    zero = struct.pack("<3i", 1, 0, 2)
    assert "stride" in check_op("CUSTOM:Convolution2DTransposeBias", [x, weights, bias],
                                [T(1, 16, 16, 4)], custom_options=zero)[0]
    pool = struct.pack("<6i", 1, 2, 2, 2, 2, 0)
    assert check_op("CUSTOM:MaxPoolingWithArgmax2D", [x],
                    [T(1, 4, 4, 4), T(1, 4, 4, 4)], custom_options=pool) == []


def test_rule_cast_types():
    assert check_op("CAST", [T(1, 4, type="FLOAT32")], [T(1, 4, type="INT32")]) == []
    assert check_op("CAST", [T(1, 4, type="INT32")], [T(1, 4, type="FLOAT32")]) == []
    assert check_op("CAST", [T(1, 4, type="BOOL")], [T(1, 4, type="FLOAT32")]) == []
    for src, dst in (("FLOAT32", "INT64"), ("INT64", "FLOAT32"), ("INT32", "BOOL")):
        reasons = check_op("CAST", [T(1, 4, type=src)], [T(1, 4, type=dst)])
        assert reasons and reasons[0].startswith("CAST:"), (src, dst)


def test_rule_misc_options_and_tensor_rules():
    x = T(1, 8, 8, 4)
    assert "beta" in check_op("SOFTMAX", [x], [x], _opts(schema.SoftmaxOptionsT, beta=2.0))[0]
    assert check_op("SOFTMAX", [x], [x], _opts(schema.SoftmaxOptionsT, beta=1.0)) == []

    begin = T(4, type="INT32", const=True, data=[0, 0, 0, 0])
    end = T(4, type="INT32", const=True, data=[1, 8, 8, 4])
    strides = T(4, type="INT32", const=True, data=[1, 1, 1, 1])
    opts = schema.StridedSliceOptionsT()
    assert check_op("STRIDED_SLICE", [x, begin, end, strides], [x], opts) == []
    shrink = _opts(schema.StridedSliceOptionsT, shrinkAxisMask=1)
    assert "shrink_axis_mask" in check_op("STRIDED_SLICE", [x, begin, end, strides],
                                          [T(8, 8, 4)], shrink)[0]
    reverse = T(4, type="INT32", const=True, data=[1, 1, -1, 1])
    assert "reverse" in check_op("STRIDED_SLICE", [x, begin, end, reverse], [x], opts)[0]

    sign_bit = _opts(schema.Conv2DOptionsT, strideW=1, strideH=1,
                     fusedActivationFunction=schema.ActivationFunctionType.SIGN_BIT)
    reasons = check_op("CONV_2D", [x, T(4, 3, 3, 4, const=True)], [x], sign_bit)
    assert reasons and "SIGN_BIT" in reasons[0]

    pad5 = check_op("PAD", [x, T(5, 2, type="INT32", const=True)], [x])
    assert pad5 and "4x2 or 3x2" in pad5[0]
    sym = _opts(schema.MirrorPadOptionsT, mode=schema.MirrorPadMode.SYMMETRIC)
    assert "REFLECT" in check_op("MIRROR_PAD", [x, T(4, 2, type="INT32", const=True)], [x], sym)[0]

    # op-version caps of the delegate's parsers (model_builder.cc)
    shape = T(4, type="INT32", const=True)
    assert check_op("RESHAPE", [x, shape], [x], version=1) == []
    assert "version" in check_op("RESHAPE", [x, shape], [x], version=2)[0]

    # tensor rules: rank <= 4, float/quantized runtime tensors
    big = check_op("CONCATENATION", [T(1, 2, 2, 2, 2), T(1, 2, 2, 2, 2)], [T(1, 2, 2, 2, 4)],
                   schema.ConcatenationOptionsT())
    assert big and all("5 dimensions" in r for r in big) and len(big) == 3
    int_add = check_op("ADD", [T(1, 4, type="INT32"), T(1, 4, type="INT32")],
                       [T(1, 4, type="INT32")], schema.AddOptionsT())
    assert int_add and "INT32" in int_add[0]

    # two-operand elementwise ops: 2 runtime, or 1 runtime + 1 constant
    assert check_op("SUB", [x, T(4, const=True)], [x], schema.SubOptionsT()) == []
    assert "operand" in check_op("SUB", [T(4, const=True), T(4, const=True)], [x])[0]
