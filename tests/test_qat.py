"""Quantization-aware fine-tuning for Keras 3 (sinet_tf/export/qat.py): a model every
post-training calibration fails passes the gate after QAT, the .tflite file computes what
the fake-quantized Keras model computes, and what QAT does not cover is refused by name."""

import json

import keras
import numpy as np
import pytest
from int8_cases import two_layer_model, write_dataset

from sinet_tf.export import export_tflite
from sinet_tf.export.calibration import Int8GateError
from sinet_tf.export.exporter import calibration_images
from sinet_tf.export.layer_error import tensors_by_layer
from sinet_tf.export.qat import QATError, QATSettings, fold_batch_norms, quantization_aware, quantization_aware_export
from sinet_tf.runtime import TFLiteRunner, make_interpreter


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Hidden tensor ``relu([(R + G) / 128, B * 100 / 255])``: the blue channel (uniform
    noise, used by nothing) fills the tensor's int8 range [0, 100] on every photo, so no
    range estimator can drop it, and its step (0.39) puts the person (R = G = 130, ch0 =
    2.03) on the level 1.96, below the float model's decision at ch0 = 2, and the
    background (75, 1.17) on 1.18: every post-training file calls every pixel background.
    Moving the classifier's decision between the two levels is what fine-tuning can learn.
    64x64 photos and "same" convs: the int8 file computes both convs on column blocks (the
    exporter's last rewrite), which QAT fine-tunes as the plain convs they compute."""
    root = tmp_path_factory.mktemp("qat")
    data = write_dataset(root / "data", 64, 16, person_level=130, background_level=75, size=64)
    return {"root": root, "data": data, "model": two_layer_model(100.0 / 255.0, gain=8.0, size=64, padding="same")}


def test_post_training_fails_the_gate_and_qat_passes_it(case):
    out = case["root"] / "model.tflite"
    common = dict(quantize="int8", calibration_data=case["data"], num_calibration=16, num_parity=16)
    with pytest.raises(Int8GateError) as refused:
        export_tflite(case["model"], out, **common)
    assert all(c["drop"] > 0.5 for c in refused.value.report["candidates"])
    assert not out.exists()
    settings = QATSettings(data=str(case["data"]), epochs=4, batch_size=8, learning_rate=0.1)
    report = export_tflite(case["model"], out, **common, qat=settings)
    info = json.loads(out.with_suffix(".json").read_text())["int8"]
    assert info["chosen"] == "qat" and info["gate"] == "passed"
    assert info["qat"]["drop"] <= 0.01 and report.parity["person_iou_tflite"] >= 0.99
    assert info["qat"]["epochs"] == 4 and len(info["qat"]["loss_by_epoch"]) == 4


def test_qat_file_computes_what_the_fake_quantized_model_computes(case):
    """Tolerance: both compute the logits on the same int8 grid (the learned ranges are
    written into the file), from a hidden tensor on the same grid and the same quantized
    kernels. TFLite's integer kernels round each requantization with a fixed-point
    multiplier where the fake quantization rounds a float product, so each op may land one
    step away: the hidden tensor by one step ``s_h``, which moves a logit by at most
    ``sum |w| s_h``, plus one step ``s_o`` of the logits themselves. The person probability
    ``sigmoid(l_1 - l_0)`` then moves by at most a quarter of twice that."""
    images, _ = calibration_images(case["data"], "train", (64, 64), 16)
    result = quantization_aware_export(case["model"], QATSettings(data=str(case["data"]), epochs=4, batch_size=8,
                                                                  learning_rate=0.1), images, "float32")
    assert {type(result.model.get_layer(n)).__name__ for n in ("features", "classifier")} == {"ColumnBlockConv2D"}
    interpreter = make_interpreter(result.data)
    scales = {d["index"]: d["quantization"][0] for d in interpreter.get_tensor_details()}
    hidden = scales[tensors_by_layer(interpreter)["features"]]  # the hidden tensor: the layer's last op's output
    out = scales[tensors_by_layer(interpreter)["classifier"]]  # the logits, before the float output
    assert hidden > 0 and out > 0
    w = result.model.get_layer("classifier").get_weights()[0]
    bound_logit = float(np.abs(w).sum(axis=(0, 1, 2)).max()) * hidden + out
    bound_probability = 2 * bound_logit / 4
    runner = TFLiteRunner(result.data)
    worst, agree = 0.0, []
    for x in images:
        lk = np.asarray(result.fake_quantized(x[None]))[0]
        lt = runner(x[None])[0]
        assert np.abs(lk - lt).max() <= bound_logit + 1e-6
        pk = 1 / (1 + np.exp(lk[..., 0] - lk[..., 1]))
        pt = 1 / (1 + np.exp(lt[..., 0] - lt[..., 1]))
        worst = max(worst, float(np.abs(pk - pt).max()))
        agree.append(float(((pk > 0.5) == (pt > 0.5)).mean()))
    assert worst <= bound_probability
    assert np.mean(agree) >= 0.999
    assert result.summary["tflite_vs_fake_quant"]["max_abs_diff_probability"] <= bound_probability


def test_uncovered_layers_and_missing_data_are_refused_by_name(case):
    inputs = keras.Input((32, 32, 3), batch_size=1, name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="logits")(x))
    with pytest.raises(QATError, match=r"does not cover layer layer_norm \(LayerNormalization\) of .*it covers "
                                       r"Activation, Add"):
        quantization_aware(fold_batch_norms(model))
    with pytest.raises(QATError, match="needs training data: give --data SRC"):
        QATSettings(data="").check()
    with pytest.raises(QATError, match="--qat-epochs 0: expected a whole number of epochs >= 1"):
        QATSettings(data=str(case["data"]), epochs=0).check()


def test_batch_norm_after_a_conv_is_folded_as_the_converter_folds_it():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(5, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(keras.layers.ReLU()(x))
    y = keras.layers.BatchNormalization(name="bn2")(y)
    model = keras.Model(inputs, y)
    rng = np.random.default_rng(0)
    for name in ("bn", "bn2"):
        layer = model.get_layer(name)
        layer.set_weights([rng.uniform(0.5, 2, (5,)), rng.normal(0, 1, (5,)), rng.normal(0, 1, (5,)),
                           rng.uniform(0.1, 3, (5,))])
    x = rng.uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    folded = fold_batch_norms(model)
    # NumPy: BN(z) = gamma (z - mean) / sqrt(var + eps) + beta on the float model's conv output
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-3)
    assert {type(layer).__name__ for layer in folded.layers} >= {"FoldedAway"}
    assert not any(type(layer) is keras.layers.BatchNormalization for layer in folded.layers)


def test_export_reads_the_recipe_of_the_run_the_model_comes_from(tmp_path):
    """``sinet export RUN/STAGE/best.keras --qat-epochs N``: loss, batch size and augmentation
    from the run's state.json (that stage), a tenth of its learning rate, its data."""
    from sinet_tf.cli import _qat_settings, build_parser

    run = tmp_path / "run"
    (run / "full").mkdir(parents=True)
    stages = [{"name": "encoder", "model": "sinet_encoder", "loss": "ce", "batch_size": 36, "learning_rate": 5e-4},
              {"name": "full", "model": "sinet", "loss": "ce + 1.0 * boundary(window=15)", "batch_size": 24,
               "learning_rate": 4e-4, "augment": {"rotation_deg": [-15, 15]}}]
    (run / "state.json").write_text(json.dumps({"config": {"data": "synthetic:64", "stages": stages}}))
    args = build_parser().parse_args(["export", str(run / "full" / "best.keras"), "-o", str(tmp_path / "x.tflite"),
                                      "--quantize", "int8", "--qat-epochs", "3"])
    settings = _qat_settings(args)
    assert (settings.data, settings.epochs, settings.loss, settings.batch_size) == \
        ("synthetic:64", 3, "ce + 1.0 * boundary(window=15)", 24)
    assert settings.learning_rate == pytest.approx(4e-5) and settings.augment == {"rotation_deg": [-15, 15]}
    assert "stage full" in settings.recipe
    args.data = "synthetic:32"  # --data wins over the recipe's
    assert _qat_settings(args).data == "synthetic:32"
