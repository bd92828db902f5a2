"""Per-part learning rates (train/param_groups.py) in the trainer's optimizers."""

import numpy as np
import pytest

from sinet_tf.train import RecipeError, load_recipe
from sinet_tf.train.config import RECIPE_DIR


def _model():
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((4,))
    y = keras.layers.Dense(3, name="head")(keras.layers.Dense(3, name="encoder.fc")(x))
    return keras.Model(x, y)


def test_sgd_step_is_scaled_per_weight():
    """One plain SGD step: w - lr * factor * (g + l2 * w), with g from NumPy."""
    from sinet_tf.train import SGDL2

    model = _model()
    x = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    t = np.zeros((8, 3), "float32")
    w0 = [np.asarray(w) for w in model.get_weights()]
    lr, l2 = 0.1, 0.01
    model.compile(optimizer=SGDL2(learning_rate=lr, momentum=0.0, l2=l2, l2_exclude=(),
                                  lr_multipliers={"encoder.": 0.25}), loss="mse")
    model.fit(x, t, batch_size=8, epochs=1, verbose=0, shuffle=False)
    # gradients of mean((x A + a) B + b)^2 / 3 at w0, by hand
    a_w, a_b, b_w, b_b = w0
    h = x @ a_w + a_b
    y = h @ b_w + b_b
    dy = 2 * y / y.size
    grads = [x.T @ (dy @ b_w.T), (dy @ b_w.T).sum(0), h.T @ dy, dy.sum(0)]
    factors = [0.25, 0.25, 1.0, 1.0]
    for w, w_start, g, f in zip(model.get_weights(), w0, grads, factors):
        np.testing.assert_allclose(w, w_start - lr * f * (g + l2 * w_start), rtol=1e-5, atol=1e-7)


def test_factor_zero_freezes_and_the_setting_round_trips():
    from sinet_tf.train import AdamL2

    model = _model()
    w0 = [np.asarray(w) for w in model.get_weights()]
    opt = AdamL2(learning_rate=0.1, l2=1e-3, lr_multipliers={"encoder.": 0.0})
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((8, 4)), np.ones((8, 3)), epochs=2, verbose=0)
    after = model.get_weights()
    for w, w_start in zip(after[:2], w0[:2]):
        np.testing.assert_array_equal(w, w_start)
    assert not np.allclose(after[2], w0[2])
    assert AdamL2.from_config(opt.get_config()).lr_multipliers == {"encoder.": 0.0}
    assert opt.unmatched() == []


def test_recipe_values_are_checked():
    config = load_recipe(RECIPE_DIR / "default.yaml", overrides=["lr_multipliers={encoder.: 0.1}"])
    assert config.stages[0].lr_multipliers == {"encoder.": 0.1}
    with pytest.raises(RecipeError, match=r"default\.yaml: stage .*lr_multipliers: the factor of 'encoder\.' must be "
                                          r"a number >= 0, got -1"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["lr_multipliers={encoder.: -1}"])
    with pytest.raises(RecipeError, match=r"default\.yaml: lr_multipliers: 0\.1 is not a mapping"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["lr_multipliers=0.1"])


@pytest.mark.filterwarnings("ignore")
def test_a_pattern_that_matches_nothing_is_an_error(tmp_path):
    from sinet_tf.train import TrainingError, train

    config = load_recipe(RECIPE_DIR / "default.yaml", overrides={
        "data": "synthetic:8", "model": "sinet_encoder", "model_kwargs": {"p": 1, "q": 2}, "input_size": [64, 64],
        "batch_size": 4, "epochs": 1, "lr_milestones": [], "run_eagerly": True, "lr_multipliers": {"decoder.": 0.1}})
    with pytest.raises(TrainingError, match=r"lr_multipliers pattern 'decoder\.' matches no trainable weight of "
                                            r"sinet_encoder"):
        train(config, tmp_path / "run", verbose=0, log=lambda *a: None)
