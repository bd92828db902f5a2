"""The registered models as test cases, shared by the registry-looping test modules, and the
helpers every parity check uses: BatchNorm statistics from data and a comparison whose
tolerance follows the output's scale."""

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
def model_params(slow_tags=("large",), default_tags=None, default_models=None):
    """The registered models as parameters, those with any of ``slow_tags`` marked slow, with
    ``default_tags`` also those that have none of them, and with ``default_models`` (names)
    every model not named there."""
    def slow(m):
        if default_models is not None:
            return m not in default_models
        tags = set(sinet_tf.get_model_info(m).tags)
        return bool(set(slow_tags) & tags) or (default_tags is not None and not set(default_tags) & tags)

    return [pytest.param(m, marks=pytest.mark.slow) if slow(m) else m for m in MODELS]


MODEL_PARAMS = model_params()


def small_shape(name):
    """The smallest square input of at least 64 pixels that the architecture takes."""
    multiple = sinet_tf.get_model_info(name).input_multiple
    side = multiple * math.ceil(64 / multiple)
    return (side, side, 3)


def pixels(seed, shape, batch=1):
    return np.random.default_rng(seed).uniform(0, 255, (batch, *shape)).astype(np.float32)


def batchnorm_from_data(model, images):
    """Set every BatchNormalization's moving statistics to the batch statistics of ``images``
    (one training-mode pass with momentum 0; dropout off for it, so the pass is
    deterministic), as a trained network's are. A randomly initialized network's
    activations otherwise shrink layer after layer: the untrained zoo models output 1e-7
    to 1e-15 at the test inputs, where any output, zeros included, passes an absolute
    tolerance. Returns ``model``."""
    from sinet_tf.model_cost import iter_layers

    layers = list(iter_layers(model))
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    drops = [layer for layer in layers if isinstance(layer, keras.layers.Dropout)]
    momenta, rates = [layer.momentum for layer in norms], [layer.rate for layer in drops]
    for layer in norms:
        layer.momentum = 0.0
    for layer in drops:
        layer.rate = 0.0
    model(images, training=True)
    for layer, m in zip(norms, momenta):
        layer.momentum = m
    for layer, r in zip(drops, rates):
        layer.rate = r
    return model


# An output whose largest magnitude is below this is "about zero": a parity check on it
# compares nothing (a converter that returned zeros would pass).
MIN_OUTPUT_SCALE = 1e-3


# The deep variants (tag "large": ResNet-50/101, Xception-65, HRNet-W48 backbones) with random
# weights and BatchNorm statistics from data are chaotic: half a grey level of input noise
# leaves DeepLabv3+ Xception's output uncorrelated with the clean one (correlation 0.07;
# MobileNetV2's 0.60), so the float32 rounding differences between XNNPACK's and TensorFlow's
# kernels grow with depth too: measured 1e-4 to 6e-4 of the output's scale on them, against
# 1e-6 to 3e-5 on the others. Their parity tolerance is 1e-3 of the scale, still far below
# what a broken conversion gives (about 1: see benchmarks/results/test_mutation.md).
DEEP_PARITY_RTOL = 1e-3


def parity_rtol(name, rtol=1e-4):
    """``rtol`` for a float32 parity check of model ``name``; :data:`DEEP_PARITY_RTOL` for
    the chaotic deep variants (comment above)."""
    return max(rtol, DEEP_PARITY_RTOL) if "large" in sinet_tf.get_model_info(name).tags else rtol


def noise_stability(model, x, sigma=0.5, seed=1):
    """Correlation of ``model``'s float output on ``x`` with its output on ``x`` plus Gaussian
    noise of ``sigma`` grey levels: about 1 for a network that maps nearby inputs to nearby
    outputs, about 0 for a chaotic one (int8's rounding then decorrelates its output too)."""
    noisy = x + np.random.default_rng(seed).normal(0, sigma, x.shape).astype(np.float32)
    clean, moved = (np.asarray(model(v, training=False)).ravel() for v in (x, noisy))
    return float(np.corrcoef(clean, moved)[0, 1])


def assert_outputs_match(actual, reference, rtol=1e-4, what="output"):
    """``actual`` equals ``reference`` within ``rtol`` times the reference's largest
    magnitude, and that magnitude is not about zero (at least :data:`MIN_OUTPUT_SCALE`), so
    an all-zero or constant ``actual`` cannot pass. Float32 conversions and save/load
    round trips differ from Keras by about 1e-6 of the scale."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    scale = float(np.abs(reference).max())
    assert np.isfinite(reference).all() and scale >= MIN_OUTPUT_SCALE, (
        f"{what}: the reference output is about zero (max |y| = {scale:.3g}); the comparison would test nothing")
    err = float(np.abs(actual - reference).max())
    print(f"{what}: max |y| {scale:.4g}, max |error| {err:.3g} ({err / scale:.2e} of the scale)")
    assert err <= rtol * scale, f"{what}: max |error| {err:.3g} > {rtol:g} x max |y| ({scale:.4g})"


def small_model_fixture(params, calibrate=True):
    """A module-scoped ``small_model`` fixture over ``params``: each model at its small input,
    its BatchNorm statistics set from four random photos (:func:`batchnorm_from_data`) unless
    ``calibrate`` is false."""
    @pytest.fixture(scope="module", params=params, name="small_model")
    def fixture(request):
        keras.utils.set_random_seed(0)
        model = sinet_tf.build_model(request.param, input_shape=small_shape(request.param))
        if calibrate:
            batchnorm_from_data(model, pixels(100, model.input_shape[1:], batch=4))
        return model

    return fixture


small_model = small_model_fixture(MODEL_PARAMS)


def randomize_weights(model, rng):
    """Random weights in every layer of ``model`` (drawn from ``rng``), with BatchNorm
    statistics of both signs and PReLU slopes in [-0.5, 1.5] (slopes > 1 and < 0 need the
    signed forms of the rewrites), so an equivalence test exercises every case. Returns
    ``model``."""
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            c = weights[0].shape
            layer.set_weights([rng.normal(0, 1, c), rng.normal(0, 0.5, c), rng.normal(0, 0.5, c),
                               rng.uniform(0.2, 2.0, c)])
        elif isinstance(layer, keras.layers.PReLU):
            layer.set_weights([rng.uniform(-0.5, 1.5, weights[0].shape)])
        elif weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in weights])
    return model
