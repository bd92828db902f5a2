"""Export to ``.tflite`` and the project's one GPU-delegate compatibility check."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sinet_tf.export.gpu_compat import GpuReport, OpVerdict, check_gpu_compatibility
from sinet_tf.export.tflite import TFLiteRunner, convert_float32, with_fixed_batch, write_atomic

__all__ = ["ExportReport", "GpuReport", "OpVerdict", "TFLiteRunner", "check_gpu_compatibility",
           "convert_float32", "export_tflite", "load_export_source", "with_fixed_batch", "write_atomic"]


@dataclass
class ExportReport:
    output: str
    model: str
    quantize: str
    size_bytes: int
    input_shape: list[int]
    output_shape: list[int]
    max_abs_diff_logits: float
    convert_seconds: float
    gpu: GpuReport
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"output": self.output, "model": self.model, "quantize": self.quantize,
                "size_bytes": self.size_bytes, "input_shape": self.input_shape,
                "output_shape": self.output_shape,
                "parity": {"max_abs_diff_logits": self.max_abs_diff_logits,
                           "input": "seeded uniform RGB pixels in [0, 255]"},
                "convert_seconds": round(self.convert_seconds, 2),
                "gpu_delegate": self.gpu.to_dict(), **self.extra}

    def summary(self) -> str:
        return (f"{self.output}: {self.size_bytes / 1024:.0f} KiB, input {self.input_shape}, "
                f"output {self.output_shape}, max |TFLite - Keras| = {self.max_abs_diff_logits:.2e}, "
                f"converted in {self.convert_seconds:.1f} s\n{self.gpu.summary()}")


def load_export_source(source, weights=None):
    """A Keras model from a ``.keras`` file or a registry name (+ optional checkpoint)."""
    from sinet_tf.inference import load_model

    return load_model(source, weights)


def export_tflite(source, output, weights=None, seed: int = 0) -> ExportReport:
    """Export ``source`` to a float32 ``.tflite`` at batch 1, check it against the GPU
    delegate's rules and against the Keras model, and write ``<output>.json`` beside it.
    Existing files are replaced only once the new ones are complete."""
    model = source if not isinstance(source, (str, os.PathLike)) else load_export_source(source, weights)
    output = Path(output)
    if output.suffix != ".tflite":
        raise ValueError(f"{output}: the output must be a .tflite file")
    model = with_fixed_batch(model, 1)  # once: conversion and the parity check use the same model
    t0 = time.perf_counter()
    data = convert_float32(model)
    seconds = time.perf_counter() - t0
    runner = TFLiteRunner(data)
    x = np.random.default_rng(seed).uniform(0, 255, runner.input_shape).astype(np.float32)
    y_lite = runner(x)
    y_keras = np.asarray(model(x, training=False), dtype=np.float32)
    report = ExportReport(
        output=str(output), model=model.name, quantize="none", size_bytes=len(data),
        input_shape=list(runner.input_shape), output_shape=list(y_lite.shape),
        max_abs_diff_logits=float(np.abs(y_lite - y_keras).max()), convert_seconds=seconds,
        gpu=check_gpu_compatibility(data))
    write_atomic(data, output)
    write_atomic(json.dumps(report.to_dict(), indent=2).encode(), output.with_suffix(".json"))
    return report
