"""Distillation from a teacher (train/distill.py, the kd loss) and WiSE-FT (train/wise_ft.py)."""

import textwrap

import numpy as np
import pytest

from sinet_tf.train import RecipeError, load_recipe, train
from sinet_tf.train.config import RECIPE_DIR

H = W = 16


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_kd(zt, zs, t):
    """Hinton et al. 2015: T^2 * KL(softmax(zt/T) || softmax(zs/T)), mean over pixels, per example."""
    if zt.shape[-1] == 1:
        zt = np.concatenate([np.zeros_like(zt), zt], -1)
    if zs.shape[-1] == 1:
        zs = np.concatenate([np.zeros_like(zs), zs], -1)
    lq, lp = _np_log_softmax(zt.astype(np.float64) / t), _np_log_softmax(zs.astype(np.float64) / t)
    return t * t * (np.exp(lq) * (lq - lp)).sum(-1).mean(axis=(1, 2))


@pytest.mark.parametrize("teacher_c, student_c, t", [(2, 2, 1.0), (2, 2, 3.0), (1, 2, 2.0), (2, 1, 2.0), (1, 1, 1.5),
                                                     (4, 4, 2.0)])
def test_kd_loss_is_the_numpy_formula(teacher_c, student_c, t):
    from sinet_tf.losses import KnowledgeDistillation, build_loss

    rng = np.random.default_rng(teacher_c * 10 + student_c)
    zt = rng.normal(0, 3, (3, 5, 7, teacher_c)).astype("float32")
    zs = rng.normal(0, 3, (3, 5, 7, student_c)).astype("float32")
    loss = build_loss(f"kd(temperature={t})")
    assert isinstance(loss, KnowledgeDistillation)
    np.testing.assert_allclose(loss.call(zt, zs).numpy(), _np_kd(zt, zs, t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss(zt, zs)), _np_kd(zt, zs, t).mean(), rtol=1e-5)
    if teacher_c == student_c:
        assert float(loss(zs, zs)) == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_refuses_other_classes_and_sizes():
    from sinet_tf.losses import build_loss

    kd = build_loss("kd")
    with pytest.raises(ValueError, match="teacher has 3 output channels and the student 2"):
        kd.call(np.zeros((1, 4, 4, 3), "float32"), np.zeros((1, 4, 4, 2), "float32"))
    with pytest.raises(ValueError, match=r"teacher's logits are \(8, 8\) but the student's are \(4, 4\)"):
        kd.call(np.zeros((1, 8, 8, 2), "float32"), np.zeros((1, 4, 4, 2), "float32"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        build_loss("kd(temperature=0)")


def _net(seed, classes=2, size=(H, W), softmax=False, name=None, hidden=True):
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((*size, 3))
    y = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    if hidden:
        y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(y)
    y = keras.layers.Conv2D(classes, 1 if hidden else 3, padding="same",
                            kernel_initializer=keras.initializers.RandomNormal(stddev=1.5 if hidden else 0.5))(y)
    if softmax:
        y = keras.layers.Softmax()(y) if classes > 1 else keras.layers.Activation("sigmoid")(y)
    return keras.Model(x, y, name=name or f"net{seed}")


def _softmax(z):
    return np.exp(_np_log_softmax(np.asarray(z, np.float64)))


def test_student_matches_its_teacher_after_kd_only_training():
    import keras

    from sinet_tf.losses import build_loss
    from sinet_tf.train.distill import DistillLoss, DistillModel

    # the student can represent the teacher exactly (a 3x3 convolution each), from another start
    teacher, student = _net(1, hidden=False), _net(2, hidden=False)
    teacher.trainable = False
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (256, H, W, 3)).astype("float32")
    held_out = rng.uniform(0, 255, (16, H, W, 3)).astype("float32")
    labels = np.zeros((256, H, W), "uint8")   # kd-only: the labels are never read
    gap_before = np.abs(_softmax(student(held_out)) - _softmax(teacher(held_out)))[..., 1].mean()

    model = DistillModel(student, teacher)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=DistillLoss(build_loss("kd(temperature=1)"), 2))
    model.fit(x, labels, batch_size=32, epochs=20, verbose=0, shuffle=False)

    p_student, p_teacher = _softmax(student(held_out))[..., 1], _softmax(teacher(held_out))[..., 1]
    gap = np.abs(p_student - p_teacher)
    assert gap_before > 0.15
    assert gap.max() < 0.005


def test_kd_terms_read_the_teacher_and_other_terms_the_labels():
    from sinet_tf.losses import CrossEntropy, KnowledgeDistillation, build_loss
    from sinet_tf.train.distill import DistillLoss

    rng = np.random.default_rng(3)
    y = (rng.uniform(size=(2, 6, 6)) > 0.5).astype("uint8")
    z = rng.normal(size=(2, 6, 6, 4)).astype("float32")   # network (2) | teacher (2)
    loss = DistillLoss(build_loss("ce + 0.5 * kd(temperature=2)"), num_classes=2)
    expected = CrossEntropy().call(y, z[..., :2]).numpy() + 0.5 * _np_kd(z[..., 2:], z[..., :2], 2.0)
    np.testing.assert_allclose(loss.call(y, z).numpy(), expected, rtol=1e-5)
    again = DistillLoss.from_config(loss.get_config())
    np.testing.assert_allclose(again.call(y, z).numpy(), expected, rtol=1e-5)
    assert isinstance(DistillLoss(KnowledgeDistillation(), 2).loss, KnowledgeDistillation)


def test_teacher_of_another_class_count_is_a_clear_error():
    from sinet_tf.train.distill import DistillationError, DistillModel

    with pytest.raises(DistillationError, match="3 output channels, the network 2; teacher and network must "
                                                "predict the same classes"):
        DistillModel(_net(2), _net(1, classes=3))
    # one sigmoid channel is background/person too
    model = DistillModel(_net(2), _net(1, classes=1))
    assert model(np.zeros((1, H, W, 3), "float32")).shape == (1, H, W, 3)


def test_teacher_of_another_input_size_is_an_error_unless_resized():
    import tensorflow as tf

    from sinet_tf.train.distill import DistillationError, DistillModel

    teacher = _net(1, size=(2 * H, 2 * W))
    with pytest.raises(DistillationError, match=r"input \(32, 32\) and output \(32, 32\), the network's input "
                                                r"\(16, 16\).*teacher_resize: true"):
        DistillModel(_net(2), teacher)
    model = DistillModel(_net(2), teacher, resize=True)
    x = np.random.default_rng(1).uniform(0, 255, (2, H, W, 3)).astype("float32")
    expected = tf.image.resize(teacher(tf.image.resize(x, (2 * H, 2 * W))), (H, W)).numpy()
    np.testing.assert_allclose(np.asarray(model(x))[..., 2:], expected, rtol=1e-5, atol=1e-5)


def _to_tflite(model, path):
    import tensorflow as tf

    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("classes", [2, 1])
def test_tflite_teacher_gives_the_keras_models_logits(tmp_path, classes):
    """A .tflite teacher with a probability head gives back the logits of the Keras network
    it was converted from (log p, or log(p / (1 - p)) for one sigmoid channel), every call
    the same, and its runs inside a model call."""
    from sinet_tf.train.distill import DistillModel, TFLiteTeacher

    logits_net = _net(5, classes=classes)
    probs_net = _net(5, classes=classes, softmax=True)
    probs_net.set_weights(logits_net.get_weights())
    teacher = TFLiteTeacher(_to_tflite(probs_net, tmp_path / "teacher.tflite"))
    assert teacher.kind == "probabilities" and teacher.input_range == (0.0, 255.0)
    x = np.random.default_rng(2).uniform(0, 255, (3, H, W, 3)).astype("float32")
    z = raw = np.asarray(teacher(x))
    expected = np.asarray(logits_net(x))
    if classes == 2:   # softmax logits are defined up to a constant per pixel
        z, expected = z - z[..., :1], expected - expected[..., :1]
    np.testing.assert_allclose(z, expected, atol=2e-3)
    np.testing.assert_array_equal(np.asarray(teacher(x)), raw)   # the same photos, the same outputs
    model = DistillModel(_net(6, classes=2), teacher)
    out = np.asarray(model(x))
    np.testing.assert_array_equal(out[..., 2:], raw)


def test_tflite_teacher_input_range_and_size_errors(tmp_path):
    from sinet_tf.train.distill import DistillationError, DistillModel, TFLiteTeacher

    net = _net(5)
    path = _to_tflite(net, tmp_path / "t.tflite")
    x = np.random.default_rng(2).uniform(0, 255, (1, H, W, 3)).astype("float32")
    scaled = TFLiteTeacher(path, input_range=(0, 1))   # it is fed x / 255
    np.testing.assert_allclose(np.asarray(scaled(x)), np.asarray(net(x / 255.0)), atol=1e-4)
    with pytest.raises(DistillationError, match=r"teacher .*t\.tflite: input \(16, 16\).*network's input \(32, 32\)"):
        DistillModel(_net(2, size=(2 * H, 2 * W)), TFLiteTeacher(path))


def _recipe(tmp_path, **stage):
    lines = "\n".join(f"    {k}: {v}" for k, v in stage.items())
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent("""\
        data: synthetic:8
        stages:
          - name: s
            model: sinet_encoder
        """) + lines + "\n")
    return path


def test_recipe_errors_name_the_stage_and_the_problem(tmp_path):
    with pytest.raises(RecipeError, match=r"r\.yaml: stage 's': teacher 'init' is set but the loss 'ce' has no kd term"):
        load_recipe(_recipe(tmp_path, teacher="init", loss="ce"))
    with pytest.raises(RecipeError, match=r"stage 's': the loss 'ce \+ kd' has a kd term but no teacher is set"):
        load_recipe(_recipe(tmp_path, loss="'ce + kd'"))
    with pytest.raises(RecipeError, match=r"stage 's': the loss 'ce \+ KD' has a kd term but no teacher is set"):
        load_recipe(_recipe(tmp_path, loss="'ce + KD'"))   # loss names are case-insensitive
    with pytest.raises(RecipeError, match=r"stage 's': teacher file not found: nope\.keras"):
        load_recipe(_recipe(tmp_path, loss="'ce + kd'", teacher="nope.keras"))
    with pytest.raises(RecipeError, match=r"r\.yaml: stage .s.: teacher_input_range: \[1\] is not a pair \[low, high\]"):
        load_recipe(_recipe(tmp_path, loss="'ce + kd'", teacher="init", teacher_input_range="[1]"))
    with pytest.raises(RecipeError, match=r"unknown key 'teacher_resise'.*did you mean 'teacher_resize'"):
        load_recipe(_recipe(tmp_path, loss="'ce + kd'", teacher="init", teacher_resise="true"))
    config = load_recipe(_recipe(tmp_path, loss="'ce + 0.5 * kd(temperature=2)'", teacher="init"))
    assert config.stages[0].teacher == "init"


def test_an_architecture_name_is_not_a_teacher():
    from sinet_tf.train.distill import DistillationError, load_teacher

    with pytest.raises(DistillationError, match="teacher 'sinet' is an architecture without weights"):
        load_teacher("sinet", _net(2))
    with pytest.raises(DistillationError, match="teacher 'no_such_preset': not 'init', a .keras or .tflite file, "
                                                "or a preset name"):
        load_teacher("no_such_preset", _net(2))


@pytest.mark.filterwarnings("ignore")
def test_trainer_distills_from_a_keras_teacher_and_saves_the_plain_network(tmp_path, capsys):
    import keras

    from sinet_tf.cli import main
    from sinet_tf.registry import build_model

    teacher_path = tmp_path / "teacher.keras"
    build_model("sinet_encoder", input_shape=(64, 64, 3), p=1, q=2).save(teacher_path)
    config = load_recipe(RECIPE_DIR / "default.yaml", overrides={
        "data": "synthetic:8", "model": "sinet_encoder", "model_kwargs": {"p": 1, "q": 2}, "input_size": [64, 64],
        "batch_size": 4, "epochs": 1, "lr_milestones": [], "run_eagerly": True,
        "loss": "ce + 1.0 * kd(temperature=2)", "teacher": str(teacher_path)})
    summary = train(config, tmp_path / "run", verbose=0, log=lambda *a: None)
    row = summary["stages"][0]["history"][0]
    assert np.isfinite(row["loss"]) and 0 <= row["val_person_iou"] <= 1
    best = keras.models.load_model(summary["stages"][0]["best"])
    assert best.name == "sinet_encoder" and len(best.inputs) == 1   # the network, no teacher inside
    last = keras.models.load_model(summary["stages"][0]["last"])   # what --resume reads
    assert last.network.name == "sinet_encoder" and not last.teacher.trainable
    for a, b in zip(last.teacher.get_weights(), keras.models.load_model(teacher_path).get_weights()):
        np.testing.assert_array_equal(a, b)   # the teacher did not train
    # last.keras handed to a command that takes a network: one line that points at best.keras
    # (not the wrapper's concatenated student + teacher logits, nor Keras' quoted model config)
    code = main(["evaluate", summary["stages"][0]["last"], "--data", "synthetic:4"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and len(err) < 400, err
    assert "a distillation stage resumes from (sinet_encoder inside" in err and "use best.keras" in err


def test_wise_ft_interpolates_every_weight():
    from sinet_tf.train.wise_ft import interpolate_weights

    a, b = _net(1), _net(2)
    wa, wb = a.get_weights(), b.get_weights()
    out = interpolate_weights(a, b, 0.3, into=_net(3))
    for w, x, y in zip(out.get_weights(), wa, wb):
        np.testing.assert_allclose(w, 0.7 * x + 0.3 * y, rtol=1e-6)
    with pytest.raises(ValueError, match="alpha must be in"):
        interpolate_weights(a, b, 1.5)
    with pytest.raises(ValueError, match="same architecture"):
        interpolate_weights(a, _net(4, classes=3), 0.5)


def test_batchnorm_reestimation_is_the_average_of_batch_statistics():
    import keras

    from sinet_tf.train.wise_ft import reestimate_batchnorm

    x = keras.Input((4, 4, 3))
    model = keras.Model(x, keras.layers.BatchNormalization(momentum=0.9, name="bn")(x))
    rng = np.random.default_rng(0)
    batches = [rng.normal(k, 1 + k, (5, 4, 4, 3)).astype("float32") for k in range(3)]
    assert reestimate_batchnorm(model, batches) == 3
    bn = model.get_layer("bn")
    mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    var = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), var, rtol=1e-4)
    assert bn.momentum == 0.9
