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


def test_clear_errors(capsys, tmp_path, extremec3_checkpoint, humanseg, official_keras):
    code, _, err = _run(capsys, "predict", "sinett", humanseg / "images" / "1.jpg", "-o", tmp_path)
    assert code == 2 and "unknown model 'sinett'" in err and "did you mean 'sinet'" in err

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("this is text")
    code, _, err = _run(capsys, "predict", official_keras, not_image, "-o", tmp_path / "o")
    assert code == 2 and "notes.jpg" in err and "cannot decode" in err

    code, _, err = _run(capsys, "predict", "sinet", tmp_path / "missing.jpg", "-o", tmp_path / "o")
    assert code == 2 and "missing.jpg" in err

    code, _, err = _run(capsys, "import-weights", "sinet", extremec3_checkpoint, "-o", tmp_path / "x.keras")
    assert code == 2 and "encoder.level1.conv.weight" in err and not (tmp_path / "x.keras").exists()

    fake = tmp_path / "fake.keras"
    fake.write_bytes(b"not a zip")
    code, _, err = _run(capsys, "predict", fake, humanseg / "images" / "1.jpg", "-o", tmp_path / "o")
    assert code == 2 and "fake.keras" in err and "not a loadable Keras model" in err
    assert "a text file starting with 'not a zip'" in err and "not found" not in err.lower()

    # a .keras file of classes this package does not know: Keras' error quotes the whole config
    import zipfile

    foreign = tmp_path / "foreign.keras"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.writestr("config.json", json.dumps({"module": "elsewhere", "class_name": "Mystery",
                                              "config": {"layers": ["x" * 5000]}, "registered_name": "Mystery"}))
    code, _, err = _run(capsys, "predict", foreign, humanseg / "images" / "1.jpg", "-o", tmp_path / "o")
    assert code == 2 and "foreign.keras: not a loadable Keras model" in err and "Mystery" in err
    assert err.count("\n") == 1 and len(err) < 500, err


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


# ---- the error funnel: one line, an exit code per kind of failure ---------------------------


def test_help_lists_the_exit_codes(capsys):
    from sinet_tf.cli import EXIT_CODES

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out
    for code in EXIT_CODES:
        assert f"\n  {code:>3}  " in out
    assert len(set(EXIT_CODES)) == len(EXIT_CODES) == 9  # 0-7 (7: the int8 gate) and 130
    assert "--max-drop" in EXIT_CODES[7]


def _one_line_error(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"sinet {command}: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_os_errors_end_in_one_line_with_exit_5(capsys, tmp_path, monkeypatch, sinet_checkpoint):
    import errno
    import os

    import sinet_tf.files as files

    out = tmp_path / "model.keras"
    out.write_bytes(b"previous content")
    real_replace = os.replace

    def refuse(src, dst, *a, **k):
        if str(dst).endswith(".keras"):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(files.os, "replace", refuse)
    code, _, err = _run(capsys, "import-weights", "sinet", sinet_checkpoint, "-o", out)
    line = _one_line_error(err, "import-weights")
    assert code == 5 and f"{out}: read-only file system" in line
    assert out.read_bytes() == b"previous content" and [p.name for p in tmp_path.iterdir()] == ["model.keras"]

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(files.os, "replace", full)
    code, _, err = _run(capsys, "import-weights", "sinet", sinet_checkpoint, "-o", out)
    assert code == 5 and "no space left on the device" in _one_line_error(err, "import-weights")
    assert out.read_bytes() == b"previous content"


def test_outputs_of_the_wrong_kind_are_named(capsys, tmp_path, sinet_checkpoint, humanseg, official_keras):
    folder = tmp_path / "a_folder.keras"
    folder.mkdir()
    code, _, err = _run(capsys, "import-weights", "sinet", sinet_checkpoint, "-o", folder)
    assert code == 2 and f"-o {folder}: is a folder; give a file name" in _one_line_error(err, "import-weights")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    code, _, err = _run(capsys, "predict", official_keras, humanseg / "images" / "1.jpg", "-o", a_file)
    assert code == 2 and f"-o {a_file}: is a file; give a folder" in _one_line_error(err, "predict")
    code, _, err = _run(capsys, "import-weights", "sinet", sinet_checkpoint, "-o", a_file / "m.keras")
    assert code == 2 and f"{a_file} is a file, not a folder" in _one_line_error(err, "import-weights")
    code, _, err = _run(capsys, "evaluate", official_keras, "--data", "synthetic:5", "--gallery", a_file)
    assert code == 2 and "--gallery" in _one_line_error(err, "evaluate")


def test_interrupt_and_internal_errors(capsys, monkeypatch):
    import sinet_tf.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    def bug(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "cmd_check_gpu", interrupted)
    code, _, err = _run(capsys, "check-gpu", "x.tflite")
    assert code == 130 and _one_line_error(err, "check-gpu").endswith("interrupted")
    monkeypatch.setattr(cli, "cmd_check_gpu", bug)
    code, _, err = _run(capsys, "check-gpu", "x.tflite")
    line = _one_line_error(err, "check-gpu")
    assert code == 6 and "internal error: TypeError: unsupported operand" in line and "SINET_DEBUG=1" in line
    monkeypatch.setenv("SINET_DEBUG", "1")
    with pytest.raises(TypeError):
        main(["check-gpu", "x.tflite"])


def test_checkpoints_that_are_not_what_they_claim(capsys, tmp_path, sinet_checkpoint):
    text = tmp_path / "weights.npz"
    text.write_text("tensor = 1.0\n")
    code, _, err = _run(capsys, "import-weights", "sinet", text, "-o", tmp_path / "m.keras")
    line = _one_line_error(err, "import-weights")
    assert code == 2 and "not an .npz checkpoint" in line and "a text file starting with 'tensor = 1.0" in line
    assert "allow_pickle" not in line

    with np.load(sinet_checkpoint) as d:
        arrays = {k: d[k] for k in d.files}
    key = sorted(arrays)[5]
    arrays[key] = np.full_like(arrays[key], np.nan)
    nan = tmp_path / "nan.npz"
    np.savez(nan, **arrays)
    code, _, err = _run(capsys, "import-weights", "sinet", nan, "-o", tmp_path / "m.keras")
    line = _one_line_error(err, "import-weights")
    assert code == 2 and f"tensor {key!r} holds {arrays[key].size} non-finite values" in line
    assert not (tmp_path / "m.keras").exists()

    import sinet_tf
    from sinet_tf.weights import WeightImportError, load_weights

    model = sinet_tf.build_model("sinet")
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(WeightImportError, match="non-finite"):
        load_weights(model, nan)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)   # nothing was assigned


def test_registry_name_without_weights(capsys, tmp_path, humanseg):
    code, _, err = _run(capsys, "predict", "sinet", humanseg / "images" / "1.jpg", "-o", tmp_path / "o")
    line = _one_line_error(err, "predict")
    assert code == 2 and "'sinet' is a registry name without --weights" in line and "random" in line
    assert not (tmp_path / "o").exists()
    code, out, err = _run(capsys, "evaluate", "sinet_encoder", "--data", "synthetic:10", "--split", "none",
                          "--json")
    assert code == 0 and "warning: 'sinet_encoder' is a registry name without --weights" in err
    assert json.loads(out)["split"] is None
    code, out, _ = _run(capsys, "evaluate", "sinet_encoder", "--data", "synthetic:10", "--split", "none")
    assert code == 0 and "(whole folder, 10 images)" in out and "None" not in out


def test_threshold_outside_zero_one_is_refused(capsys, tmp_path, official_keras, humanseg):
    for value in ("1.5", "0", "-0.2"):
        code, _, err = _run(capsys, "predict", official_keras, humanseg / "images" / "1.jpg", "-o", tmp_path,
                            "--threshold", value)
        assert code == 2 and f"--threshold {float(value):g}" in _one_line_error(err, "predict")


def _corrupt_jpeg(good: bytes) -> bytes:
    """The photo with 2,000 bytes of its entropy-coded data zeroed: libjpeg then warns
    "Corrupt JPEG data: premature end of data segment" and fills the rest with grey."""
    data = bytearray(good)
    mid = len(data) // 2
    data[mid:mid + 2000] = bytes(2000)
    return bytes(data)


def test_predict_on_a_folder_goes_past_bad_files(capsys, tmp_path, official_keras, humanseg):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in (1, 2, 3):
        (folder / f"good{i}.jpg").write_bytes((humanseg / "images" / f"{i}.jpg").read_bytes())
    (folder / "bad_text.jpg").write_text("not a photo")
    (folder / "bad_truncated.jpg").write_bytes((humanseg / "images" / "4.jpg").read_bytes()[:1500])
    (folder / "bad_corrupt.jpg").write_bytes(_corrupt_jpeg((humanseg / "images" / "5.jpg").read_bytes()))
    code, out, err = _run(capsys, "predict", official_keras, folder, "-o", tmp_path / "o")
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "o").glob("*_mask.png")) == [f"good{i}_mask.png" for i in (1, 2, 3)]
    line = _one_line_error(err, "predict")
    assert "3 of 6 inputs failed" in line
    for name in ("bad_text.jpg", "bad_truncated.jpg", "bad_corrupt.jpg"):
        assert name in line
    assert "corrupt JPEG data (Corrupt JPEG data: premature end of data segment)" in line


def test_evaluate_prints_the_metrics_before_a_gallery_that_cannot_be_written(capsys, tmp_path, monkeypatch,
                                                                            official_keras):
    import errno

    import sinet_tf.evaluate as evaluate_module

    def read_only(image, path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(evaluate_module, "write_png_atomic", read_only)
    code, out, err = _run(capsys, "evaluate", official_keras, "--data", "synthetic:10", "--gallery",
                          tmp_path / "gallery")
    assert code == 5 and "no permission" in _one_line_error(err, "evaluate")
    assert "person IoU" in out and "(val, 2 images)" in out       # computed and shown before the failure
    code, out, err = _run(capsys, "evaluate", official_keras, "--data", "synthetic:10", "--gallery",
                          tmp_path / "gallery", "--json")
    assert code == 5 and json.loads(out)["n_images"] == 2
