"""Conversion of Keras models to ``.tflite`` with a static ``[1, H, W, 3]`` input.

Facts this relies on (verified with TF 2.21, see DESIGN.md): the TFLite converter's
``from_keras_model`` on a functional model whose input has batch size 1 produces a
fully static graph; a ``None`` batch leaves ``-1`` in the shape signatures (mobile GPU
delegates refuse dynamic shapes) and turns dilated convs into SPACE_TO_BATCH_ND.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from sinet_tf.io import write_atomic

__all__ = ["with_fixed_batch", "convert_float32", "write_atomic", "TFLiteRunner"]


def with_fixed_batch(model: keras.Model, batch_size: int = 1) -> keras.Model:
    """The same functional model (same weights) rebuilt with a fixed batch size."""
    batch_shapes = [tuple(t.shape) for t in model.inputs]
    if all(s[0] == batch_size for s in batch_shapes):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"]["batch_shape"]
            if any(d is None for d in shape[1:]):
                raise ValueError(f"model {model.name!r}: input {layer['name']!r} has a dynamic size "
                                 f"{tuple(shape)}; export needs a fixed height and width")
            layer["config"]["batch_shape"] = [batch_size, *shape[1:]]
    fixed = model.__class__.from_config(config)
    fixed.set_weights(model.get_weights())
    return fixed


def convert_float32(model: keras.Model) -> bytes:
    """Convert to a float32 ``.tflite`` (builtin ops only) with a batch-1 static input."""
    from sinet_tf.export.quantize import convert

    return convert(with_fixed_batch(model, 1), "none")


class TFLiteRunner:
    """A ``.tflite`` model under the LiteRT interpreter (``ai_edge_litert``)."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, (bytes, bytearray)):
            self._data = bytes(model)
            self.interpreter = Interpreter(model_content=bytes(model), num_threads=num_threads)
        else:
            if not Path(model).is_file():
                raise FileNotFoundError(f"TFLite model not found: {model}")
            self._data = Path(model).read_bytes()
            try:
                self.interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
            except ValueError as e:
                raise ValueError(f"{model}: not a loadable TFLite model ({e})") from e
        self.interpreter.allocate_tensors()
        self.input_details = self.interpreter.get_input_details()
        self.output_details = self.interpreter.get_output_details()

    @property
    def output_kind(self) -> str:
        """``logits`` or ``probabilities`` (see :func:`sinet_tf.export.quantize.output_kind`)."""
        from sinet_tf.export.quantize import output_kind

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
        if d["dtype"] in (np.int8, np.uint8) and x.dtype != d["dtype"]:
            scale, zero = d["quantization"]
            info = np.iinfo(d["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        self.interpreter.set_tensor(d["index"], x.astype(d["dtype"]))
        self.interpreter.invoke()
        o = self.output_details[0]
        y = self.interpreter.get_tensor(o["index"])
        if o["dtype"] in (np.int8, np.uint8):
            scale, zero = o["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)
