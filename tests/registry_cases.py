"""The registered models as test cases, shared by the registry-looping test modules."""

import math

import keras
import numpy as np
import pytest

import sinet_tf

MODELS = sinet_tf.list_models()
# The heavy variants (tag "large": tens of millions of parameters, or HRNet-W18/W48's
# thousands of graph ops) join the per-model checks below only with -m slow / SINET_SLOW=1:
# each costs one to four minutes of conversion and training step on CI's two cores, and a
# smaller sibling (hrnetv2_w18_small, pspnet_mobilenetv2, ...) exercises the same builder code.
def model_params(slow_tags=("large",)):
    """The registered models as parameters, those with any of ``slow_tags`` marked slow."""
    return [pytest.param(m, marks=pytest.mark.slow) if set(slow_tags) & set(sinet_tf.get_model_info(m).tags) else m
            for m in MODELS]


MODEL_PARAMS = model_params()


def small_shape(name):
    """The smallest square input of at least 64 pixels that the architecture takes."""
    multiple = sinet_tf.get_model_info(name).input_multiple
    side = multiple * math.ceil(64 / multiple)
    return (side, side, 3)


def pixels(seed, shape, batch=1):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


def small_model_fixture(params):
    """A module-scoped ``small_model`` fixture over ``params``: each model at its small input."""
    @pytest.fixture(scope="module", params=params, name="small_model")
    def fixture(request):
        keras.utils.set_random_seed(0)
        return sinet_tf.build_model(request.param, input_shape=small_shape(request.param))

    return fixture


small_model = small_model_fixture(MODEL_PARAMS)
