"""Loading Keras models: ``.keras`` files (safe mode) or registry names with an optional
checkpoint, at a chosen input size."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

import sinet_tf.models  # noqa: F401  (registers the architectures' custom layers for deserialization)
from sinet_tf.registry import build_model
from sinet_tf.weights import load_weights

__all__ = ["load_keras_model", "load_model"]


def load_keras_model(path: str | os.PathLike):
    """Load a ``.keras`` file (custom layers are registered, so ``safe_mode`` stays on)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):   # Keras would call it "File not found"
        with open(path, "rb") as f:
            head = f.read(512)
        what = (f"a text file starting with {head[:40].decode('ascii')!r}"
                if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else
                "empty" if not head else f"a file starting with the bytes {head[:8].hex(' ')}")
        raise ValueError(f"{path}: not a loadable Keras model (a .keras file is a zip archive; this is {what})")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable Keras model ({type(e).__name__}: {e})") from e
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def _with_input_size(model, source, input_size):
    """A ``.keras`` model rebuilt at another input size (same weights), or a clear error."""
    current = tuple(int(d) for d in model.inputs[0].shape[1:3])
    if tuple(input_size) == current:
        return model
    if min(input_size) < 1:
        raise ValueError(f"{source}: input size {input_size[0]}x{input_size[1]}: height and width must be positive")
    try:
        from sinet_tf.registry import get_model_info

        multiple = get_model_info(model.name).input_multiple   # a .keras of a registered architecture
    except KeyError:
        multiple = None
    if multiple and any(v % multiple for v in input_size):
        h, w = input_size
        raise ValueError(f"{source}: input size {h}x{w}: {model.name} takes multiples of {multiple} "
                         f"(e.g. {max(multiple, h // multiple * multiple)}x{max(multiple, w // multiple * multiple)})")
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [layer["config"]["batch_shape"][0], *input_size, 3]
    try:
        resized = keras.Model.from_config(config)
        resized.set_weights(model.get_weights())
    except Exception as e:
        first = " ".join(str(e).split())[:300]   # TensorFlow's graph errors run over many lines
        raise ValueError(f"{source}: cannot run at input size {input_size[0]}x{input_size[1]} (it was saved at "
                         f"{current[0]}x{current[1]}): {type(e).__name__}: {first}") from e
    return resized


def load_model(source: str | os.PathLike, weights: str | os.PathLike | None = None, input_size=None):
    """A Keras model from a ``.keras`` file or a registry name, with an optional checkpoint
    (an official ``.npz``/``.pth``, or a ``.weights.h5`` file), at ``input_size``
    ``(height, width)`` when given (registry names check it against the architecture)."""
    suffix = Path(str(source)).suffix.lower()
    if suffix == ".tflite":
        raise ValueError(f"{source}: a .tflite file is not a Keras model; give a .keras file or a registry name")
    if input_size is not None:
        input_size = (int(input_size[0]), int(input_size[1]))
    if suffix == ".keras":
        model = load_keras_model(source)
        if input_size is not None:
            model = _with_input_size(model, source, input_size)
    else:
        model = build_model(str(source), input_shape=None if input_size is None else (*input_size, 3))
    if weights is not None:
        w = Path(weights)
        if w.name.endswith(".weights.h5"):
            if not w.is_file():
                raise FileNotFoundError(f"weights file not found: {w}")
            model.load_weights(w)
        else:
            load_weights(model, w)
    return model
