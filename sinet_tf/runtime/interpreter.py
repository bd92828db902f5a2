"""Running ``.tflite`` files under LiteRT's interpreter (``ai_edge_litert``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sinet_tf.runtime.model_file import output_kind

__all__ = ["TFLiteRunner", "make_interpreter", "quantization_of"]


def make_interpreter(model: str | os.PathLike | bytes, threads: int | None = None, xnnpack: bool = True,
                     keep_all_tensors: bool = False):
    """An allocated LiteRT ``Interpreter`` for a ``.tflite`` path or its bytes.
    ``xnnpack=False`` runs the builtin kernels without the default XNNPACK delegate;
    ``keep_all_tensors`` keeps every intermediate tensor readable after ``invoke()``."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if keep_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    if threads is not None:
        kwargs["num_threads"] = int(threads)
    if isinstance(model, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(model), **kwargs)
    else:
        if not Path(model).is_file():
            raise FileNotFoundError(f"TFLite model not found: {model}")
        try:
            interpreter = Interpreter(model_path=str(model), **kwargs)
        except ValueError as e:
            raise ValueError(f"{model}: not a loadable TFLite model ({e})") from e
    interpreter.allocate_tensors()
    return interpreter


def quantization_of(detail: dict) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of a per-tensor quantized input/output detail (from the
    interpreter's ``quantization_parameters``), or None for a float tensor."""
    q = detail.get("quantization_parameters") or {}
    scales, zeros = q.get("scales"), q.get("zero_points")
    if scales is None or len(scales) == 0:
        return None
    return float(scales[0]), int(zeros[0]) if zeros is not None and len(zeros) else 0


class TFLiteRunner:
    """A ``.tflite`` model under the LiteRT interpreter, called on float RGB pixels."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int | None = None):
        self._data = bytes(model) if isinstance(model, (bytes, bytearray)) else None
        self.interpreter = make_interpreter(model, threads=num_threads)
        if self._data is None:
            self._data = Path(model).read_bytes()
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    @property
    def output_kind(self) -> str:
        """``logits`` or ``probabilities`` (see :func:`sinet_tf.runtime.model_file.output_kind`)."""
        return output_kind(self._data)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input_details[0]["shape"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run one batch-1 input (float RGB pixels; quantized inputs are quantized here)
        and return the first output, dequantized to float32."""
        d = self.input_details[0]
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        q = quantization_of(d)
        if d["dtype"] in (np.int8, np.uint8) and x.dtype != d["dtype"] and q is not None:
            scale, zero = q
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(d["index"], x.astype(d["dtype"]))
        self.interpreter.invoke()
        o = self.output_details[0]
        y = self.interpreter.get_tensor(o["index"])
        q = quantization_of(o)
        if o["dtype"] in (np.int8, np.uint8) and q is not None:
            scale, zero = q
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)
