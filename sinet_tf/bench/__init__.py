"""Benchmarks behind ``sinet bench``: ``.tflite`` files side by side on this machine
(:func:`benchmark`, one LiteRT interpreter and the same settings for every file, runs
interleaved) or on an Android device through TFLite's ``benchmark_model``
(:func:`benchmark_on_device`), and the table and plots that present them."""

from sinet_tf.bench.android import AdbError, benchmark_on_device
from sinet_tf.bench.host import benchmark, input_convention, model_info, peak_memory
from sinet_tf.bench.report import bench_table, write_plots

__all__ = ["AdbError", "bench_table", "benchmark", "benchmark_on_device", "input_convention", "model_info",
           "peak_memory", "write_plots"]
