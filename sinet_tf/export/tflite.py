"""Conversion of Keras models to ``.tflite`` with a static ``[1, H, W, 3]`` input.

Facts this relies on (verified with TF 2.21): the TFLite converter's
``from_keras_model`` on a functional model whose input has batch size 1 produces a
fully static graph; a ``None`` batch leaves ``-1`` in the shape signatures (mobile GPU
delegates refuse dynamic shapes) and turns dilated convs into SPACE_TO_BATCH_ND.
"""

from __future__ import annotations

import keras

from sinet_tf.export.quantize import convert
from sinet_tf.files import write_atomic
from sinet_tf.runtime.interpreter import TFLiteRunner

__all__ = ["with_fixed_batch", "convert_float32", "write_atomic", "TFLiteRunner"]


def with_fixed_batch(model: keras.Model, batch_size: int = 1) -> keras.Model:
    """The same functional model with a fixed batch size. A functional model's layers are
    called again on new inputs (the result shares them, and so their weights, with
    ``model``: nothing is copied); any other model is rebuilt from its config."""
    batch_shapes = [tuple(t.shape) for t in model.inputs]
    if all(s[0] == batch_size for s in batch_shapes):
        return model
    for t in model.inputs:
        if any(d is None for d in t.shape[1:]):
            raise ValueError(f"model {model.name!r}: input {t.name!r} has a dynamic size {tuple(t.shape)}; "
                             "export needs a fixed height and width")
    if type(model).__name__ == "Functional":   # what keras.Model(inputs, outputs) makes
        inputs = [keras.Input(batch_shape=(batch_size, *t.shape[1:]), dtype=t.dtype, name=t.name)
                  for t in model.inputs]
        return keras.models.clone_model(model, input_tensors=keras.tree.pack_sequence_as(model.input, inputs),
                                        clone_function=lambda layer: layer)
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [batch_size, *layer["config"]["batch_shape"][1:]]
    fixed = model.__class__.from_config(config)
    fixed.set_weights(model.get_weights())
    return fixed


def convert_float32(model: keras.Model) -> bytes:
    """Convert to a float32 ``.tflite`` (builtin ops only) with a batch-1 static input."""
    return convert(with_fixed_batch(model, 1), "none")
