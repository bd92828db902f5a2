"""The installed ``sinet`` console script, each call in a fresh interpreter (a subprocess),
as users run it: import-order and registration faults (a model or layout registered only
when some other module happened to be imported first, a command that works in-process
after the test suite imported everything) show up here and nowhere else.

Every command's ``--help``, then one tiny real run of each, the outputs checked against
the official reference outputs or the same computation in this process (``train``'s runs,
killed, resumed and run again, are test_reliability.py's)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

COMMANDS = ("models", "import-weights", "export", "evaluate", "predict", "train", "bench")


def _sinet() -> str:
    beside = Path(sys.executable).with_name("sinet")   # the environment running the tests
    found = str(beside) if beside.is_file() else shutil.which("sinet")
    if not found:
        pytest.fail("the sinet console script is not installed (pip install -e .)")
    return found


def sinet(*args, cwd=None, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([_sinet(), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def _json(text):
    """The JSON document at the end of a command's stdout (some print a summary line first)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line in ("{", "[") or line.startswith(('{"', "[{")))
    return json.loads("\n".join(lines[start:]))


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command):
    code, out, err = sinet(command, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: sinet {command}") and "-h, --help" in out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("console")


@pytest.fixture(scope="module")
def exported(work):
    """``sinet export sinet_official``: the bundled preset to a float32 .tflite."""
    out = work / "sinet_official.tflite"
    code, _, err = sinet("export", "sinet_official", "-o", out)
    assert code == 0, err
    return out


def _official_photo(official_outputs):
    return official_outputs["image_bgr_uint8_224"][..., ::-1].astype(np.float32)  # RGB pixels


def test_models_lists_sinet_with_the_official_parameter_count():
    code, out, err = sinet("models", "sinet", "extremec3net", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in _json(out)}
    # the trainable values of the official checkpoints (../shared/reference/README.md)
    assert rows["sinet"]["params"] == 86_910 and rows["extremec3net"]["params"] == 37_738


def test_import_weights_gives_the_official_network(work, sinet_checkpoint, official_outputs):
    from registry_cases import assert_outputs_match
    from sinet_tf.loading import load_model

    out = work / "imported.keras"
    code, _, err = sinet("import-weights", "sinet", sinet_checkpoint, "-o", out)
    assert code == 0, err
    logits = np.asarray(load_model(str(out))(_official_photo(official_outputs), training=False))
    assert_outputs_match(logits, official_outputs["sinet_real_output"], rtol=1e-5, what="imported .keras")


def test_export_gives_the_official_network_as_tflite(exported, official_outputs):
    from registry_cases import assert_outputs_match
    from sinet_tf.runtime import TFLiteRunner

    report = json.loads(exported.with_suffix(".json").read_text())
    assert report["gpu_delegate"]["compatible"]
    logits = TFLiteRunner(exported)(_official_photo(official_outputs))
    assert_outputs_match(logits, official_outputs["sinet_real_output"], rtol=1e-5, what="exported .tflite")


def test_predict_writes_the_mask_of_an_in_process_segmenter(exported, work, humanseg):
    from sinet_tf.inference import Segmenter

    photo = humanseg / "images" / "6.jpg"
    code, _, err = sinet("predict", exported, photo, "--refine", "none", "-o", work / "pred")
    assert code == 0, err
    mask = cv2.imread(str(work / "pred" / "6_mask.png"), cv2.IMREAD_GRAYSCALE)
    rgb = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
    want = Segmenter(str(exported), keep_aspect=True).mask(rgb)
    assert mask.shape == rgb.shape[:2] and 0.05 < want.mean() < 0.95
    np.testing.assert_array_equal(mask > 127, want.astype(bool))


def test_evaluate_scores_as_the_library_does(exported, work, humanseg):
    from sinet_tf.evaluate import evaluate
    from sinet_tf.inference import Segmenter

    listing = work / "three.txt"
    listing.write_text("".join(f"{humanseg}/images/{n}.jpg {humanseg}/masks/{n}.png\n" for n in ("1", "5", "17")))
    code, out, err = sinet("evaluate", exported, "--data", listing, "--split", "none", "--json")
    assert code == 0, err
    got = _json(out)
    want = evaluate(Segmenter(str(exported)), str(listing), split=None)
    assert got["n_images"] == 3 and got["person_iou"] == pytest.approx(want["person_iou"], abs=1e-9)
    assert got["boundary_f"] == pytest.approx(want["boundary_f"], abs=1e-9)


def test_bench_reports_the_file(exported):
    code, out, err = sinet("bench", exported, "--runs", "2", "--warmup", "0", "--threads", "1", "--no-memory",
                           "--json")
    assert code == 0, err
    (row,) = _json(out)
    assert row["size_bytes"] == exported.stat().st_size and row["runs"] == 2
    assert row["input"]["shape"] == [1, 224, 224, 3] and row["mean_ms"] > 0
