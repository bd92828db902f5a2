"""`sinet export --temporal ema / --refine guided`: the two-input file reproduces `sinet
predict`'s smoothing frame by frame, the refined file equals a NumPy guided filter of the
Keras probability, both pass the GPU-delegate rules, and misuse gets clear errors."""

import json

import numpy as np
import pytest

from sinet_tf.cli import main

SIZE = (96, 96)
STRENGTH = 0.6


@pytest.fixture(scope="module")
def keras96(tmp_path_factory, sinet_checkpoint):
    from sinet_tf.loading import load_model

    path = tmp_path_factory.mktemp("k") / "sinet96.keras"
    load_model("sinet", sinet_checkpoint, input_size=SIZE).save(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, keras96):
    out = tmp_path_factory.mktemp("x")
    files = {}
    for name, flags in (("temporal", ["--temporal", "ema", "--temporal-strength", str(STRENGTH)]),
                        ("refine", ["--refine", "guided", "--refine-radius", "2", "--refine-eps", "0.002"])):
        path = out / f"{name}.tflite"
        assert main(["export", str(keras96), "-o", str(path), "--head", "mask", *flags]) == 0
        files[name] = path
    return files


def _frames(humanseg, n=6):
    from sinet_tf.data.readers import load_dataset
    from sinet_tf.postprocess.stability import photo_to_video

    image, labels = load_dataset(humanseg, split="val").read(3)
    return photo_to_video(image, labels, n, seed=0).frames


def test_two_input_model_equals_predicts_smoothing(exported, keras96, humanseg):
    from sinet_tf.inference import Segmenter
    from sinet_tf.postprocess import NO_HISTORY, TemporalSmoother, model_frame
    from sinet_tf.runtime.interpreter import make_interpreter

    report = json.loads(exported["temporal"].with_suffix(".json").read_text())
    assert [i["shape"] for i in report["inputs"]] in ([[1, 96, 96, 3], [1, 96, 96, 1]], [[1, 96, 96, 1], [1, 96, 96, 3]])
    assert report["gpu_delegate"]["compatible"] and report["postprocess"]["temporal"]["strength"] == STRENGTH
    segmenter = Segmenter(keras96, keep_aspect=True)
    smoother = TemporalSmoother("ema", STRENGTH)   # what sinet predict --temporal ema runs
    interpreter = make_interpreter(exported["temporal"])
    image_in, prev_in = sorted(interpreter.get_input_details(), key=lambda d: -int(d["shape"][-1]))
    out_index = interpreter.get_output_details()[0]["index"]
    previous = np.full((1, *SIZE, 1), NO_HISTORY, np.float32)
    changed = 0.0
    for k, frame in enumerate(_frames(humanseg)):
        mf = model_frame(segmenter, frame)
        want = smoother(mf.prob, mf.model_input)
        interpreter.set_tensor(image_in["index"], mf.model_input[None])
        interpreter.set_tensor(prev_in["index"], previous)
        interpreter.invoke()
        previous = interpreter.get_tensor(out_index).copy()
        np.testing.assert_allclose(previous[0, ..., 0], want, atol=2e-4, err_msg=f"frame {k}")
        if k == 0:
            np.testing.assert_allclose(previous[0, ..., 0], mf.prob, atol=2e-4)  # NO_HISTORY: the frame itself
        changed = max(changed, float(np.abs(want - mf.prob).max()))
    assert changed > 0.05, "the smoothing should have changed some frame"


def test_refined_export_equals_a_numpy_guided_filter(exported, keras96, humanseg):
    from sinet_tf.inference import Segmenter, resize_to_input
    from sinet_tf.postprocess import guided_filter
    from sinet_tf.postprocess.refine import luma
    from sinet_tf.runtime.model_file import output_kind

    report = json.loads(exported["refine"].with_suffix(".json").read_text())
    assert report["gpu_delegate"]["compatible"] and report["ops"].get("AVERAGE_POOL_2D", 0) >= 6
    assert report["postprocess"]["refine"] == {"mode": "guided", "radius": 2, "eps": 0.002, "subsample": 2}
    assert output_kind(exported["refine"].read_bytes()) == "probabilities"
    keras_seg, lite_seg = Segmenter(keras96), Segmenter(exported["refine"])
    for frame in _frames(humanseg, 2):
        x = resize_to_input(frame, SIZE)
        prob = 1.0 / (1.0 + np.exp(-np.diff(keras_seg.logits(x[None])[0], axis=-1)[..., 0]))  # softmax_1 of 2
        want = guided_filter(luma(x), prob, 2, 0.002, subsample=2)
        got = lite_seg.logits(x[None])[0, ..., 0]
        np.testing.assert_allclose(got, want, atol=2e-4)
        assert np.abs(want - prob).max() > 0.05  # the filter did something


def test_export_postprocess_misuse_is_a_clear_error(capsys, tmp_path, keras96):
    cases = [(["--temporal", "flow", "--head", "mask"], "--temporal 'flow'"),
             (["--refine", "guided"], "export with --head mask (not logits)"),
             (["--temporal", "ema", "--head", "mask", "--quantize", "int8", "--calibration-data", "synthetic:4"],
              "needs float arithmetic"),
             (["--temporal", "ema", "--head", "mask", "--temporal-strength", "1"], "--temporal-strength 1.0"),
             (["--refine", "guided", "--head", "mask", "--refine-radius", "0"], "--refine-radius 0"),
             (["--refine", "guided", "--head", "mask", "--refine-subsample", "5"], "--refine-subsample 5"),
             (["--temporal", "ema", "--head", "mask", "--metadata"], "cannot feed the previous matte")]
    for flags, text in cases:
        code = main(["export", str(keras96), "-o", str(tmp_path / "m.tflite"), *flags])
        err = capsys.readouterr().err
        assert code == 2 and text in err and len(err.strip().splitlines()) == 1, (flags, err)
        assert not (tmp_path / "m.tflite").exists()


def test_predict_refuses_a_two_input_file_clearly(capsys, tmp_path, exported, humanseg):
    code = main(["predict", str(exported["temporal"]), str(humanseg / "images" / "1.jpg"), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "takes 2 inputs" in err and "temporal.tflite" in err


def test_a_refined_file_is_read_as_probabilities_in_float32_and_float16():
    """Segmenter (predict, evaluate, bench) must not take the clipped matte for logits."""
    import keras

    from sinet_tf.export.quantize import convert
    from sinet_tf.postprocess import with_guided_refinement
    from sinet_tf.runtime.model_file import output_kind

    keras.utils.set_random_seed(0)
    x = keras.Input((32, 32, 3), batch_size=1)
    matte = keras.Model(x, keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")(x))
    refined = with_guided_refinement(matte, 2, 1e-3)
    for mode in ("none", "fp16"):
        assert output_kind(convert(refined, mode)) == "probabilities", mode
    capped = keras.Model(x, keras.ops.minimum(keras.layers.Conv2D(1, 3, padding="same")(x), 2.0))
    assert output_kind(convert(capped, "none")) == "logits"  # a cap that is not 1 says nothing
