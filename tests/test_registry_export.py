"""Every registered model converts to a batch-1 ``.tflite`` in float32 and full int8, and
both files pass the GPU-delegate check: a new architecture joins with no new test code."""

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
