"""The accelerator-friendly SINet (sinet_tf.models.sinet_fast): with the official options it
is the official network (same function with the official weights), its other layers take
the official weights by name, it trains a step, and its float and int8 exports are one
XNNPACK partition the GPU-delegate check accepts, with no PRELU, MEAN or full-resolution
conv or resize."""

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.train.trainer import transfer_weights


@pytest.fixture(scope="module")
def official_64(sinet_checkpoint):
    from sinet_tf.loading import load_model

    return load_model("sinet", sinet_checkpoint, input_size=(64, 64))


def test_official_options_give_the_official_network(official_64, humanseg):
    variant = sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3), activation="prelu", squeeze_excite=True,
                                   classifier="full")
    assert transfer_weights(official_64, variant) == sum(1 for layer in official_64.layers if layer.weights)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(variant(x)), np.asarray(official_64(x)), atol=1e-5)


def test_default_variant_takes_every_official_weight_it_has(official_64):
    variant = sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3))
    with_weights = {layer.name for layer in variant.layers if layer.weights}
    official = {layer.name for layer in official_64.layers if layer.weights}
    assert with_weights - official == {"classifier.subpixel"}  # the only new layer
    assert {n for n in official - with_weights if not n.endswith((".act", ".act_conv1x1.0"))} == {
        "encoder.level2_0.conv.1.dense.0", "encoder.level2_0.conv.1.dense.1", "encoder.level3_0.conv.1.dense.0",
        "encoder.level3_0.conv.1.dense.1", "encoder.level3_0.conv.1.dense.2", "encoder.level3_0.conv.1.dense.3",
        "classifier.1"}  # squeeze-excite and the full-resolution classifier (and the PReLU slopes)
    assert transfer_weights(official_64, variant) == len(with_weights) - 1
    kinds = {type(layer).__name__ for layer in variant.layers}
    assert "PReLU" not in kinds and "GlobalAveragePooling2D" not in kinds and "ReLU" in kinds


def test_training_starts_from_the_official_checkpoint_with_only_the_new_layer_untouched(sinet_checkpoint, tmp_path):
    """``init:`` the official state_dict with ``init_strict: false`` (training/sinet_fast_kd.yaml):
    every layer the checkpoint holds gets its tensors, the sub-pixel classifier keeps its
    initialization and the log names it; strict, a partial layer or a foreign checkpoint is refused."""
    from sinet_tf.train.config import StageConfig
    from sinet_tf.train.trainer import _initialize
    from sinet_tf.weights import WeightImportError, assign_state_dict

    variant = sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3))
    before = variant.get_layer("classifier.subpixel").get_weights()[0].copy()
    logs = []
    _initialize(variant, StageConfig(name="ft", model="sinet_fast", init=str(sinet_checkpoint)), tmp_path, logs.append)
    assert logs[-1].endswith("; layers it does not hold, left as initialized: classifier.subpixel")
    np.testing.assert_array_equal(variant.get_layer("classifier.subpixel").get_weights()[0], before)
    sd = dict(np.load(sinet_checkpoint))
    np.testing.assert_array_equal(variant.get_layer("encoder.level1.conv").get_weights()[0],  # OIHW -> HWIO
                                  sd["encoder.level1.conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variant.get_layer("encoder.BR3.bn").moving_variance, sd["encoder.BR3.bn.running_var"])

    strict = StageConfig(name="ft", model="sinet_fast", init=str(sinet_checkpoint), init_strict=True)
    with pytest.raises(WeightImportError, match="'classifier.subpixel.weight' needed by layer 'classifier.subpixel'"):
        _initialize(variant, strict, tmp_path, logs.append)
    partial = {k: v for k, v in sd.items() if k != "encoder.BR3.bn.running_var"}
    with pytest.raises(WeightImportError, match="'encoder.BR3.bn.running_var' needed by layer 'encoder.BR3.bn'"):
        assign_state_dict(variant, partial, strict=False, allow_missing=True)
    with pytest.raises(WeightImportError, match="no tensor of the checkpoint fits a layer of model 'sinet_fast'"):
        assign_state_dict(variant, {"backbone.conv1.weight": np.zeros((8, 3, 3, 3))}, strict=False,
                          allow_missing=True)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="activation 'gelu'; choose one of relu, relu6, prelu"):
        sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3), activation="gelu")
    with pytest.raises(ValueError, match="classifier 'quarter'; choose one of subpixel, half, full"):
        sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3), classifier="quarter")


def test_one_training_step_with_distillation_targets_moves_the_weights(official_64):
    variant = sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3))
    transfer_weights(official_64, variant)
    x = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    teacher = np.asarray(official_64(x))  # soft targets: the official network's probabilities
    target = keras.ops.softmax(teacher, axis=-1)
    before = [w.copy() for w in variant.get_weights()]
    variant.compile(optimizer=keras.optimizers.Adam(1e-3),
                    loss=keras.losses.CategoricalCrossentropy(from_logits=True), run_eagerly=True)
    loss = variant.train_on_batch(x, target)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, variant.get_weights()))


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_exports_are_one_partition_without_slow_ops_and_gpu_compatible(official_64, tmp_path, quantize):
    from sinet_tf.compat import interpreter_ops
    from sinet_tf.export import export_tflite
    from sinet_tf.export.quantize import inspect_tflite
    from sinet_tf.runtime.interpreter import make_interpreter

    variant = sinet_tf.build_model("sinet_fast", input_shape=(64, 64, 3))
    transfer_weights(official_64, variant)
    out = tmp_path / f"fast_{quantize}.tflite"
    # int8: one calibration and no gate, since this test is about the graph's ops (the calibration
    # search and the gate are test_int8_calibration.py's)
    int8 = dict(calibration_data="synthetic:4", int8_ranges="minmax+equalize", allow_drop=True)
    report = export_tflite(variant, out, quantize=quantize, calibration_split=None, num_calibration=4, num_parity=2,
                           **(int8 if quantize == "int8" else {}))
    data = out.read_bytes()
    assert inspect_tflite(data, quantize).problems == []
    ops = report.ops
    assert not {"PRELU", "MEAN", "RELU", "SPACE_TO_DEPTH"} & set(ops) and ops["DEPTH_TO_SPACE"] == 1
    assert ops["RESIZE_BILINEAR"] == 8  # the S2 blocks' 6 and the decoder's 2; none at full resolution
    from sinet_tf.runtime.model_file import op_name, parse_model

    flat = parse_model(data)
    sub = flat.subgraphs[0]
    # the ten grouped 1x1 convs stay grouped (channel_shuffles: the shuffle's ReLUs are per channel)
    assert sum(op_name(flat, op.opcodeIndex) == "CONV_2D"
               and 2 * sub.tensors[op.inputs[1]].shape[-1] == sub.tensors[op.inputs[0]].shape[-1]
               for op in sub.operators) == 10
    assert report.gpu.compatible, report.gpu.summary()
    if quantize == "none":
        assert report.parity["max_abs_diff_output"] < 1e-3
    names = [op["op_name"] for op in interpreter_ops(make_interpreter(data, threads=1))]
    assert names.count("DELEGATE") == 1  # XNNPACK runs all of it as one partition
