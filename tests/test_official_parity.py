"""The Keras builders are the official networks: same parameters, same outputs."""

import keras
import numpy as np
import pytest

import sinet_tf
from sinet_tf.model_cost import count_params
from sinet_tf.weights import (
    WeightImportError,
    import_official,
    load_weights,
    read_state_dict,
)

TOL = 1e-4


@pytest.fixture(scope="module")
def sinet_official(sinet_checkpoint):
    return import_official("sinet", sinet_checkpoint)


@pytest.fixture(scope="module")
def extremec3_official(extremec3_checkpoint):
    return import_official("extremec3net", extremec3_checkpoint)


def _after_normalization(model, layer_names):
    """Sub-model from the normalized input (bypassing InputNormalization) to named layers."""
    return keras.Model(model.get_layer("normalize").output,
                       [model.get_layer(n).output for n in layer_names])


def test_parameter_counts_match_the_papers(sinet_checkpoint, extremec3_checkpoint):
    assert count_params(sinet_tf.build_model("sinet")) == 86_910
    assert count_params(sinet_tf.build_model("extremec3net")) == 37_738
    # and equal the number of trainable values in the official checkpoints
    for name, ckpt in [("sinet", sinet_checkpoint), ("extremec3net", extremec3_checkpoint)]:
        sd = read_state_dict(ckpt)
        trainable = sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var")))
        assert count_params(sinet_tf.build_model(name)) == trainable


@pytest.mark.parametrize("kind", ["real", "random"])
def test_sinet_logits_and_intermediates_match_official(sinet_official, official_outputs, kind):
    taps = {"encoder.level1": "encoder.level1.act", "encoder.level2_0": "encoder.level2_0.act",
            "encoder.BR2": "encoder.BR2.act", "encoder.BR3": "encoder.BR3.act",
            "encoder.classifier": "encoder.classifier.conv"}
    sub = _after_normalization(sinet_official, [*taps.values(), "logits"])
    outs = sub(official_outputs[f"sinet_{kind}_input"], training=False)
    for ref_key, out in zip([*taps, "output"], outs):
        ref = official_outputs[f"sinet_{kind}_{ref_key}" if ref_key != "output" else f"sinet_{kind}_output"]
        diff = np.abs(np.asarray(out) - ref).max()
        assert diff <= TOL, f"{ref_key}: max |keras - official| = {diff}"


@pytest.mark.parametrize("kind", ["real", "random"])
def test_extremec3net_logits_match_official(extremec3_official, official_outputs, kind):
    sub = _after_normalization(extremec3_official, ["logits"])
    out = np.asarray(sub(official_outputs[f"extremec3_{kind}_input"], training=False))
    assert out.shape == (1, 224, 224, 1)
    assert np.abs(out - official_outputs[f"extremec3_{kind}_output"]).max() <= TOL


@pytest.mark.parametrize("model_fixture,key", [("sinet_official", "sinet"), ("extremec3_official", "extremec3")])
def test_pixels_through_the_normalization_layer_match_official(request, official_outputs, model_fixture, key):
    """Feeding the uint8 photo as RGB through the model's own preset gives the official output."""
    model = request.getfixturevalue(model_fixture)
    rgb = official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)
    normalized = np.asarray(model.get_layer("normalize")(rgb))
    assert np.abs(normalized - official_outputs[f"{key}_real_input"]).max() <= 1e-5
    out = np.asarray(model(rgb, training=False))
    assert np.abs(out - official_outputs[f"{key}_real_output"]).max() <= TOL


def test_official_sinet_segments_the_photo(sinet_official, official_outputs):
    """Sanity on meaning, not only numbers: the person class covers a plausible part of the photo."""
    rgb = official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)
    person = np.asarray(sinet_official(rgb))[0].argmax(-1)
    assert 0.05 < person.mean() < 0.95


def test_wrong_architecture_checkpoint_names_the_tensor_and_shapes(extremec3_checkpoint):
    model = sinet_tf.build_model("sinet")
    with pytest.raises(WeightImportError) as e:
        load_weights(model, extremec3_checkpoint)
    msg = str(e.value)
    assert "encoder.level1.conv.weight" in msg and "(24, 3, 3, 3)" in msg and "(3, 3, 3, 12)" in msg


def test_checkpoint_for_a_different_width_is_refused(sinet_checkpoint):
    model = sinet_tf.build_model("sinet", chnn=2)
    with pytest.raises(WeightImportError, match=r"encoder\.level2\.0\.c1\.conv\.weight"):
        load_weights(model, sinet_checkpoint)


def test_leftover_checkpoint_tensors_are_reported_unless_not_strict(sinet_checkpoint):
    encoder = sinet_tf.build_model("sinet_encoder")
    with pytest.raises(WeightImportError, match="not used by model"):
        load_weights(encoder, sinet_checkpoint)
    load_weights(encoder, sinet_checkpoint, strict=False)  # the encoder part of the full checkpoint
    full = import_official("sinet", sinet_checkpoint)
    np.testing.assert_array_equal(encoder.get_layer("encoder.BR3.act").get_weights()[0],
                                  full.get_layer("encoder.BR3.act").get_weights()[0])


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        read_state_dict(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(WeightImportError, match="bad.npz"):
        read_state_dict(bad)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0")
    with pytest.raises(WeightImportError, match="unknown checkpoint format"):
        read_state_dict(other)


def test_pth_checkpoint_matches_npz(sinet_checkpoint):
    """The original .pth reads to the same tensors as the .npz (needs PyTorch, in the test extras)."""
    pth = sinet_checkpoint.parent / "SINet.pth"
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(WeightImportError, match="needs PyTorch"):
            read_state_dict(pth)
        pytest.skip("PyTorch is not installed: checked the clear error instead of the .pth import")
    a, b = read_state_dict(pth), read_state_dict(sinet_checkpoint)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# a second route (with -m slow): test_presets.py exports the bundled ExtremeC3Net preset, whose
# logits equal the official outputs, from the command line, which refuses a file the GPU
# delegate would not run, and compares the file with the Keras model
@pytest.mark.slow
def test_official_extremec3net_tflite_matches_and_is_gpu_compatible(extremec3_official, official_outputs, tmp_path):
    from sinet_tf.export import export_tflite
    from sinet_tf.runtime import TFLiteRunner

    report = export_tflite(extremec3_official, tmp_path / "extremec3net.tflite")
    assert report.gpu.compatible, report.gpu.summary()
    assert report.input_shape == [1, 224, 224, 3] and report.max_abs_diff_logits <= TOL
    rgb = official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)
    out = TFLiteRunner(tmp_path / "extremec3net.tflite")(rgb)
    assert np.abs(out - official_outputs["extremec3_real_output"]).max() <= TOL
    assert (tmp_path / "extremec3net.json").is_file()
