"""Per-op profiling (sinet_tf.bench.op_profile.subgraph_model / op_profile) and the averaged int8
calibration ranges (sinet_tf.export.quantize.average_ranges), checked against the
interpreter's own intermediate tensors and NumPy statistics."""

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from sinet_tf.bench.op_profile import op_profile, subgraph_model, summarize_profile
from sinet_tf.export.quantize import convert
from sinet_tf.runtime.model_file import op_name, pack_model, parse_model


@pytest.fixture(scope="module")
def float_file():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Add()([x, keras.layers.Conv2D(8, 1)(inputs)])
    return convert(keras.Model(inputs, keras.layers.Conv2D(2, 1)(x)))


def _ops(data):
    model = parse_model(data)
    return [op_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators]


def _all_tensors(data, x):
    it = Interpreter(model_content=bytes(data), experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it


def test_a_cut_out_op_computes_what_it_computes_inside_the_model(float_file):
    ops = _ops(float_file)
    assert ops.count("CONV_2D") == 3 and "DEPTHWISE_CONV_2D" in ops
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    whole = _all_tensors(float_file, x)
    sub = schema.ModelT.InitFromPackedBuf(bytes(float_file), 0).subgraphs[0]
    for i, op in enumerate(sub.operators):
        part = Interpreter(model_content=subgraph_model(float_file, [i]))
        part.allocate_tensors()
        for d in part.get_input_details():
            original = next(t for t in op.inputs if sub.tensors[t].name.decode() == d["name"])
            part.set_tensor(d["index"], whole.get_tensor(int(original)))
        part.invoke()
        out = part.get_output_details()[0]
        np.testing.assert_allclose(part.get_tensor(out["index"]), whole.get_tensor(int(op.outputs[0])),
                                   rtol=1e-5, atol=1e-5)


def test_op_profile_has_one_timed_row_per_op_and_totals_by_type(float_file):
    rows = op_profile(float_file, runs=3, warmup=1, inner=2)
    assert [r["op"] for r in rows] == _ops(float_file)
    assert all(r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["delegated"] for r in rows)
    summary = summarize_profile(rows)
    assert sum(e["count"] for e in summary) == len(rows)
    assert sum(e["share"] for e in summary) == pytest.approx(1.0)
    assert [e["median_ms"] for e in summary] == sorted((e["median_ms"] for e in summary), reverse=True)


def test_average_ranges_are_the_mean_of_per_image_extremes(float_file):
    """The calibrated model's min/max statistics become each image's min and max averaged."""
    from sinet_tf.export.quantize import average_ranges

    images = np.random.default_rng(1).normal(0, 1, (5, 16, 16, 3)).astype(np.float32)
    images[2] *= 10  # one extreme image: min/max over all would follow it alone
    averaged = schema.ModelT.InitFromPackedBuf(average_ranges(_with_ranges(float_file), images), 0).subgraphs[0]
    sub = schema.ModelT.InitFromPackedBuf(bytes(float_file), 0).subgraphs[0]
    out_index = int(sub.operators[-1].outputs[0])
    per_image = [_all_tensors(float_file, im[None]).get_tensor(out_index) for im in images]
    q = averaged.tensors[out_index].quantization
    assert float(q.min[0]) == pytest.approx(min(np.mean([p.min() for p in per_image]), 0.0), rel=1e-5)
    assert float(q.max[0]) == pytest.approx(max(np.mean([p.max() for p in per_image]), 0.0), rel=1e-5)
    assert float(q.max[0]) < max(p.max() for p in per_image)
    inp = averaged.tensors[int(averaged.inputs[0])].quantization
    assert (float(inp.min[0]), float(inp.max[0])) == (-1.0, 1.0)  # the model input keeps its range


def _with_ranges(data):
    """``data`` with placeholder calibration statistics on every tensor (what the
    calibrate-only converter writes), the input's set to [-1, 1]."""
    model = parse_model(data)
    for t in model.subgraphs[0].tensors:
        q = t.quantization or schema.QuantizationParametersT()
        q.min, q.max = np.array([-1.0], np.float32), np.array([1.0], np.float32)
        t.quantization = q
    return pack_model(model)
