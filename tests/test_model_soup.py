"""Model soups in a recipe: ``seed_offset`` (a stage's own data order) and ``average_of``
(a stage whose network is the uniform average of earlier stages' best networks)."""

import json

import numpy as np
import pytest

from sinet_tf.train import load_recipe, train
from sinet_tf.train.config import RecipeError

TINY = {"model": "sinet_encoder", "model_kwargs": {"p": 1, "q": 2}, "input_size": [32, 32], "batch_size": 4,
        "lr_milestones": [], "run_eagerly": True}


def _recipe(tmp_path, stages, **top):
    path = tmp_path / "soup.yaml"
    path.write_text(json.dumps({"data": "synthetic:8", **TINY, **top, "stages": stages}))   # JSON is YAML
    return load_recipe(path)


def test_average_weights_is_the_mean_of_every_weight():
    import keras

    from sinet_tf.registry import build_model
    from sinet_tf.train.wise_ft import average_weights

    nets = []
    for seed in (1, 2, 3):
        keras.utils.set_random_seed(seed)
        net = build_model("sinet_encoder", input_shape=(32, 32, 3), p=1, q=2)
        # moving statistics too (they start at 0 / 1 in every network)
        net.set_weights([w + np.random.default_rng(seed).normal(size=w.shape).astype(w.dtype)
                         for w in net.get_weights()])
        nets.append(net)
    expected = [(a.astype(np.float64) + b + c) / 3 for a, b, c in zip(*(n.get_weights() for n in nets))]
    into = build_model("sinet_encoder", input_shape=(32, 32, 3), p=1, q=2)
    average_weights(nets, into=into)
    for got, want in zip(into.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    other = build_model("sinet_encoder", input_shape=(32, 32, 3), p=2, q=2)
    with pytest.raises(ValueError, match="averaging needs networks of the same architecture"):
        average_weights([nets[0], other])
    with pytest.raises(ValueError, match="at least two networks"):
        average_weights(nets[:1])


def _person_iou(model, dataset):
    """Mean over images of the person IoU (both empty: 1), in NumPy."""
    ious = []
    for x, y in dataset:
        pred = np.argmax(model.predict(x, verbose=0), -1) == 1
        for p, t in zip(pred, np.asarray(y).reshape(pred.shape)):
            keep = t != 255
            inter, union = np.sum(p & (t == 1) & keep), np.sum((p | (t == 1)) & keep)
            ious.append(1.0 if union == 0 else inter / union)
    return float(np.mean(ious))


@pytest.mark.filterwarnings("ignore")
def test_recipe_branches_with_their_own_seed_and_averages_them(tmp_path):
    import keras

    from sinet_tf.data.pipeline import make_pipeline
    from sinet_tf.data.sources import open_source

    from sinet_tf.registry import build_model

    start = tmp_path / "start.keras"
    build_model("sinet_encoder", input_shape=(32, 32, 3), **TINY["model_kwargs"]).save(start)
    config = _recipe(tmp_path, [
        {"name": "a", "epochs": 1, "init": str(start)},
        {"name": "b", "epochs": 1, "init": str(start), "seed_offset": 1},
        {"name": "soup", "average_of": ["a", "b"]},
    ])
    assert config.stages[-1].epochs == 1
    run = tmp_path / "run"
    lines = []
    summary = train(config, run, verbose=0, log=lines.append)
    assert [s["name"] for s in summary["stages"]] == ["a", "b", "soup"]
    a, b, soup = (keras.models.load_model(run / name / "best.keras") for name in ("a", "b", "soup"))
    # the same start and schedule, another order of the same examples: other weights
    assert any(not np.allclose(x, y) for x, y in zip(a.get_weights(), b.get_weights()))
    for got, x, y in zip(soup.get_weights(), a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(got, (x.astype(np.float64) + y) / 2, rtol=1e-6, atol=1e-6)
    (row,) = summary["stages"][-1]["history"]
    val = make_pipeline(open_source("synthetic:8", "val", seed=0), (32, 32), 4, augment=False, shuffle=False,
                        label_stride=8)
    assert row["val_person_iou"] == pytest.approx(_person_iou(soup, val), abs=1e-5)
    assert np.isfinite(row["val_loss"]) and summary["stages"][-1]["best_val_person_iou"] == row["val_person_iou"]
    assert any(line.startswith("[soup] the average of 2 networks") for line in lines)
    # run again: every stage is complete, nothing is redone
    again = []
    train(config, run, resume=True, verbose=0, log=again.append)
    assert [line for line in again if "already complete" in line] == [
        f"[{n}] already complete, skipping" for n in ("a", "b", "soup")]


@pytest.mark.parametrize("stage, message", [
    ({"average_of": ["a"]}, r"average_of: \['a'\] must name at least two different stages"),
    ({"average_of": ["a", "a"]}, "must name at least two different stages"),
    ({"average_of": ["a", "later"]}, "average_of: 'later' is not an earlier stage"),
    ({"average_of": ["a", "b"], "epochs": 3}, "epochs: an average_of stage trains nothing"),
    ({"average_of": ["a", "b"], "init": "stage:a"}, "init: an average_of stage trains nothing"),
    ({"average_of": ["a", "b"], "loss": "ce + kd(temperature=2)", "teacher": "init"},
     "teacher: an average_of stage trains nothing"),
    ({"average_of": ["a", "b"], "two_views": True}, "no teacher, two_views or aux_weight"),
    ({"average_of": ["a", "b"], "model_kwargs": {"p": 2, "q": 2}}, "averaging needs one architecture"),
    ({"average_of": "a"}, "average_of: 'a' is not a list of texts"),
    ({"average_of": ["a", "b"], "seed_offset": -1}, "seed_offset: -1 must be >= 0"),
])
def test_average_of_errors_name_the_stage_and_key(tmp_path, stage, message):
    stages = [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 1}, {"name": "soup", **stage},
              {"name": "later", "epochs": 1}]
    with pytest.raises(RecipeError, match=message) as e:
        _recipe(tmp_path, stages)
    assert "soup" in str(e.value) and "\n" not in str(e.value)
