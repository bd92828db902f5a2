"""The GPU training paths, checked for numerical sanity on the CPU: mixed precision
(``mixed_float16``: float32 logits into the loss, float32 BatchNorm statistics, loss
scaling, the boundary band's integer sums) and XLA (``jit_compile``), each against the
float32 eager computation of the same step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import sinet_tf
from sinet_tf.losses import boundary_band, build_loss
from sinet_tf.train.config import StageConfig
from sinet_tf.train.trainer import _compile


@pytest.fixture
def mixed_policy():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy(previous)


def _batch(seed=0, n=4, size=64):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, (n, size, size, 3)).astype("float32")
    y = np.zeros((n, size, size), "uint8")
    y[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1
    y[:, :2] = 255  # ignored pixels
    return x, y


def _model(seed=0, size=64):
    keras.utils.set_random_seed(seed)
    return sinet_tf.build_model("sinet", input_shape=(size, size, 3), p=1, q=2)


def _stage(size=64, **kw):
    return StageConfig(model="sinet", input_size=(size, size), epochs=1, batch_size=4, learning_rate=1e-3,
                       loss="ce + 1.0 * boundary(window=5)", weight_decay=2e-4, **kw)


def test_mixed_precision_keeps_logits_and_batchnorm_in_float32(mixed_policy):
    model = _model()
    assert model.outputs[0].dtype == "float32"  # the loss sees float32 logits
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.compute_dtype == "float16" for layer in norms)
    assert all(v.dtype == "float32" for layer in norms for v in layer.weights)  # statistics kept in float32
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert all(layer.compute_dtype == "float16" and layer.kernel.dtype == "float32" for layer in convs)


def _weights(model):
    return [np.asarray(w, np.float64) for w in model.trainable_weights]


def _delta(model, before):
    return np.concatenate([(np.asarray(w, np.float64) - b).ravel() for w, b in zip(model.trainable_weights, before)])


def test_mixed_precision_step_matches_float32(mixed_policy):
    """Training steps under mixed_float16: the optimizer is wrapped in dynamic loss scaling,
    which skips a step whose scaled gradients overflow float16 and halves the scale (the
    initial 2^15 does overflow here) until a step fits; that step points where the float32
    step from the same weights does (SGD, whose update is the gradient itself: the two differ
    by float16 rounding of the activations). Eager steps: the same arithmetic as the traced
    step, without half a minute of graph tracing per model on CI's two cores."""
    x, y = _batch()
    mixed = _compile(_model(), _stage(optimizer="sgd", run_eagerly=True), steps_per_epoch=1)
    assert isinstance(mixed.optimizer, keras.optimizers.LossScaleOptimizer)
    before = _weights(mixed)
    scales = [float(mixed.optimizer.initial_scale)]
    for _ in range(16):
        mixed.train_on_batch(x, y)
        d16 = _delta(mixed, before)
        scales.append(float(np.asarray(mixed.optimizer.dynamic_scale)))
        if np.abs(d16).max() > 0:
            break
    skipped = len(scales) - 2
    assert scales[:skipped + 1] == [2.0 ** 15 / 2 ** k for k in range(skipped + 1)], scales  # halved per overflow
    scale = scales[-1]
    keras.mixed_precision.set_global_policy("float32")
    ref = _compile(_model(), _stage(optimizer="sgd", run_eagerly=True), steps_per_epoch=1)
    ref_before = _weights(ref)
    assert all(np.array_equal(a, b) for a, b in zip(before, ref_before))  # same start
    ref.train_on_batch(x, y)
    d32 = _delta(ref, ref_before)
    assert np.isfinite(scale) and scale >= 1
    assert np.isfinite(d16).all() and np.abs(d16).max() > 0, "the scaled step overflowed and was skipped"
    assert np.corrcoef(d16, d32)[0, 1] > 0.99
    # float16 rounding of the activations moves the step by 5.5% of its norm on an AMD EPYC
    # (AVX2) host, less on Intel AVX-512 ones; a loss scale left in or divided out twice is off
    # by a factor of two or more
    assert np.linalg.norm(d16 - d32) < 0.1 * np.linalg.norm(d32)


def test_mixed_precision_loss_equals_float32_loss(mixed_policy):
    x, y = _batch(1)
    loss = build_loss("ce + 1.0 * boundary(window=5)")
    m16 = _model(3)
    l16 = float(loss(y, m16(x, training=False)))
    keras.mixed_precision.set_global_policy("float32")
    m32 = _model(3)
    l32 = float(loss(y, m32(x, training=False)))
    assert l16 == pytest.approx(l32, rel=1e-2)


def test_boundary_band_is_exact_under_mixed_precision(mixed_policy):
    """The band is integer sums over the labels (no float16 anywhere): the same pixels."""
    _, y = _batch(2)
    band16 = boundary_band(tf.constant(y), 5, 2, ignore_index=255)
    keras.mixed_precision.set_global_policy("float32")
    band32 = boundary_band(tf.constant(y), 5, 2, ignore_index=255)
    np.testing.assert_array_equal(np.asarray(band16), np.asarray(band32))
    assert np.asarray(band16).any()


def test_xla_step_equals_the_eager_step():
    """``jit_compile: true`` (what a GPU recipe uses) trains the same step as the plain
    TensorFlow ops (run eagerly: the same kernels as the untraced graph, without its tracing
    time): the updated weights agree to float32 rounding."""
    x, y = _batch(4, size=32)  # XLA compiles the whole step on the CPU: a small input keeps it quick
    results = []
    for jit in (False, True):  # SGD: an update linear in the gradient (Adam's first is lr * sign(g))
        stage = _stage(32, jit_compile=True, optimizer="sgd") if jit else _stage(32, optimizer="sgd", run_eagerly=True)
        model = _compile(_model(5, size=32), stage, steps_per_epoch=1)
        start = [np.asarray(w) for w in model.trainable_weights]
        model.train_on_batch(x, y)
        results.append((start, [np.asarray(w) for w in model.trainable_weights]))
    (s0, w0), (s1, w1) = results
    moved = max(float(np.abs(a - b).max()) for a, b in zip(w0, s0))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(w0, w1))
    assert moved > 1e-5 and diff < 1e-3 * moved, (moved, diff)
