"""`sinet evaluate`: the papers' protocol on full-size ground truth."""

import json

import cv2
import numpy as np
import pytest

from sinet_tf.cli import main
from sinet_tf.evaluate import evaluate
from sinet_tf.inference import Segmenter


@pytest.fixture(scope="module")
def official(sinet_checkpoint):
    return Segmenter("sinet", weights=sinet_checkpoint)


def test_person_iou_matches_an_independent_computation(official, humanseg, tmp_path):
    names = ["1", "5", "17"]
    listing = tmp_path / "three.txt"
    listing.write_text("".join(f"{humanseg}/images/{n}.jpg {humanseg}/masks/{n}.png\n" for n in names))
    result = evaluate(official, str(listing), split=None)
    ious = []
    for n in names:
        photo = cv2.cvtColor(cv2.imread(str(humanseg / "images" / f"{n}.jpg")), cv2.COLOR_BGR2RGB)
        truth = cv2.imread(str(humanseg / "masks" / f"{n}.png"), cv2.IMREAD_GRAYSCALE)
        truth = cv2.resize(truth, photo.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 127
        pred = official.mask(photo).astype(bool)
        ious.append((pred & truth).sum() / (pred | truth).sum())
    assert result["n_images"] == 3
    assert result["person_iou"] == pytest.approx(np.mean(ious), abs=1e-9)


def test_official_sinet_on_humanseg_val(official, humanseg, tmp_path, capsys):
    """The checkpoint's known score on humanseg290 val (0.681 in the export issue's measurement)."""
    result = evaluate(official, str(humanseg), split="val", gallery=tmp_path / "worst", worst=3)
    assert result["n_images"] == 60
    assert 0.67 < result["person_iou"] < 0.70
    assert result["miou"] > result["person_iou"] and 0 < result["boundary_f"] < 1
    shots = sorted((tmp_path / "worst").glob("*.png"))
    assert len(shots) == 3 and cv2.imread(str(shots[0])).shape[0] == 320


def test_evaluate_cli_json(capsys, sinet_checkpoint, tmp_path):
    from sinet_tf.data.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "synth", 10, size=(96, 96), seed=3)
    code = main(["evaluate", "sinet", "--weights", str(sinet_checkpoint), "--data", str(data), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["n_images"] == 2
    assert {"person_iou", "miou", "pixel_accuracy", "boundary_f", "n_images"} <= set(out)


def test_evaluate_errors(capsys, tmp_path):
    code = main(["evaluate", "sinet", "--data", str(tmp_path / "nowhere")])
    assert code == 2 and "nowhere" in capsys.readouterr().err
