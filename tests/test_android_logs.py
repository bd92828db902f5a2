"""The Android path's ``benchmark_model`` parser on real output: excerpts of logs that users
and vendors published (tests/data/benchmark_model/real/, each cited in that folder's
README.md). The expected values are read off the log text by hand; the hand-written logs
of tests/test_bench.py cover the parser's other paths."""

from pathlib import Path

import pytest

from sinet_tf.bench import android

REAL = Path(__file__).parent / "data" / "benchmark_model" / "real"


def _parse(name):
    return android.parse_benchmark_output((REAL / name).read_text())


def test_current_format_with_percentiles_and_exponent_notation():
    """TI Processor SDK docs (TFLite 2.x on an AM62x board): indented ``INFO:`` lines, the
    percentiles newer versions print, and an average in exponent notation."""
    parsed = _parse("ti_sdk_cpu_percentiles.txt")
    assert parsed["warmup"] == {"count": 1, "curr": 1357602, "p5": 1357602, "median": 1357602, "p95": 1357602}
    assert parsed["runs"] == {"count": 50, "first": 1249964, "curr": 1240143, "min": 1238588, "max": 1252566,
                              "avg": 1240270.0, "std": 2565, "p5": 1238753, "median": 1239807, "p95": 1247415}
    assert parsed["timings_us"] == {"init": 5579, "first_inference": 1357602, "warmup_avg": 1357600.0,
                                    "inference_avg": 1240270.0}
    assert parsed["memory_mb"] == {"delta_init": 6.36328, "delta_overall": 109.832}
    assert parsed["model_size_mb"] == 67.3128 and parsed["errors"] == []
    row = android.row_from_output(parsed, threads=4, use_gpu=False)
    # the tool printed a median: the row reports it (in ms) and says so
    assert row["median_ms"] == 1239.807 and row["mean_ms"] == 1240.27 and row["min_ms"] == 1238.588
    assert row["runs"] == 50 and row["init_ms"] == 5.579 and row["memory_delta_overall_mb"] == 109.832
    assert row["p90_ms"] is None and "median" in row["latency_statistic"] and "mean" not in row["latency_statistic"]


def test_older_format_gpu_delegate_without_level_prefixes():
    """tensorflow/tensorflow#43541: the GPU delegate on a phone, an older binary whose own
    lines carry no ``INFO:`` prefix (the runtime's do)."""
    parsed = _parse("tf43541_gpu.txt")
    assert parsed["gpu"] is True and parsed["errors"] == []
    assert parsed["warmup"]["count"] == 4 and parsed["warmup"]["avg"] == 122373
    assert parsed["runs"] == {"count": 50, "first": 119212, "curr": 118055, "min": 113737, "max": 124776,
                              "avg": 119375, "std": 1948}
    assert parsed["timings_us"]["init"] == 870557 and parsed["model_size_mb"] == 7.07479
    row = android.row_from_output(parsed, threads=4, use_gpu=True)
    assert row["mean_ms"] == 119.375 and row["std_ms"] == 1.948 and row["init_ms"] == 870.557
    assert row["gpu_delegate_created"] and row["median_ms"] is None  # this version printed no median
    assert "mean" in row["latency_statistic"]


def test_logcat_capture_of_the_benchmark_app():
    """tensorflow/tensorflow#56301: the Android benchmark app's output as ``adb logcat``
    shows it, every line behind a date, pids and an ``I tflite :`` tag."""
    parsed = _parse("tf56301_logcat_nnapi.txt")
    assert parsed["warmup"]["count"] == 40
    assert parsed["runs"] == {"count": 75, "first": 12840, "curr": 11853, "min": 11787, "max": 13649,
                              "avg": 12167.6, "std": 325}
    assert parsed["timings_us"] == {"init": 126059, "first_inference": 32942, "warmup_avg": 12581.9,
                                    "inference_avg": 12167.6}
    assert parsed["model_size_mb"] == 0.113392 and parsed["errors"] == []
    assert android.row_from_output(parsed, threads=4, use_gpu=False)["mean_ms"] == 12.1676


def test_op_profiling_summaries_are_not_taken_for_the_timed_runs():
    """NobuoTsukamoto/meta-tensorflow-lite's docs (``--enable_op_profiling=true``): the
    profiler's own ``Timings (microseconds): count=...`` summaries follow the benchmark's
    statistics; the timed runs are the benchmark's ``count=50`` line, and a warm-up of one
    run prints only ``count`` and ``curr``."""
    parsed = _parse("meta_tflite_op_profiling.txt")
    assert parsed["warmup"] == {"count": 1, "curr": 3512391}
    assert parsed["runs"] == {"count": 50, "first": 2990275, "curr": 2913402, "min": 2727568, "max": 3189954,
                              "avg": 2950340.0, "std": 109798}
    assert parsed["memory_mb"] == {"delta_init": 4.21094, "delta_overall": 46.0859}
    row = android.row_from_output(parsed, threads=4, use_gpu=False)
    assert row["mean_ms"] == 2950.34 and row["first_ms"] == 2990.275


def test_failed_run_is_an_error_quoting_the_tool():
    """lp6m/yolov5s_android's benchmark notes: NNAPI refuses the int8 model and the tool
    stops with "Benchmarking failed." and no statistics."""
    parsed = _parse("yolov5s_nnapi_failed.txt")
    assert "runs" not in parsed and "timings_us" not in parsed
    assert parsed["errors"][-2:] == ["Failed to apply NNAPI delegate.", "Benchmarking failed."]
    assert any("ANEURALNETWORKS_BAD_DATA" in e for e in parsed["errors"])
    with pytest.raises(android.AdbError, match=r"no timings: .*Failed to apply NNAPI delegate.*Benchmarking failed"):
        android.row_from_output(parsed, 4, False)
