"""The one reader of ``.tflite`` files: parse the flatbuffer, name its ops and tensor types,
list its inputs and outputs, and write an edited model back.

Built on LiteRT's own flatbuffer tools (``ai_edge_litert.tools.flatbuffer_utils``) and the
object API of its schema (``ai_edge_litert.schema_py_generated``): every other module that
looks inside a ``.tflite`` file (export checks, the GPU-delegate rules, the per-op profiler,
``sinet bench``) goes through here.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

__all__ = ["TFLiteContents", "count_weight_params", "input_range", "io_details", "is_constant", "op_name",
           "output_kind", "pack_model", "parse_model", "read_contents", "read_model", "read_tflite", "schema",
           "type_name"]

FILE_IDENTIFIER = b"TFL3"


def read_tflite(path: str | os.PathLike) -> bytes:
    """The bytes of a ``.tflite`` file; a clear error naming the file if it is missing, is a
    folder, or is not a TFLite flatbuffer (file identifier ``TFL3``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"TFLite model file not found: {p}")
    if p.is_dir():
        raise ValueError(f"{p}: a directory, not a .tflite file")
    if not p.is_file():
        raise ValueError(f"{p}: not a regular file (give a .tflite file)")
    data = p.read_bytes()
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"{p}: not a TFLite model (no TFL3 flatbuffer identifier)")
    return data


def parse_model(data: bytes, label: str = "<bytes>") -> schema.ModelT:
    """The object-API model (``ModelT``) of ``.tflite`` bytes, buffers as stored (no
    compaction, so an edited model packs back with the same buffer indices); ``label`` names
    the file in errors."""
    data = bytes(data)
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"{label}: not a TFLite flatbuffer (missing the 'TFL3' file identifier)")
    try:
        model = flatbuffer_utils.convert_bytearray_to_object(data)
    except Exception as e:  # a corrupt flatbuffer behind a valid identifier
        raise ValueError(f"{label}: cannot parse the TFLite flatbuffer ({type(e).__name__}: {e})") from e
    if not model.subgraphs:
        raise ValueError(f"{label}: contains no subgraph")
    return model


_SHARED_MODELS: OrderedDict[bytes, schema.ModelT] = OrderedDict()
_SHARED_LOCK = threading.Lock()
_SHARED_KEEP = 4                 # files
_SHARED_MAX_BYTES = 64 << 20     # of file bytes in all (a parsed model holds about as much again)


def read_model(data: bytes, label: str = "<bytes>") -> schema.ModelT:
    """:func:`parse_model` for reading only: the object-API model of the last few distinct
    files read (at most four, 64 MB of files in all; a larger file is parsed every time) is
    kept and handed out again (parsing SINet's 0.4 MB takes 0.1-0.2 s, and an export reads
    its file a dozen times: its checks, each runner's output kind, the GPU rules). The model
    is shared: do not modify it (edit a :func:`parse_model` copy)."""
    data = bytes(data)
    with _SHARED_LOCK:
        model = _SHARED_MODELS.get(data)
        if model is not None:
            _SHARED_MODELS.move_to_end(data)
            return model
    model = parse_model(data, label)
    if len(data) <= _SHARED_MAX_BYTES:
        with _SHARED_LOCK:
            _SHARED_MODELS[data] = model
            while (len(_SHARED_MODELS) > _SHARED_KEEP
                   or sum(len(d) for d in _SHARED_MODELS) > _SHARED_MAX_BYTES):
                _SHARED_MODELS.popitem(last=False)
    return model


def pack_model(model: schema.ModelT) -> bytes:
    """The ``.tflite`` bytes of an object-API model."""
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)


def op_name(model: schema.ModelT, opcode_index: int) -> str:
    """The name of an operator code: the builtin's (``CONV_2D``), ``FLEX:<op>`` for a
    TensorFlow (Flex) op, ``CUSTOM:<name>`` for another custom op, or the code's number for
    a builtin this schema does not know."""
    code = model.operatorCodes[opcode_index]
    builtin = int(flatbuffer_utils.get_builtin_code_from_operator_code(code))
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = _text(code.customCode)
        return f"FLEX:{custom[4:]}" if custom.startswith("Flex") else f"CUSTOM:{custom}"
    return flatbuffer_utils.opcode_to_name(model, opcode_index) or str(builtin)


def type_name(tensor_type: int) -> str:
    """The schema's name of a tensor type: ``FLOAT32``, ``INT8``, ..."""
    try:
        return flatbuffer_utils.type_to_name(int(tensor_type))
    except KeyError:
        return f"TYPE_{tensor_type}"


def io_details(sub, indices) -> list[dict]:
    """``name``, ``shape``, ``dtype`` (lower case: ``float32``, ``uint8``), ``scale`` and
    ``zero_point`` (first channel; None when not quantized) of the tensors ``indices``."""
    out = []
    for i in indices:
        t = sub.tensors[i]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else None
        zero = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else None
        out.append({"name": _text(t.name), "shape": [int(d) for d in t.shape], "dtype": type_name(t.type).lower(),
                    "scale": scale, "zero_point": zero})
    return out


def is_constant(model: schema.ModelT, tensor) -> bool:
    """Whether ``tensor`` is backed by a non-empty buffer (a weight or another constant)."""
    buf = model.buffers[tensor.buffer] if tensor.buffer else None
    return buf is not None and ((buf.data is not None and len(buf.data) > 0) or (buf.size or 0) > 0)


@dataclass
class TFLiteContents:
    """What a ``.tflite`` file holds (first subgraph): its ops in order, I/O details, the
    count of tensors per type, the number of subgraphs, and ``problems``: rule violations a
    checker found (:func:`sinet_tf.export.quantize.inspect_tflite`; empty unless one ran)."""

    ops: list[str]
    inputs: list[dict]
    outputs: list[dict]
    tensor_types: Counter
    num_subgraphs: int = 1
    problems: list[str] = field(default_factory=list)

    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.ops).items()))


def read_contents(data: bytes, label: str = "<bytes>") -> TFLiteContents:
    model = read_model(data, label)
    sub = model.subgraphs[0]
    return TFLiteContents(ops=[op_name(model, op.opcodeIndex) for op in sub.operators],
                          inputs=io_details(sub, sub.inputs), outputs=io_details(sub, sub.outputs),
                          tensor_types=Counter(type_name(t.type).lower() for t in sub.tensors),
                          num_subgraphs=len(model.subgraphs))


def input_range(contents: TFLiteContents) -> tuple[tuple[float, float], str]:
    """The value range RGB pixels are mapped to for this file, and why: ``(0, 1)`` for
    MediaPipe's selfie segmentation models (recognized by their signature: one float32 input
    named ``input_1`` of 256x256x3 or 144x256x3 and one single-channel output), else
    ``(0, 255)``, what every ``sinet export`` file takes."""
    ins, outs = contents.inputs, contents.outputs
    if (len(ins) == 1 and len(outs) == 1 and ins[0]["name"] == "input_1" and ins[0]["dtype"] == "float32"
            and ins[0]["shape"][1:] in ([256, 256, 3], [144, 256, 3]) and outs[0]["shape"][-1] == 1):
        return (0.0, 1.0), "MediaPipe selfie signature"
    return (0.0, 255.0), "default"


def _is_constant_one(model, sub, producer, tensor: int) -> bool:
    """Whether ``tensor`` is a constant of ones (stored, or a DEQUANTIZE of a stored fp16 one)."""
    op = producer.get(tensor)
    if op is not None and op_name(model, op.opcodeIndex) == "DEQUANTIZE":
        tensor = int(op.inputs[0])
    t = sub.tensors[tensor]
    if not is_constant(model, t):
        return False
    dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}.get(t.type)
    if dtype is None:
        return False
    data = model.buffers[t.buffer].data
    if data is None:
        return False
    values = np.frombuffer(bytes(bytearray(data)), dtype=dtype)
    return values.size > 0 and bool(np.all(values == 1))


def output_kind(data: bytes) -> str:
    """``probabilities`` if the first output comes from LOGISTIC or SOFTMAX (possibly through
    QUANTIZE/DEQUANTIZE, pixel rearrangements such as the DEPTH_TO_SPACE after an int8
    block classifier, or a channel-picking CONV_2D after a SOFTMAX), or from a MINIMUM with
    a constant 1 (a matte clipped to [0, 1], as the guided refinement of ``sinet export
    --refine guided`` ends), else ``logits``."""
    model = read_model(data)
    sub = model.subgraphs[0]
    producer = {int(t): op for op in sub.operators for t in op.outputs}
    tensor, conv_seen = int(sub.outputs[0]), False
    for _ in range(6):
        op = producer.get(tensor)
        if op is None:
            return "logits"
        name = op_name(model, op.opcodeIndex)
        if name in ("LOGISTIC", "SOFTMAX"):
            return "probabilities"
        if name == "MINIMUM" and any(_is_constant_one(model, sub, producer, int(t)) for t in op.inputs):
            return "probabilities"
        if name in ("QUANTIZE", "DEQUANTIZE", "DEPTH_TO_SPACE", "RESHAPE") or (name == "CONV_2D" and not conv_seen):
            conv_seen = conv_seen or name == "CONV_2D"
            tensor = int(op.inputs[0])
            continue
        return "logits"
    return "logits"


# constant int32/int64 tensors are weights only in these positions (biases of integer
# convolutions); elsewhere they are shapes, axes, paddings or sizes
_BIAS_POSITIONS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}


def count_weight_params(data: bytes) -> int:
    """Values stored in the file's constant weight tensors: every tensor backed by a
    non-empty buffer that an operator reads, counted once (so a constant the converter
    shares between ops, such as one zero bias, counts once; a grouped convolution exported
    as a dense CONV_2D counts its zero blocks). int32/int64 constants count only as a
    convolution's bias (elsewhere they are shapes, axes, paddings). In a float16 model the
    fp16 weights count (what DEQUANTIZE makes of them at load is not a constant)."""
    model = read_model(data)
    sub = model.subgraphs[0]
    integer = {schema.TensorType.INT32, schema.TensorType.INT64}
    counted, total = set(), 0
    for op in sub.operators or []:
        name = op_name(model, op.opcodeIndex)
        for pos, ti in enumerate(op.inputs if op.inputs is not None else []):
            ti = int(ti)
            if ti < 0 or ti in counted:
                continue
            t = sub.tensors[ti]
            if not is_constant(model, t):
                continue
            if t.type in integer and _BIAS_POSITIONS.get(name) != pos:
                continue
            counted.add(ti)
            total += int(np.prod(t.shape)) if t.shape is not None and len(t.shape) else 1
    return total
