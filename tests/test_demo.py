"""`sinet demo --quick`: train, evaluate, export, benchmark and report, end to end."""

import json
import re

import cv2
import pytest

from sinet_tf.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    return out


def _numbers(d, path=""):
    """Every leaf of a JSON object, with its key path."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, d


def test_report_references_plots_that_are_real_images(demo):
    report = (demo / "report.md").read_text()
    plots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert set(plots) == {"training_curves.png", "latency.png", "examples.png"}
    for name in plots:
        img = cv2.imread(str(demo / name))
        assert img is not None, f"{name} does not decode"
        assert img.shape[0] > 200 and img.shape[1] > 300 and float(img.std()) > 10, f"{name} looks blank"


def test_report_metrics_are_numbers(demo):
    report = (demo / "report.md").read_text()
    block = re.search(r"```json\n(.*?)\n```", report, re.S)
    assert block, "report.md has no JSON block"
    metrics = json.loads(block.group(1))
    assert metrics == json.loads((demo / "metrics.json").read_text())
    for key in ("keras", "fp32", "int8"):
        e = metrics["evaluation"][key]
        for name in ("person_iou", "miou", "pixel_accuracy", "boundary_f"):
            assert isinstance(e[name], float) and 0.0 <= e[name] <= 1.0, (key, name, e[name])
        assert e["n_images"] > 0
    # the float32 file computes what the Keras model does
    assert abs(metrics["evaluation"]["fp32"]["person_iou"] - metrics["evaluation"]["keras"]["person_iou"]) < 1e-3
    for key in ("fp32", "int8"):
        assert metrics["export"][key]["gpu_compatible"] is True
        assert metrics["export"][key]["size_bytes"] > 10_000
    assert [r["threads"] for r in metrics["benchmark"]] == [2, 2]
    for r in metrics["benchmark"]:
        assert isinstance(r["median_ms"], float) and 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"]
    assert metrics["training"]["epochs"] >= 1 and metrics["training"]["seconds"] > 0
    assert all(isinstance(v, (int, float)) and v >= 0 for v in metrics["wall_seconds"].values())
    for path, value in _numbers(metrics["evaluation"]):
        assert isinstance(value, (int, float, str)), path
    assert (demo / "sinet_demo_fp32.tflite").is_file() and (demo / "sinet_demo_int8.tflite").is_file()
    # int8 obeys the gate, and the report names the calibration the exporter chose
    cal = metrics["export"]["int8"]["calibration"]
    # (--quick tries the four estimators without equalization; the demo's default, all eight)
    assert cal["gate"] == "passed"
    assert [c["name"] for c in cal["candidates"]] == ["minmax", "average", "percentile", "mse"]
    chosen = next(c for c in cal["candidates"] if c["name"] == cal["chosen"])
    assert chosen["drop"] <= cal["max_drop"]
    assert f"int8 calibration: **{cal['chosen']}**" in (demo / "report.md").read_text()
    assert (demo / "run" / "train" / "history.csv").is_file()


def test_int8_score_is_the_iou_of_its_masks_and_close_to_float(demo):
    """The int8 file's person IoU in metrics.json is the mean over the val photos of the IoU of
    its masks, recomputed here with NumPy; and the gate's parity photos are the whole
    validation split, so int8 costs at most the gate's allowed drop there against the
    float32 file (which equals the Keras model to float precision)."""
    import numpy as np

    from sinet_tf.data.sources import open_source
    from sinet_tf.inference import Segmenter

    metrics = json.loads((demo / "metrics.json").read_text())
    segmenter = Segmenter(str(demo / "sinet_demo_int8.tflite"))
    source = open_source(metrics["data"], "val", seed=0)
    ious = []
    for i in range(len(source)):
        image, label = source.read(i)
        pred, truth = segmenter.mask(image).astype(bool), label == 1
        union = (pred | truth).sum()
        ious.append((pred & truth).sum() / union if union else 1.0)
    e = metrics["evaluation"]
    assert e["int8"]["n_images"] == len(ious)
    assert e["int8"]["person_iou"] == pytest.approx(float(np.mean(ious)), abs=1e-6)
    cal = metrics["export"]["int8"]["calibration"]
    print(f"val person IoU: fp32 {e['fp32']['person_iou']:.4f}, int8 {e['int8']['person_iou']:.4f} "
          f"(gate: drop <= {cal['max_drop']} on the parity photos)")
    assert cal["parity_images"] == f"{len(ious)} held-out images of {metrics['data']} (val)"
    assert e["fp32"]["person_iou"] - e["int8"]["person_iou"] <= cal["max_drop"] + 1e-4


def test_demo_refuses_to_overwrite_a_run(capsys, demo):
    assert main(["demo", "--quick", "-o", str(demo)]) == 2
    assert "already holds a demo run" in capsys.readouterr().err
