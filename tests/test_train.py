"""Recipes, the resumable trainer, and tf.distribute."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sinet_tf.loading import load_keras_model
from sinet_tf.train import RecipeError, TrainingError, load_recipe, train
from sinet_tf.train.config import RECIPE_DIR

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _recipe_params():
    """Every shipped recipe. In the default suite: SINet's two-stage recipe (an encoder stage,
    then the full network initialized from it) and the distillation fine-tune (a teacher);
    the other recipes, whose features the tests below also train (auxiliary heads, two
    views, initialization from the official weights), with -m slow: 15-50 s each on CI's two
    cores. (default.yaml's model and loss are sinet.yaml's full stage; test_reliability.py and
    test_multiworker.py train default.yaml from the command line with a smaller model.)"""
    default = ("sinet.yaml", "sinet_finetune_kd.yaml")
    return [p.name if p.name in default else pytest.param(p.name, marks=pytest.mark.slow)
            for p in sorted(RECIPE_DIR.glob("*.yaml"))]


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPE_DIR.glob("*.yaml")))
def test_every_shipped_recipe_loads_and_names_registered_models(recipe):
    """What the default suite checks of every recipe, trained or not: it loads (fields, loss
    names and schedule validated) and each stage names a registered model whose input
    multiple its input size respects."""
    import sinet_tf

    config = load_recipe(RECIPE_DIR / recipe)
    assert config.stages
    for stage in config.stages:
        multiple = sinet_tf.get_model_info(stage.model).input_multiple
        assert stage.epochs >= 1 and stage.batch_size >= 1, stage.name
        assert all(side % multiple == 0 for side in stage.input_size), (stage.name, stage.input_size, multiple)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("recipe", _recipe_params())
def test_every_shipped_recipe_trains_one_epoch_at_a_tiny_size(recipe, tmp_path):
    """Each recipe as shipped (its models and their options, losses, optimizer, schedule,
    auxiliary heads, two views, stage initialization), shrunk only in data, input size,
    batch and epochs: every stage builds its model and trains one finite epoch."""
    import math

    import sinet_tf

    config = load_recipe(RECIPE_DIR / recipe)
    assert config.stages and all(s.epochs >= 1 and s.batch_size >= 1 for s in config.stages)
    multiple = math.lcm(*(sinet_tf.get_model_info(s.model).input_multiple for s in config.stages))
    side = multiple * math.ceil(64 / multiple)
    shrink = {"data": "synthetic:4", "input_size": [side, side], "batch_size": 4, "epochs": 1, "lr_milestones": [],
              "run_eagerly": True}
    if config.extra_data:
        shrink["extra_data"] = "synthetic:4"    # still a second source after the photos
    tiny = load_recipe(RECIPE_DIR / recipe, overrides=shrink)
    assert [(s.model, s.model_kwargs, s.loss) for s in tiny.stages] == \
        [(s.model, s.model_kwargs, s.loss) for s in config.stages]
    lines = []
    summary = train(tiny, tmp_path / "run", verbose=0, log=lines.append)
    assert [st["name"] for st in summary["stages"]] == [s.name for s in config.stages]
    for st in summary["stages"]:
        (row,) = st["history"]
        assert np.isfinite(row["loss"]) and Path(st["best"]).is_file(), st["name"]
    for stage in tiny.stages:
        if str(stage.init).startswith("stage:"):   # starts from an earlier stage's best model
            run = tmp_path / "run"
            shared = _initialized_from(lines, stage.name, run / stage.init.split(":", 1)[1] / "best.keras",
                                       run / stage.name / "best.keras")
            if recipe == "sinet.yaml":   # every layer of sinet_encoder exists in sinet
                assert shared == "all", shared


def _initialized_from(lines, stage, earlier_path, later_path):
    """The stage's log says it took its weights from ``earlier_path``, one layer for each layer
    with weights that the two networks share by name; returns "all" when that is every layer
    of the earlier network that has weights."""
    import keras

    init = [line for line in lines if line.startswith(f"[{stage}] initialized")]
    assert len(init) == 1 and str(earlier_path) in init[0], init
    earlier, later = (keras.models.load_model(p) for p in (earlier_path, later_path))
    names = {layer.name for layer in later.layers}
    with_weights = [layer.name for layer in earlier.layers if layer.weights]
    shared = [n for n in with_weights if n in names]
    assert int(init[0].split()[2]) == len(shared) > 20, init[0]
    return "all" if len(shared) == len(with_weights) else f"{len(shared)} of {len(with_weights)}"


def test_sinet_recipe_is_the_papers_schedule():
    enc, full = load_recipe(RECIPE_DIR / "sinet.yaml").stages
    assert (enc.model, enc.batch_size, enc.label_stride) == ("sinet_encoder", 36, 8)
    assert "window=5" in enc.loss and "window=15" in full.loss
    assert (full.model, full.batch_size, full.init) == ("sinet", 24, "stage:encoder")
    for s in (enc, full):
        assert (s.learning_rate, s.lr_milestones, s.lr_factor, s.epochs) == (5e-4, (150, 250), 0.5, 300)
        assert s.weight_decay == 2e-4 and s.weight_decay_exclude == ("depthwise_kernel",)


def test_overrides_apply_globally_or_to_one_stage():
    config = load_recipe(RECIPE_DIR / "sinet.yaml", overrides=["epochs=3", "full.batch_size=4", "seed=7"])
    assert [s.epochs for s in config.stages] == [3, 3]
    assert [s.batch_size for s in config.stages] == [36, 4] and config.seed == 7


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown recipe key 'epochz'; did you mean 'epochs'"):
        load_recipe(_recipe(tmp_path, "model: sinet\nepochz: 3\n"))
    with pytest.raises(RecipeError, match=r"unknown key 'batchsize' in stage 'a'; did you mean 'batch_size'"):
        load_recipe(_recipe(tmp_path, "stages:\n  - name: a\n    batchsize: 3\n"))
    with pytest.raises(RecipeError, match="learnig_rate"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["learnig_rate=0.1"])


@pytest.mark.parametrize("text, message", [
    ("learning_rate: fast\n", "r.yaml: learning_rate: 'fast' is not a number"),
    ("learning_rate: -0.1\n", "r.yaml: learning_rate: -0.1 must be > 0"),
    ("learning_rate: 0\n", "r.yaml: learning_rate: 0 must be > 0"),
    ("learning_rate: .nan\n", "r.yaml: learning_rate: nan is not a finite number"),
    ("batch_size: 2.7\n", "r.yaml: batch_size: 2.7 is not a whole number"),
    ("batch_size: 0\n", "r.yaml: batch_size: 0 must be >= 1"),
    ("epochs: ten\n", "r.yaml: epochs: 'ten' is not a whole number"),
    ("epochs: true\n", "r.yaml: epochs: True is not a whole number"),
    ("input_size: 224\n", r"r.yaml: input_size: 224 is not a pair \[height, width\] \(write \[224, 224\]\)"),
    ("input_size: [224, 0]\n", r"r.yaml: input_size: \[224, 0\]: 0 must be >= 1"),
    ("input_size: [100, 100]\n", r"r.yaml: input_size: \[100, 100\] must be multiples of 32 for sinet "
                                  r"\(e.g. \[96, 96\] or \[128, 128\]\)"),
    ("model: extremec3net\ninput_size: [226, 224]\n", r"input_size: \[226, 224\] must be multiples of 4"),
    ("lr_milestones: 150\n", r"r.yaml: lr_milestones: 150 is not a list \(write \[150\]\)"),
    ("momentum: 1.5\noptimizer: sgd\n", "r.yaml: momentum: 1.5 must be < 1"),
    ("run_eagerly: sometimes\n", "r.yaml: run_eagerly: 'sometimes' is not true or false"),
    ("seed: 1.5\n", "r.yaml: seed: 1.5 is not a whole number"),
    ("on_bad_sample: ignore\n", "r.yaml: on_bad_sample: 'ignore' is not one of 'raise', 'skip'"),
    ("loss: cee\n", "r.yaml: loss: unknown loss 'cee'"),
    ("stages: 3\n", "r.yaml: stages: 3 is not a list of stage mappings"),
    ("stages:\n  - name: a\n    epochs: ten\n", "r.yaml: stage 'a': epochs: 'ten' is not a whole number"),
])
def test_recipe_values_are_typed_and_errors_name_file_key_and_value(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_recipe(tmp_path, text))


def test_recipe_numbers_the_yaml_way_and_command_line_values(tmp_path):
    # PyYAML reads 5e-4 (no dot) as text; it is still a number
    (stage,) = load_recipe(_recipe(tmp_path, "learning_rate: 5e-4\nepochs: 3.0\n")).stages
    assert stage.learning_rate == 5e-4 and stage.epochs == 3 and isinstance(stage.epochs, int)
    with pytest.raises(RecipeError, match=r"default.yaml: learning_rate: 'fast' is not a number \(set on the "
                                          r"command line\)"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["learning_rate=fast"])


def test_unknown_model_and_bad_stage_references(tmp_path):
    with pytest.raises(RecipeError, match=r"unknown model 'sinett'.*did you mean 'sinet'"):
        load_recipe(_recipe(tmp_path, "model: sinett\n"))
    with pytest.raises(RecipeError, match="not an earlier stage"):
        load_recipe(_recipe(tmp_path, "stages:\n  - name: a\n    init: 'stage:b'\n"))
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


# A narrow SINet encoder (p=1, q=2: 84 weight tensors instead of 210) keeps the eager steps of
# these trainer tests short; the trainer does not depend on the network's depth.
TINY_SINET = {"p": 1, "q": 2}


def _tiny(tmp_path, **over):
    defaults = {"data": "synthetic:8", "model": "sinet_encoder", "input_size": [64, 64], "batch_size": 4,
                "epochs": 3, "lr_milestones": [2], "run_eagerly": True}
    if "model" not in over:
        defaults["model_kwargs"] = TINY_SINET
    over = {**defaults, **over}
    return load_recipe(RECIPE_DIR / "default.yaml", overrides=over)


def test_errors_before_any_training_starts(tmp_path):
    with pytest.raises(TrainingError, match=r"batch_size 16 is larger than the training set \(8 examples"):
        train(_tiny(tmp_path, batch_size=16), tmp_path / "run1", log=lambda *a: None)
    assert not (tmp_path / "run1").exists()
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(ValueError, match="empty"):
        train(_tiny(tmp_path, data=str(empty)), tmp_path / "run2", log=lambda *a: None)
    assert not (tmp_path / "run2").exists()
    with pytest.raises(ValueError, match="unknown loss 'cee'"):
        train(_tiny(tmp_path, loss="cee"), tmp_path / "run3", log=lambda *a: None)


class _Kill(Exception):
    pass


def _after_batch(epoch, batch, action):
    """A callback that calls ``action(model)`` after batch ``batch`` of epoch ``epoch``
    (both 0-based)."""
    import keras

    class AfterBatch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch = None

        def on_epoch_begin(self, e, logs=None):
            self.epoch = e

        def on_train_batch_end(self, b, logs=None):
            if self.epoch == epoch and b == batch:
                action(self.model)

    return AfterBatch()


def _after_epoch(epoch, action):
    """A callback that calls ``action(model)`` at the end of epoch ``epoch`` (0-based), after
    the trainer's own end-of-epoch work (its callbacks come first)."""
    import keras

    class AfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, e, logs=None):
            if e == epoch:
                action(self.model)

    return AfterEpoch()


def _optimizer_variables(counts: list):
    """A callback that appends to ``counts`` how many variables the optimizer holds when
    training begins and after the first step. The trainer builds the optimizer before it
    fits: a traced first step that created them would be traced twice."""
    import keras

    class OptimizerVariables(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            counts.append(len(self.model.optimizer.variables))

        def on_train_batch_end(self, batch, logs=None):
            if len(counts) == 1:
                counts.append(len(self.model.optimizer.variables))

    return OptimizerVariables()


def _killer(epoch, batch):
    def kill(model):
        raise _Kill(f"killed in epoch {epoch + 1} after batch {batch + 1}")

    return _after_batch(epoch, batch, kill)


# The same kill and resume from the command line, in fresh processes, is test_reliability.py's
# (default suite); this in-process twin runs with -m slow.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_killed_and_resumed_run_has_the_same_history(tmp_path):
    import keras

    quiet = dict(verbose=0, log=lambda *a: None)
    full = train(_tiny(tmp_path), tmp_path / "full", **quiet)
    with pytest.raises(_Kill):
        train(_tiny(tmp_path), tmp_path / "killed", extra_callbacks=[_killer(epoch=2, batch=0)], **quiet)
    state = json.loads((tmp_path / "killed" / "state.json").read_text())
    assert state["epoch"] == 2  # epoch 3 was not committed
    keras.models.load_model(tmp_path / "killed" / "train" / "best.keras")  # never a partial file
    assert not list((tmp_path / "killed" / "train").glob(".*partial*"))
    with pytest.raises(TrainingError, match="pass --resume"):
        train(_tiny(tmp_path), tmp_path / "killed", **quiet)
    resumed = train(_tiny(tmp_path), tmp_path / "killed", resume=True, **quiet)
    a, b = full["stages"][0]["history"], resumed["stages"][0]["history"]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]
    for key in ("loss", "person_iou", "val_loss", "val_person_iou", "learning_rate"):
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=1e-5, err_msg=key)
    assert a[2]["learning_rate"] == pytest.approx(a[0]["learning_rate"] * 0.5)  # the milestone at epoch 2
    with pytest.raises(TrainingError, match="another recipe configuration"):
        train(_tiny(tmp_path, epochs=4), tmp_path / "killed", resume=True, **quiet)


@pytest.mark.filterwarnings("ignore")
def test_ema_validates_and_keeps_the_moving_average_and_resumes_exactly(tmp_path):
    """``ema: m``: best.keras holds the NumPy moving average a_1 = w_1, a_k = m a_(k-1) + (1 - m) w_k
    of the raw weights after each step; last.keras holds the raw weights, so a run resumed from
    the folder as epoch 1's commit left it equals the uninterrupted one (and a resume with
    another recipe configuration is refused)."""
    import keras

    raws = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, b, logs=None):
            raws.append({w.path: keras.ops.convert_to_numpy(w).copy() for w in self.model.trainable_weights})

    m, quiet = 0.6, dict(verbose=0, log=lambda *a: None)

    def keep_epoch_1(model):   # the run folder as a process killed after epoch 1's commit leaves it
        shutil.copytree(tmp_path / "full", tmp_path / "after_epoch_1")

    counts, counts_resumed = [], []
    full = train(_tiny(tmp_path, epochs=2, ema=m), tmp_path / "full",
                 extra_callbacks=[Record(), _after_epoch(0, keep_epoch_1), _optimizer_variables(counts)], **quiet)
    assert counts[0] > 0 and counts[0] == counts[1]    # built (slots and averages) before the first step
    stage = full["stages"][0]
    steps = len(raws) // 2
    average = dict(raws[0])
    for raw in raws[1:steps * stage["best_epoch"]]:
        average = {p: m * average[p] + (1 - m) * raw[p] for p in average}

    def trainable(name):
        model = keras.models.load_model(tmp_path / "full" / "train" / name)
        return {w.path: keras.ops.convert_to_numpy(w) for w in model.trainable_weights}

    best, last = trainable("best.keras"), trainable("last.keras")
    assert best.keys() == average.keys() == last.keys()
    end = raws[steps * stage["best_epoch"] - 1]
    assert max(float(np.abs(average[p] - end[p]).max()) for p in average) > 1e-4   # the average is not the raw
    for p in average:
        np.testing.assert_allclose(best[p], average[p], rtol=1e-4, atol=1e-6, err_msg=p)
        np.testing.assert_array_equal(last[p], raws[-1][p], err_msg=p)
    with pytest.raises(TrainingError, match="another recipe configuration"):
        train(_tiny(tmp_path, epochs=3, ema=m), tmp_path / "after_epoch_1", resume=True, **quiet)
    resumed = train(_tiny(tmp_path, epochs=2, ema=m), tmp_path / "after_epoch_1", resume=True,
                    extra_callbacks=[_optimizer_variables(counts_resumed)], **quiet)
    assert counts_resumed == counts                    # restored with the checkpoint, none created after
    for key in ("loss", "val_loss", "val_person_iou"):
        assert [r[key] for r in resumed["stages"][0]["history"]] == [r[key] for r in stage["history"]], key


def _poison(epoch):
    """A callback that puts a NaN into the first weight after the first batch of ``epoch``
    (0-based): a run that diverged."""
    def poison(model):
        w = model.weights[0]
        w.assign(np.full(w.shape, np.nan, dtype="float32"))

    return _after_batch(epoch, 0, poison)


@pytest.mark.filterwarnings("ignore")
def test_a_diverged_epoch_is_not_committed_and_no_nan_checkpoint_is_written(tmp_path):
    from sinet_tf.loading import load_keras_model
    from sinet_tf.train import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"epoch 2 diverged .*not committed, the run folder holds epoch 1"):
        train(_tiny(tmp_path), tmp_path / "run", extra_callbacks=[_poison(epoch=1)], verbose=0, log=lambda *a: None)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 1 and [r["epoch"] for r in state["history"]["train"]] == [1]
    for name in ("best.keras", "last.keras"):
        weights = load_keras_model(tmp_path / "run" / "train" / name).get_weights()
        assert all(np.isfinite(w).all() for w in weights), name
    assert sorted(p.name for p in (tmp_path / "run" / "train" / "checkpoints").iterdir()) == [
        "best-e0001.keras", "last-e0001.keras"]


def test_non_finite_weights_are_never_saved(tmp_path):
    import sinet_tf
    from sinet_tf.files import save_keras_atomic

    model = sinet_tf.build_model("sinet_encoder", input_shape=(32, 32, 3), **TINY_SINET)
    w = model.weights[3]
    w.assign(np.full(w.shape, np.inf, dtype="float32"))
    with pytest.raises(ValueError, match=f"not written: weight {w.path} .* holds NaN or inf"):
        save_keras_atomic(model, tmp_path / "m.keras")
    assert list(tmp_path.iterdir()) == []


MIRRORED_STEP = r"""
import os, json, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
import sinet_tf
from sinet_tf.losses import build_loss
from sinet_tf.metrics import PersonIoU
from sinet_tf.train.trainer import AdamL2, make_strategy
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
y = (rng.uniform(size=(4, 4, 4)) > 0.5).astype("uint8")
results = {}
for name in ("default", "mirrored"):
    strategy = make_strategy(name)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = sinet_tf.build_model("sinet_encoder", input_shape=(32, 32, 3), p=1, q=2)
        # epsilon=1: the update stays proportional to the gradient (Adam's first step with a tiny
        # epsilon is lr * sign(g), which turns float-order noise in near-zero gradients into lr)
        opt = AdamL2(learning_rate=1e-2, epsilon=1.0, l2=2e-4, l2_exclude=("depthwise_kernel",))
        model.compile(optimizer=opt, loss=build_loss("ce + 1.0 * boundary(window=5)"), metrics=[PersonIoU()],
                      run_eagerly=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    model.fit(ds, epochs=1, verbose=0)
    results[name] = (strategy.num_replicas_in_sync, [w.numpy() for w in model.weights])
n0, w0 = results["default"]
n1, w1 = results["mirrored"]
diff = max(float(np.abs(a - b).max()) for a, b in zip(w0, w1))
keras.utils.set_random_seed(0)
init = [v.numpy() for v in sinet_tf.build_model("sinet_encoder", input_shape=(32, 32, 3), p=1, q=2).weights]
moved = max(float(np.abs(a - b).max()) for a, b in zip(w0, init))
# the trainer refuses a global batch the two replicas cannot split, before it trains
from sinet_tf.train import TrainingError, load_recipe, train
config = load_recipe(sys.argv[1], overrides={"data": "synthetic:8", "model": "sinet_encoder", "batch_size": 3,
                                             "model_kwargs": {"p": 1, "q": 2}, "input_size": [32, 32],
                                             "strategy": "mirrored"})
try:
    train(config, sys.argv[2], log=lambda *a: None)
    refusal = None
except TrainingError as e:
    refusal = str(e)
print(json.dumps({"replicas": [n0, n1], "max_weight_diff": diff, "max_update": moved, "refusal": refusal}))
"""


def test_mirrored_step_equals_single_device_step(tmp_path):
    """One training step (loss, L2, synchronized BatchNorm, Adam) on two logical CPU devices
    gives the weights a single device gives; and a global batch of 3 is refused there."""
    proc = subprocess.run([sys.executable, "-c", MIRRORED_STEP, str(RECIPE_DIR / "default.yaml"),
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["replicas"] == [1, 2]
    assert result["max_update"] > 1e-3, result  # the step did move the weights
    assert result["max_weight_diff"] < 1e-3 * result["max_update"], result
    assert "batch_size 3 does not divide into 2 replicas (3 / 2 = 1.5 examples each)" in result["refusal"], result
    assert not (tmp_path / "run").exists()


def test_command_line_overrides_win_over_stage_values():
    config = load_recipe(RECIPE_DIR / "sinet_finetune.yaml", overrides=["epochs=5", "lr_milestones=[3]"])
    assert config.stages[0].epochs == 5 and config.stages[0].lr_milestones == (3,)


@pytest.mark.filterwarnings("ignore")
def test_two_view_training_runs_and_best_is_the_plain_network(tmp_path):
    import keras

    summary = train(_tiny(tmp_path, two_views=True, epochs=1, lr_milestones=[]), tmp_path / "run",
                    verbose=0, log=lambda *a: None)
    row = summary["stages"][0]["history"][0]
    assert np.isfinite(row["loss"]) and 0 <= row["val_person_iou"] <= 1
    best = keras.models.load_model(summary["stages"][0]["best"])
    assert best.name == "sinet_encoder" and len(best.inputs) == 1  # deployable, no wrapper
    last = keras.models.load_model(summary["stages"][0]["last"])
    assert last.network.name == "sinet_encoder" and last.optimizer is not None
    with pytest.raises(ValueError, match=r"a two-view stage resumes from \(sinet_encoder inside .*best\.keras"):
        load_keras_model(summary["stages"][0]["last"])


def test_two_view_loss_is_the_sum_of_its_parts():
    import tensorflow as tf

    from sinet_tf.losses import BoundaryFocalLoss, CrossEntropy, consistency_loss
    from sinet_tf.train.two_view import TwoViewLoss

    rng = np.random.default_rng(0)
    y = tf.constant((rng.uniform(size=(2, 8, 8)) > 0.5).astype("uint8"))
    z = tf.constant(rng.normal(size=(2, 8, 8, 6)).astype("float32"))  # tex(2) plain(2) edge_tex edge_plain
    loss = TwoViewLoss(CrossEntropy(), num_classes=2, has_edge=True, consistency_weight=2.0, edge_weight=0.1)
    ce, focal = CrossEntropy(), BoundaryFocalLoss()
    expected = (ce.call(y, z[..., :2]) + ce.call(y, z[..., 2:4])
                + 2.0 * consistency_loss(z[..., :2], z[..., 2:4], 1.0, per_example=True)
                + 0.1 * (focal.call(y, z[..., 4:5]) + focal.call(y, z[..., 5:6])))
    np.testing.assert_allclose(loss.call(y, z).numpy(), expected.numpy(), rtol=1e-6)
    again = TwoViewLoss.from_config(loss.get_config())
    np.testing.assert_allclose(again.call(y, z).numpy(), expected.numpy(), rtol=1e-6)


def test_lr_step_every():
    """PortraitNet's schedule (x 0.95 every 20 epochs), with a milestone at epoch 30 on top:
    the rate at each step is the base rate times 0.95 per boundary passed."""
    from sinet_tf.train.trainer import _schedule

    (stage,) = load_recipe(RECIPE_DIR / "default.yaml", overrides={
        "learning_rate": 1e-3, "lr_milestones": [30], "lr_step_every": 20, "lr_factor": 0.95, "epochs": 100}).stages
    assert stage.lr_step_every == 20
    lr = _schedule(stage, steps_per_epoch=3)
    for epoch in (0, 19, 20, 29, 30, 39, 40, 79, 80, 99):
        passed = epoch // 20 + (epoch >= 30)
        for step in (3 * epoch, 3 * epoch + 2):
            assert float(lr(step)) == pytest.approx(1e-3 * 0.95 ** passed, rel=1e-6), (epoch, step)


def test_two_view_wrapper_stacks_mask_and_edge_outputs_of_portraitnet():
    import sinet_tf
    from sinet_tf.train.two_view import TwoViewModel

    net = sinet_tf.build_model("portraitnet", input_shape=(64, 64, 3), boundary_head=True)
    model = TwoViewModel(net)
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    out = np.asarray(model({"image": x, "plain": x[:, :, ::-1].copy()}))
    assert model.num_classes == 2 and model.has_edge and out.shape == (1, 64, 64, 6)
    mask, edge = net(x)
    np.testing.assert_allclose(out[..., :2], np.asarray(mask), atol=1e-5)
    np.testing.assert_allclose(out[..., 4:5], np.asarray(edge), atol=1e-5)


def test_augmentation_spec_from_a_recipe(tmp_path):
    from sinet_tf.data.augment import PortraitNetAugmentation

    config = load_recipe(RECIPE_DIR / "default.yaml",
                         overrides=["augment={rotation_deg: [-15, 15], scale: [0.75, 1.25]}"])
    spec = config.stages[0].augment
    assert isinstance(spec, PortraitNetAugmentation)
    assert spec.rotation_deg == (-15, 15) and spec.scale == (0.75, 1.25) and spec.flip_prob == 0.5
    with pytest.raises(RecipeError, match=r"unknown augmentation parameter 'rotation'; did you mean 'rotation_deg'"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["augment={rotation: [-15, 15]}"])
    with pytest.raises(RecipeError, match="low > high"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["augment={scale: [1.5, 0.5]}"])


@pytest.mark.filterwarnings("ignore")
def test_auxiliary_head_trains_and_best_is_the_single_output_network(tmp_path):
    import keras

    from sinet_tf.train import SGDL2

    config = _tiny(tmp_path, data="synthetic:2", model="pspnet_mobilenetv2", model_kwargs={"aux_head": True},
                   aux_weight=0.4, input_size=[96, 96], batch_size=2, epochs=1, lr_milestones=[],
                   optimizer="sgd", lr_schedule="poly", learning_rate=0.01, augment=False)
    summary = train(config, tmp_path / "run", verbose=0, log=lambda *a: None)
    row = summary["stages"][0]["history"][0]
    assert np.isfinite(row["loss"]) and 0 <= row["val_person_iou"] <= 1
    best = keras.models.load_model(summary["stages"][0]["best"])
    assert best.name == "pspnet_mobilenetv2" and best.output_names == ["logits"] and len(best.outputs) == 1
    assert not any(layer.name.startswith("aux.") for layer in best.layers)
    with pytest.raises(ValueError, match=r"an auxiliary-head stage resumes from \(pspnet_mobilenetv2 inside"):
        load_keras_model(summary["stages"][0]["last"])
    last = keras.models.load_model(summary["stages"][0]["last"])
    assert last.full_network.output_names == ["logits", "aux_logits"] and isinstance(last.optimizer, SGDL2)
    for a, b in zip(best.get_layer("head.classifier").get_weights(),
                    last.full_network.get_layer("head.classifier").get_weights()):
        np.testing.assert_array_equal(a, b)   # best.keras holds the trained weights


def test_aux_loss_is_main_plus_weighted_aux():
    import tensorflow as tf

    from sinet_tf.losses import CrossEntropy
    from sinet_tf.train.aux_head import AuxLoss

    rng = np.random.default_rng(0)
    y = tf.constant((rng.uniform(size=(2, 8, 8)) > 0.5).astype("uint8"))
    z = tf.constant(rng.normal(size=(2, 8, 8, 4)).astype("float32"))   # logits(2) aux_logits(2)
    ce = CrossEntropy()
    expected = ce.call(y, z[..., :2]) + 0.4 * ce.call(y, z[..., 2:])
    loss = AuxLoss(CrossEntropy(), num_classes=2, aux_weight=0.4)
    np.testing.assert_allclose(loss.call(y, z).numpy(), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(AuxLoss.from_config(loss.get_config()).call(y, z).numpy(), expected.numpy(),
                               rtol=1e-6)


@pytest.mark.filterwarnings("ignore")
def test_aux_weight_and_aux_head_must_go_together(tmp_path):
    quiet = dict(verbose=0, log=lambda *a: None)
    with pytest.raises(TrainingError, match="aux_weight is 0.4 but sinet_encoder has no aux_logits output"):
        train(_tiny(tmp_path, aux_weight=0.4), tmp_path / "run1", **quiet)
    aux_model = dict(model="pspnet_mobilenetv2", model_kwargs={"aux_head": True}, input_size=[96, 96])
    with pytest.raises(TrainingError, match=r"auxiliary head \(aux_logits\); set aux_weight"):
        train(_tiny(tmp_path, **aux_model), tmp_path / "run2", **quiet)
    with pytest.raises(TrainingError, match="two-view training does not support one"):
        train(_tiny(tmp_path, two_views=True, aux_weight=0.4, **aux_model), tmp_path / "run3", **quiet)
    with pytest.raises(RecipeError, match="optimizer: 'rmsprop' is not one of 'adam', 'sgd'"):
        load_recipe(RECIPE_DIR / "default.yaml", overrides=["optimizer=rmsprop"])


def test_poly_schedule():
    from sinet_tf.train.trainer import _schedule

    (stage,) = load_recipe(RECIPE_DIR / "default.yaml", overrides={
        "lr_schedule": "poly", "learning_rate": 0.01, "lr_power": 0.9, "epochs": 2}).stages
    lr = _schedule(stage, steps_per_epoch=5)   # 10 steps in all
    for step in (0, 3, 9):
        assert float(lr(step)) == pytest.approx(0.01 * (1 - step / 10) ** 0.9)
