"""Every registered model converts to a batch-1 float32 ``.tflite`` that matches Keras and
passes the GPU-delegate check: a new architecture joins with no new test code (full int8:
test_registry_int8.py, a module of its own so the two spread over the test workers).

SINet and ExtremeC3Net are converted with their official weights and compared with the
official outputs by test_cli.py and test_official_parity.py, so they are not repeated here
with random ones; the stage-1 encoders (tag ``stage1``) join with -m slow."""

import numpy as np

from sinet_tf.export import check_gpu_compatibility, convert_float32
from sinet_tf.runtime import TFLiteRunner

from registry_cases import model_params, pixels, small_model_fixture

small_model = small_model_fixture([p for p in model_params(slow_tags=("large", "stage1"))
                                   if p not in ("sinet", "extremec3net")])


def test_tflite_conversion_matches_keras_and_is_gpu_compatible(small_model):
    data = convert_float32(small_model)
    runner = TFLiteRunner(data)
    assert runner.input_shape == (1, *small_model.input_shape[1:])
    x = pixels(6, small_model.input_shape[1:])
    np.testing.assert_allclose(runner(x), np.asarray(small_model(x)), atol=1e-4)
    report = check_gpu_compatibility(data)
    assert report.compatible, report.summary()
