"""The frozen-graph conversion route gives what ``TFLiteConverter.from_keras_model`` gives."""

import keras
import numpy as np
import tensorflow as tf

import sinet_tf
from sinet_tf.export.quantize import convert, inspect_tflite
from sinet_tf.runtime import TFLiteRunner


def test_frozen_graph_conversion_equals_the_keras_route():
    keras.utils.set_random_seed(0)
    model = sinet_tf.build_model("sinet", input_shape=(32, 32, 3), batch_size=1, p=1, q=2)  # every op type, fewer blocks
    reference = tf.lite.TFLiteConverter.from_keras_model(model)
    reference.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    expected = reference.convert()
    ours = convert(model, "none")
    assert inspect_tflite(ours).op_counts() == inspect_tflite(expected).op_counts()  # the same ops
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(TFLiteRunner(ours)(x), TFLiteRunner(expected)(x), rtol=0, atol=1e-6)
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=ours).get_signature_runner("serving_default")
    out = runner(image=x)
    np.testing.assert_allclose(next(iter(out.values())), TFLiteRunner(expected)(x), atol=1e-6)
