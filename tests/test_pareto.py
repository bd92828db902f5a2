"""benchmarks/pareto.py's summary: per-configuration latency at 1 and 2 threads, the
int8-minus-fp32 IoU, the ratio to the selfie model and the must-show flag, checked on
hand-made rows whose answers are worked out here."""

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location("pareto", Path(__file__).resolve().parents[1] / "benchmarks" / "pareto.py")
pareto = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(pareto)


def _rows(config, iou, ms1, ms2):
    weights, size, mode = config
    return [{"weights": weights, "size": size, "mode": mode, "file": f"{weights}_{size}_{mode}", "threads": t,
             "median_ms": ms, "person_iou": iou, "boundary_f": 0.5, "gpu_compatible": True, "num_ops": 10}
            for t, ms in ((1, ms1), (2, ms2))]


def test_summary_flags_only_faster_configurations_at_official_iou_with_close_int8():
    rows = (_rows(("mediapipe", None, "selfie"), 0.88, 4.0, 5.0)
            + _rows(("tuned", 192, "fp32"), 0.77, 3.0, 4.0) + _rows(("tuned", 192, "int8"), 0.775, 4.2, 5.2)
            + _rows(("tuned", 160, "fp32"), 0.70, 2.0, 3.0) + _rows(("tuned", 160, "int8"), 0.715, 2.5, 3.5)
            + _rows(("official", 224, "fp32"), 0.6825, 3.9, 6.0) + _rows(("official", 224, "int8"), 0.67, 5.0, 7.0))
    summary = {(v["weights"], v["size"], v["mode"]): v for v in pareto.summarize(rows)}
    tuned = summary[("tuned", 192, "fp32")]
    assert tuned["ms_1t"] == 3.0 and tuned["ms_2t"] == 4.0
    assert tuned["vs_selfie_1t"] == pytest.approx(0.75) and tuned["vs_selfie_2t"] == pytest.approx(0.8)
    assert tuned["int8_minus_fp32_iou"] == pytest.approx(0.005) and tuned["beats_selfie"]
    assert not summary[("tuned", 192, "int8")]["beats_selfie"]      # slower than the selfie model
    assert summary[("tuned", 160, "fp32")]["int8_minus_fp32_iou"] == pytest.approx(0.015)
    assert not summary[("tuned", 160, "fp32")]["beats_selfie"]      # int8 0.015 away
    assert not summary[("official", 224, "fp32")]["beats_selfie"]   # slower at 2 threads
    text = pareto.table(pareto.summarize(rows), "test CPU (avx2)", 100)
    assert text.startswith("CPU: test CPU (avx2)") and text.count("**yes**") == 1
