"""The `sinet` command end to end: models, import-weights, export, check-gpu, predict."""

import json

import cv2
import numpy as np
import pytest

from sinet_tf.cli import main
from sinet_tf.runtime import TFLiteRunner


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_models_json_lists_params_macs_and_input_size(capsys):
    # a few models: building all of them (the large zoo variants too) takes about a minute
    code, out, _ = _run(capsys, "models", "sinet", "extremec3net", "portraitnet", "pspnet_mobilenetv2", "--json")
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out)}
    assert list(rows) == ["sinet", "extremec3net", "portraitnet", "pspnet_mobilenetv2"]
    assert rows["sinet"]["params"] == 86_910 and rows["extremec3net"]["params"] == 37_738
    # SINet paper: 0.064 GMACs at 224x224; ExtremeC3Net: 0.128
    assert round(rows["sinet"]["macs"] / 1e9, 3) == 0.064
    assert round(rows["extremec3net"]["macs"] / 1e9, 3) == 0.128
    # the portrait models run at the papers' 224x224; every default size is one the model takes
    assert all(rows[m]["input_size"] == [224, 224] for m in ("sinet", "extremec3net", "portraitnet"))
    assert all(s % r["input_multiple"] == 0 for r in rows.values() for s in r["input_size"])


def test_models_table(capsys):
    code, out, _ = _run(capsys, "models", "sinet", "sinet_encoder")
    assert code == 0 and "sinet_encoder" in out and "86,910" in out and "86,764" in out


def test_models_unknown_name_suggests_the_closest(capsys):
    code, _, err = _run(capsys, "models", "sinett")
    assert code == 2 and "did you mean 'sinet'" in err


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def official_keras(workdir, sinet_checkpoint):
    out = workdir / "sinet_official.keras"
    assert main(["import-weights", "sinet", str(sinet_checkpoint), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def official_tflite(workdir, official_keras):
    out = workdir / "sinet_official.tflite"
    assert main(["export", str(official_keras), "-o", str(out)]) == 0
    return out


def test_exported_official_sinet_matches_the_official_model(official_tflite, official_outputs):
    report = json.loads(official_tflite.with_suffix(".json").read_text())
    assert report["gpu_delegate"]["compatible"] is True
    assert report["inputs"][0]["shape"] == [1, 224, 224, 3] and report["inputs"][0]["dtype"] == "float32"
    assert report["parity"]["max_abs_diff_output"] <= 1e-4 and report["quantize"] == "none"
    assert report["ops"]["CONV_2D"] > 0 and report["size_bytes"] == official_tflite.stat().st_size
    rgb = official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)
    out = TFLiteRunner(official_tflite)(rgb)
    assert np.abs(out - official_outputs["sinet_real_output"]).max() <= 1e-4


def test_check_gpu_on_the_exported_file(capsys, official_tflite):
    code, out, _ = _run(capsys, "check-gpu", official_tflite, "--json")
    assert code == 0 and json.loads(out)["compatible"] is True


def test_predict_writes_a_mask_of_the_photo_size(capsys, workdir, official_keras, official_tflite, humanseg):
    photo = humanseg / "images" / "1.jpg"
    truth = cv2.imread(str(humanseg / "masks" / "1.png"), cv2.IMREAD_GRAYSCALE)
    h, w = cv2.imread(str(photo)).shape[:2]
    masks = {}
    for name, model in [("keras", official_keras), ("tflite", official_tflite)]:
        code, out, _ = _run(capsys, "predict", model, photo, "-o", workdir / name)
        assert code == 0, out
        mask = cv2.imread(str(workdir / name / "1_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        masks[name] = mask > 127
    assert (masks["keras"] == masks["tflite"]).mean() >= 0.999
    truth = cv2.resize(truth, (w, h), interpolation=cv2.INTER_NEAREST) > 127
    iou = (masks["keras"] & truth).sum() / (masks["keras"] | truth).sum()
    assert iou > 0.5, f"person IoU {iou:.3f} on humanseg290 image 1"


def test_predict_from_registry_name_and_weights(capsys, workdir, sinet_checkpoint, humanseg, official_keras):
    photo = humanseg / "images" / "2.jpg"
    code, _, _ = _run(capsys, "predict", "sinet", photo, "--weights", sinet_checkpoint, "-o", workdir / "by_name")
    assert code == 0
    code, _, _ = _run(capsys, "predict", official_keras, photo, "-o", workdir / "by_file")
    assert code == 0
    a = cv2.imread(str(workdir / "by_name" / "2_mask.png"), cv2.IMREAD_GRAYSCALE)
    b = cv2.imread(str(workdir / "by_file" / "2_mask.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(a, b)


def test_clear_errors(capsys, tmp_path, extremec3_checkpoint, humanseg):
    code, _, err = _run(capsys, "predict", "sinett", humanseg / "images" / "1.jpg", "-o", tmp_path)
    assert code == 2 and "unknown model 'sinett'" in err and "did you mean 'sinet'" in err

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is text")
    code, _, err = _run(capsys, "predict", "sinet", not_image, "-o", tmp_path / "o")
    assert code == 2 and "notes.jpg" in err and "cannot decode" in err

    code, _, err = _run(capsys, "predict", "sinet", tmp_path / "missing.jpg", "-o", tmp_path / "o")
    assert code == 2 and "missing.jpg" in err

    code, _, err = _run(capsys, "import-weights", "sinet", extremec3_checkpoint, "-o", tmp_path / "x.keras")
    assert code == 2 and "encoder.level1.conv.weight" in err and not (tmp_path / "x.keras").exists()

    fake = tmp_path / "fake.keras"
    fake.write_bytes(b"not a zip")
    code, _, err = _run(capsys, "predict", fake, humanseg / "images" / "1.jpg", "-o", tmp_path / "o")
    assert code == 2 and "fake.keras" in err and "not a loadable Keras model" in err


def test_failed_write_keeps_the_existing_output(capsys, tmp_path, extremec3_checkpoint):
    out = tmp_path / "model.keras"
    out.write_bytes(b"previous content")
    code, _, _ = _run(capsys, "import-weights", "sinet", extremec3_checkpoint, "-o", out)
    assert code == 2 and out.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]


def test_outputs_get_the_usual_file_mode(tmp_path):
    import os

    from sinet_tf.files import write_atomic

    umask = os.umask(0o022)
    try:
        path = write_atomic(b"x", tmp_path / "a.bin")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
