"""One test per private TensorFlow / Keras / LiteRT call (sinet_tf/compat.py): each checks
the call still does what the project relies on, so an upgrade of the stack fails here."""

import keras
import numpy as np
import pytest

from sinet_tf import compat


def _tiny_model():
    x = keras.Input(batch_shape=(1, 8, 8, 3), name="image")
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(x)
    b = keras.layers.Conv2D(4, 1, name="conv_b")(x)
    y = keras.layers.Add(name="add")([a, b])
    return keras.Model(x, keras.layers.ReLU(name="relu")(y))


def test_freeze_concrete_function_folds_variables():
    import tensorflow as tf

    model = _tiny_model()
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, 8, 8, 3), tf.float32))
    frozen = compat.freeze_concrete_function(concrete)
    assert not frozen.graph.variables
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(frozen(tf.constant(x))[0], model(x), atol=1e-6)


def test_converter_from_frozen_function_converts_the_graph_as_the_converter_would():
    """Handing the converter the frozen graph (no second freezing) gives the same file
    as letting it freeze the function again; a function that still reads variables is
    refused."""
    import tensorflow as tf

    model = _tiny_model()
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec((1, 8, 8, 3), tf.float32))
    frozen = compat.freeze_concrete_function(concrete)
    data = compat.converter_from_frozen_function(frozen).convert()
    assert data[4:8] == b"TFL3"
    assert data == tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert()
    with pytest.raises(ValueError, match="captures"):
        compat.converter_from_frozen_function(concrete)


def _calibrated(model, images):
    import tensorflow as tf

    from sinet_tf.export.frozen import frozen_graph_converter

    converter = frozen_graph_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([im[None]] for im in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    compat.calibrate_only(converter)
    return converter.convert()


def test_calibrate_only_then_quantize_calibrated_gives_an_int8_model():
    """Calibration alone leaves a float model carrying min/max statistics; the MLIR
    quantizer turns it into an integer model whose output tracks the float model's."""
    import tensorflow as tf
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    model = _tiny_model()
    images = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 3)).astype(np.float32)
    calibrated = _calibrated(model, images)
    m = schema.ModelT.InitFromPackedBuf(calibrated, 0)
    tensors = m.subgraphs[0].tensors
    assert all(t.type == schema.TensorType.FLOAT32 for t in tensors)
    assert any(t.quantization is not None and t.quantization.min is not None for t in tensors)

    data = compat.quantize_calibrated(calibrated, tf.int8)
    types = {t.type for t in schema.ModelT.InitFromPackedBuf(data, 0).subgraphs[0].tensors}
    assert schema.TensorType.INT8 in types
    it = Interpreter(model_content=data)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    s, z = d["quantization"]
    it.set_tensor(d["index"], np.round(images[:1] / s + z).astype(np.int8))
    it.invoke()
    so, zo = o["quantization"]
    y = (it.get_tensor(o["index"]).astype(np.float32) - zo) * so
    ref = np.asarray(model(images[:1]))
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max() + 3 * so


def test_calibrate_only_refuses_a_converter_without_the_switch():
    with pytest.raises(compat.StackChanged, match="_experimental_calibrate_only"):
        compat.calibrate_only(object())


def test_layer_input_producers_reads_the_functional_graph():
    model = _tiny_model()
    producers = compat.layer_input_producers(model)
    assert producers["conv_a"] == ["image"] and producers["conv_b"] == ["image"]
    assert producers["add"] == ["conv_a", "conv_b"]
    assert producers["relu"] == ["add"]
    assert producers["image"] == []
    assert producers["<outputs>"] == ["relu"]


def test_layer_input_producers_ignores_calls_outside_the_model():
    """A layer reused in a second model keeps this model's producers."""
    model = _tiny_model()
    x = keras.Input((8, 8, 4))
    keras.Model(x, model.get_layer("relu")(x))
    assert compat.layer_input_producers(model)["relu"] == ["add"]


def test_optimizer_variable_key_is_stable_per_variable():
    opt = keras.optimizers.Adam()
    a, b = keras.Variable(np.zeros(3), name="a"), keras.Variable(np.zeros(3), name="b")
    opt.build([a, b])
    assert compat.optimizer_variable_key(opt, a) == compat.optimizer_variable_key(opt, a)
    assert compat.optimizer_variable_key(opt, a) != compat.optimizer_variable_key(opt, b)


def test_interpreter_ops_lists_nodes_and_the_xnnpack_partition():
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from sinet_tf.export.quantize import convert

    data = convert(_tiny_model(), "none")
    plain = Interpreter(model_content=data,
                        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    plain.allocate_tensors()
    names = [o["op_name"] for o in compat.interpreter_ops(plain)]
    assert names.count("CONV_2D") == 2 and "ADD" in names
    delegated = Interpreter(model_content=data)
    delegated.allocate_tensors()
    assert [o["op_name"] for o in compat.interpreter_ops(delegated)].count("DELEGATE") == 1


def test_xla_window_gather_takes_windows_and_clamps():
    import tensorflow as tf

    flat = tf.range(10, dtype=tf.int32)
    starts = tf.constant([[[0], [3]], [[8], [9]]], tf.int32)  # [2, 2, 1]
    f = tf.function(lambda a, b: compat.xla_window_gather(a, b, window=2), jit_compile=True)
    got = f(flat, starts).numpy()
    # XLA clamps a start so that the whole window stays inside: 9 -> 8
    np.testing.assert_array_equal(got, [[[0, 1], [3, 4]], [[8, 9], [8, 9]]])


def test_multiworker_fit_patch_leaves_other_strategies_to_keras():
    """The patch itself runs under MultiWorkerMirroredStrategy with two real workers
    (tests/test_multiworker.py); here: it installs once, checks the signature it replaces,
    and a model under the default strategy still trains through Keras' own code."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    compat.multiworker_fit_builds_locally()
    patched = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    compat.multiworker_fit_builds_locally()  # idempotent
    assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is patched
    model = _tiny_model()
    model.compile("sgd", "mse")
    x = np.ones((2, 8, 8, 3), np.float32)
    history = model.fit(x, np.zeros((2, 8, 8, 4), np.float32), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
