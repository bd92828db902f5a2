"""TFLite conversion in the four modes and the checks every exported file must pass.

Modes (TFLite post-training quantization):

``none``     float32 weights and activations.
``fp16``     float16 weights (DEQUANTIZE to float32 at load; GPU delegates run them in fp16).
``dynamic``  int8 weights, float activations (weights dequantized or hybrid kernels on CPU).
``int8``     full-integer: int8 weights and activations calibrated on real images
             (``representative``; activation ranges TFLite's min/max or their per-image
             average, :func:`average_ranges`); inputs/outputs float32 (QUANTIZE/DEQUANTIZE
             at the ends), int8, or uint8 (``io``).

Every mode converts the batch-1 functional model's frozen inference graph
(:func:`sinet_tf.export.frozen.frozen_graph_converter`: the ops ``from_keras_model`` gives, in
a quarter of its time) with builtin ops only, and :func:`inspect_tflite` rejects files that still
contain Flex/custom ops, variables, SHAPE, or float tensors inside an int8 graph. Other routes
fall short here: Keras' ``model.export`` without an input signature leaves the batch dynamic
(``-1`` in the shape signatures, dilated convs as SPACE_TO_BATCH_ND), its ``litert`` format
enables Flex ops, and ``from_concrete_functions`` on a Keras 3 model keeps its variables as
resource reads unless they are folded first.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from io import StringIO
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf
from ai_edge_litert import schema_py_generated as schema

from sinet_tf.compat import calibrate_only, quantize_calibrated
from sinet_tf.export.frozen import (
    add_serving_signature,
    frozen_graph_converter,
    input_names,
)
from sinet_tf.files import stderr_captured
from sinet_tf.runtime.interpreter import make_interpreter
from sinet_tf.runtime.model_file import (
    TFLiteContents,
    output_kind,
    pack_model,
    parse_model,
    read_contents,
    read_model,
)

__all__ = ["CALIBRATION_RANGES", "QUANTIZE_MODES", "IO_TYPES", "ExportError", "TFLiteContents", "average_ranges",
           "calibrate", "convert", "inspect_tflite", "output_kind", "quantize_calibrated_model",
           "representative_dataset"]

QUANTIZE_MODES = ("none", "fp16", "dynamic", "int8")
IO_TYPES = ("float32", "uint8", "int8")

_VARIABLE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}


class ExportError(ValueError):
    """A model that cannot be exported as asked, or a converted file that breaks a rule."""


def inspect_tflite(data: bytes, quantize: str = "none") -> TFLiteContents:
    """The contents of a converted model (:func:`sinet_tf.runtime.model_file.read_contents`)
    with ``problems``: what breaks the export rules for mode ``quantize``."""
    contents = read_contents(data)
    problems = contents.problems
    if contents.num_subgraphs != 1:
        problems.append(f"{contents.num_subgraphs} subgraphs (control flow); expected one")
    for name, n in contents.op_counts().items():
        if name.startswith(("FLEX:", "CUSTOM:")):
            problems.append(f"{n} x {name}: not a builtin op (LiteRT without Flex cannot run it)")
        elif name in _VARIABLE_OPS:
            problems.append(f"{n} x {name}: variables left in the graph")
        elif name == "SHAPE":
            problems.append(f"{n} x SHAPE: dynamic shape computation (GPU delegates refuse it)")
    for d in contents.inputs + contents.outputs:
        if any(s <= 0 for s in d["shape"]):
            problems.append(f"tensor {d['name']!r} has a dynamic shape {d['shape']}")
    if quantize == "int8":
        model = read_model(data)
        sub = model.subgraphs[0]
        floating = (schema.TensorType.FLOAT32, schema.TensorType.FLOAT16)
        for op, op_t in zip(contents.ops, sub.operators):
            if op in ("QUANTIZE", "DEQUANTIZE"):
                continue
            floats = [sub.tensors[i].name for i in list(op_t.inputs) + list(op_t.outputs)
                      if i >= 0 and sub.tensors[i].type in floating]
            if floats:
                names = ", ".join((n or b"").decode() if isinstance(n, bytes) else str(n) for n in floats[:3])
                problems.append(f"float island in the int8 graph: {op} has float tensors ({names})")
    return contents


CALIBRATION_RANGES = ("minmax", "average")


def _check_modes(quantize: str, io: str) -> None:
    if quantize not in QUANTIZE_MODES:
        raise ExportError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    if io not in IO_TYPES:
        raise ExportError(f"unknown input/output type {io!r}; choose one of {', '.join(IO_TYPES)}")
    if io != "float32" and quantize != "int8":
        raise ExportError(f"--io {io} needs a full-integer model (--quantize int8); "
                          f"a {quantize} model takes and returns float32")


def _io_dtype(io: str):
    return {"float32": tf.float32, "uint8": tf.uint8, "int8": tf.int8}[io]


def calibrate(model, representative: Callable[[], Iterable[list[np.ndarray]]], io: str = "float32") -> bytes:
    """The float ``.tflite`` model of a batch-1 Keras functional model with TFLite's
    calibration statistics (each activation's min/max over the ``representative`` images):
    the first half of an int8 conversion. :func:`quantize_calibrated_model` is the second;
    in between, the ranges can be replaced (:mod:`sinet_tf.export.calibration`)."""
    _check_modes("int8", io)
    converter = frozen_graph_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = _io_dtype(io)
    calibrate_only(converter)
    with contextlib.redirect_stdout(StringIO()), warnings.catch_warnings():  # the converter prints its settings
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


# what the MLIR quantizer prints on every call: "fully_quantize: 0, inference_type: 6, ..."
_QUANTIZER_SETTINGS = re.compile(r"^fully_quantize: \d+, inference_type: ")


@contextlib.contextmanager
def _quiet_native_stdout():
    """Silence what native code prints on file descriptor 1 (the MLIR quantizer prints its
    settings on every call)."""
    import os

    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 (an embedding host): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def quantize_calibrated_model(calibrated: bytes, io: str, input_names_: list[str]) -> bytes:
    """The full-integer model of a calibrated float model (:func:`calibrate`), with the
    ranges it carries, as ``TFLiteConverter.convert()`` makes it (per-channel weights), and
    a ``serving_default`` signature over ``input_names_``."""
    lines: list[str] = []
    try:
        with contextlib.redirect_stdout(StringIO()), _quiet_native_stdout(), stderr_captured() as lines:
            data = quantize_calibrated(calibrated, _io_dtype(io))
    finally:   # its settings line goes to stderr too; anything else it said is passed on
        for line in lines:
            if not _QUANTIZER_SETTINGS.match(line):
                print(line, file=sys.stderr)
    return add_serving_signature(data, input_names_)


def convert(model, quantize: str = "none", io: str = "float32",
            representative: Callable[[], Iterable[list[np.ndarray]]] | None = None,
            ranges: str = "minmax") -> bytes:
    """Convert a batch-1 Keras functional model to ``.tflite`` bytes in mode ``quantize``.

    int8 only: ``ranges`` is how activation ranges come from the calibration images
    (``"minmax"``: TFLite's, over all of them; ``"average"``: the mean of each image's
    minimum and maximum, :func:`average_ranges`). The exporter chooses among more range
    estimators by measurement (:mod:`sinet_tf.export.calibration`)."""
    _check_modes(quantize, io)
    if quantize == "int8" and representative is None:
        raise ExportError("int8 quantization needs calibration images (--calibration-data SRC)")
    if ranges not in CALIBRATION_RANGES:
        raise ExportError(f"unknown calibration ranges {ranges!r}; choose one of {', '.join(CALIBRATION_RANGES)}")
    if quantize == "int8":
        calibrated = calibrate(model, representative, io)
        if ranges == "average":
            calibrated = average_ranges(calibrated, [np.asarray(batch[0])[0] for batch in representative()])
        return quantize_calibrated_model(calibrated, io, input_names(model))
    converter = frozen_graph_converter(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    with contextlib.redirect_stdout(StringIO()):
        data = converter.convert()
    return add_serving_signature(data, input_names(model))


def representative_dataset(images: np.ndarray, advance=None):
    """The converter's calibration generator. The first image is repeated once with its
    top row black and bottom row white, so the input's calibrated range is exactly
    [0, 255]: an int8/uint8 input then has scale 1 (uint8 zero point 0, int8 -128), and
    a phone feeds camera bytes as they are. ``advance()`` is called per image (a progress bar)."""
    pinned = images[0].copy()
    pinned[0], pinned[-1] = 0.0, 255.0

    def gen():
        yield [pinned[None].astype(np.float32)]
        for im in images:
            yield [im[None].astype(np.float32)]
            if advance is not None:
                advance()

    return gen


def _per_image_ranges(data: bytes, images, indices):
    """``{tensor index: (per-image minima, per-image maxima)}`` of a float model run on
    ``images`` through LiteRT's interpreter with every tensor kept."""
    interpreter = make_interpreter(data, xnnpack=False, keep_all_tensors=True)
    inp = interpreter.get_input_details()[0]
    out = {i: ([], []) for i in indices}
    for x in images:
        interpreter.set_tensor(inp["index"], np.asarray(x, np.float32)[None])
        interpreter.invoke()
        for i in indices:
            v = interpreter.get_tensor(i)
            out[i][0].append(float(v.min()))
            out[i][1].append(float(v.max()))
    return out


def average_ranges(calibrated: bytes, images) -> bytes:
    """``calibrated`` (a float model with TFLite's calibration statistics) with each
    activation's range replaced by the mean over ``images`` of that image's minimum and
    maximum (each still containing 0), instead of the minimum and maximum over all of them.

    Min/max over a few hundred images is set by the most extreme pixels of the most
    extreme image: ExtremeC3Net's activations have peak/RMS ratios of 10-30, and which
    images are in the calibration set moved its int8 IoU by up to 0.03. The averaged range
    (what TensorFlow's quantization-aware training keeps, as a moving average) clips those
    few pixels and gives every other value more levels. The model input keeps its range."""
    model = parse_model(calibrated)
    sub = model.subgraphs[0]
    inputs = {int(i) for i in sub.inputs}
    indices = [i for i, t in enumerate(sub.tensors) if i not in inputs and t.quantization is not None
               and t.quantization.min is not None and len(t.quantization.min) == 1]
    values = _per_image_ranges(calibrated, images, indices)
    for i in indices:
        q = sub.tensors[i].quantization
        lo, hi = float(np.mean(values[i][0])), float(np.mean(values[i][1]))
        q.min = np.array([min(lo, 0.0)], np.float32)
        q.max = np.array([max(hi, 0.0)], np.float32)
    return pack_model(model)
