"""One test module over every registered model: future models join with no new test code."""

import json
import math

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.model_cost import count_params

from registry_cases import (  # noqa: F401  (small_model: a fixture)
    MODELS,
    assert_outputs_match,
    model_params,
    pixels,
    small_model,
    small_shape,
)


def test_registry_lists_the_foundation_models():
    assert {"sinet", "sinet_encoder", "extremec3net", "extremec3net_encoder"} <= set(MODELS)


def test_forward_shape_and_finite_output(small_model):
    name = small_model.name
    info = sinet_tf.get_model_info(name)
    shape = small_model.input_shape[1:]
    y = np.asarray(small_model(pixels(1, shape, batch=2), training=False))
    assert y.shape[0] == 2 and y.shape[-1] == info.num_classes
    stride = shape[0] // y.shape[1]
    assert shape[0] % y.shape[1] == 0 and stride in (1, 4, 8), f"{name}: output {y.shape}"
    assert np.isfinite(y).all()
    assert small_model.layers[1].__class__.__name__ == "InputNormalization"


def test_keras_file_round_trip_in_safe_mode(small_model, tmp_path):
    """Saved as .keras and loaded in safe mode (every layer rebuilt from its config, no
    Lambda): the same outputs and the same config (``get_config`` / ``from_config`` keep every
    builder option; compared as the file stores it, JSON, where Keras' shape tuples are lists)."""
    path = tmp_path / f"{small_model.name}.keras"
    small_model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    x = pixels(3, small_model.input_shape[1:])
    assert_outputs_match(loaded(x), small_model(x), rtol=1e-5, what=f"{small_model.name} .keras")
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    assert _as_json(loaded.get_config()) == _as_json(small_model.get_config())


def _as_json(config):
    return json.loads(json.dumps(config))


def _ellipse_batch(shape, out_hw, n=2, seed=5):
    """Photos of a bright ellipse on a dark, noisy background and the ellipse as the label
    at the output's resolution: a fixed batch a segmentation network can fit."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    images, labels = [], []
    for _ in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * (h, w)
        ry, rx = rng.uniform(0.2, 0.3, 2) * (h, w)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        images.append(np.where(inside[..., None], 200.0, 40.0) + rng.normal(0, 20, (h, w, 3)))
        oy, ox = [(np.arange(k) + 0.5) * (side / k) for k, side in zip(out_hw, (h, w))]
        labels.append((((oy[:, None] - cy) / ry) ** 2 + ((ox[None] - cx) / rx) ** 2 < 1)[..., None])
    return np.clip(images, 0, 255).astype(np.float32), np.asarray(labels, np.float32)


# The phone models (tags portrait, realtime) train here in the default suite; the general-purpose
# zoo models on mobile backbones (HRNet-W18-small, PSPNet / U-Net / DeepLabv3+ on MobileNetV2:
# 8-19 s each on CI's two cores, standard Keras layers between their builders' blocks) and the
# stage-1 encoders (every layer of which the full model also trains here) with -m slow. Their
# forward, config and file round trips above and their export stay in the default suite.
@pytest.mark.parametrize("small_model", model_params(slow_tags=("large", "stage1"),
                                                     default_tags=("portrait", "realtime")), indirect=True)
def test_training_on_a_fixed_batch_lowers_its_loss_and_moves_every_weight(small_model):
    """Two steps on one batch: the loss the optimizer reports (computed before each step)
    falls, stays finite, and every trainable tensor changed (a frozen or disconnected
    layer would not)."""
    model = keras.models.clone_model(small_model)
    model.set_weights(small_model.get_weights())
    classes = model.output_shape[-1]
    x, y = _ellipse_batch(model.input_shape[1:], model.output_shape[1:3])
    loss = (keras.losses.BinaryCrossentropy(from_logits=True) if classes == 1
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # Adam's first steps move every weight by about the learning rate whatever its gradient; on
    # the deep variants (ResNet-50/101 PSPNet: loss 0.94 -> 2.83 at 3e-4) that overshoots
    rate = 3e-5 if "large" in sinet_tf.get_model_info(small_model.name).tags else 3e-4
    # eager: the same arithmetic, without ~30 s of graph tracing per model
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, run_eagerly=True)
    before = [w.numpy().copy() for w in model.trainable_weights]
    losses = model.fit(x, y, batch_size=2, epochs=2, verbose=0, shuffle=False).history["loss"]
    print(f"{small_model.name}: loss on the fixed batch {' -> '.join(f'{v:.4f}' for v in losses)}")
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert changed == len(before), f"{len(before) - changed} trainable tensors did not move"


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(sinet_tf.UnknownModelError, match=r"did you mean 'sinet'"):
        sinet_tf.build_model("sinett")
    with pytest.raises(sinet_tf.UnknownModelError, match="extremec3net"):
        sinet_tf.build_model("extremec3")


@pytest.mark.parametrize("name,size,ok", [("sinet", 224, True), ("sinet", 200, False),
                                          ("extremec3net", 226, False), ("extremec3net", 228, True)])
def test_input_sizes_the_architecture_cannot_take_are_refused(name, size, ok):
    if ok:
        sinet_tf.build_model(name, input_shape=(size, size, 3))
    else:
        with pytest.raises(ValueError, match=rf"{size}x{size}.*multiples of"):
            sinet_tf.build_model(name, input_shape=(size, size, 3))


def test_builder_options_change_the_network():
    assert sinet_tf.build_model("sinet", num_classes=3).output_shape[-1] == 3
    deeper = count_params(sinet_tf.build_model("sinet", q=10))
    wider = count_params(sinet_tf.build_model("sinet", chnn=2))
    assert deeper > 86_910 and wider > 86_910
    assert count_params(sinet_tf.build_model("extremec3net", q=3)) < 37_738
    with pytest.raises(ValueError, match="s2_config has 1 modules"):
        sinet_tf.build_model("sinet", s2_config=[[(3, 1), (3, 1)]])


@pytest.mark.parametrize("name", MODELS)
def test_every_model_refuses_sizes_off_its_input_multiple(name):
    multiple = sinet_tf.get_model_info(name).input_multiple
    side = small_shape(name)[0]
    if multiple > 1:
        bad = side + (2 if multiple > 2 else 1)
        with pytest.raises(ValueError, match=rf"{name}: input size {bad}x{bad}.*multiples of {multiple}"):
            sinet_tf.build_model(name, input_shape=(bad, bad, 3))
    assert sinet_tf.get_model_info(name).default_input_size[0] % multiple == 0
