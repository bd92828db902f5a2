"""Every registered model converts to a batch-1 float32 ``.tflite`` that matches Keras and
passes the GPU-delegate check: a new architecture joins with no new test code (full int8:
test_registry_int8.py, a module of its own so the two spread over the test workers)."""

import numpy as np

from registry_cases import pixels, small_model  # noqa: F401  (small_model: a fixture)
from sinet_tf.export import TFLiteRunner, check_gpu_compatibility, convert_float32


def test_tflite_conversion_matches_keras_and_is_gpu_compatible(small_model):
    data = convert_float32(small_model)
    runner = TFLiteRunner(data)
    assert runner.input_shape == (1, *small_model.input_shape[1:])
    x = pixels(6, small_model.input_shape[1:])
    np.testing.assert_allclose(runner(x), np.asarray(small_model(x)), atol=1e-4)
    report = check_gpu_compatibility(data)
    assert report.compatible, report.summary()
