"""Export to ``.tflite``: conversion in four modes (:mod:`.quantize`, over the frozen graph of
:mod:`.frozen`), the int8 rewrites (:mod:`.rewrite`), output heads (:mod:`.heads`), the
GPU-delegate rules (:mod:`.gpu_compat`), MediaPipe metadata (:mod:`.metadata`) and the
exporter that puts them together with a JSON report (:mod:`.exporter`).

Names are imported on first use, so ``sinet check-gpu`` (the GPU rules alone) starts
without TensorFlow.
"""

from __future__ import annotations

from sinet_tf.lazy import lazy_attributes

_NAMES = {
    "ExportReport": "exporter", "calibration_images": "exporter", "export_tflite": "exporter",
    "load_export_source": "exporter", "read_export_report": "exporter",
    "GpuReport": "gpu_compat", "OpVerdict": "gpu_compat", "check_gpu_compatibility": "gpu_compat",
    "OUTPUT_HEADS": "heads", "with_output_head": "heads",
    "ExportError": "quantize", "IO_TYPES": "quantize", "QUANTIZE_MODES": "quantize", "convert": "quantize",
    "inspect_tflite": "quantize",
    "convert_float32": "tflite", "with_fixed_batch": "tflite",
}

__all__ = sorted(_NAMES)


__getattr__, __dir__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _NAMES.items()})
