"""Pieces every model builder shares: the normalized input and input-size checks."""

from __future__ import annotations

import keras

from sinet_tf.layers.normalization import InputNormalization

__all__ = ["check_input_shape", "normalized_input", "logits_output"]


def check_input_shape(model_name, input_shape, multiple):
    """Raise a clear error for sizes the architecture cannot take."""
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"{model_name}: input_shape must be (height, width, 3) RGB, got {tuple(input_shape)}")
    h, w = input_shape[:2]
    bad = [v for v in (h, w) if v is None or v <= 0 or v % multiple]
    if bad:
        examples = ", ".join(str(multiple * k) for k in range(max(1, 224 // multiple - 1), 224 // multiple + 3))
        raise ValueError(
            f"{model_name}: input size {h}x{w} is not supported; height and width must be positive "
            f"multiples of {multiple} (for example {examples})")


def normalized_input(input_shape, normalization, batch_size=None, name="image"):
    """``keras.Input`` of RGB pixels in [0, 255] followed by the model's normalization preset."""
    inputs = keras.Input(shape=tuple(input_shape), batch_size=batch_size, name=name)
    return inputs, InputNormalization(normalization, name="normalize")(inputs)


def logits_output(x, name="logits"):
    """Final logits in float32, also under a mixed-precision policy (an identity in TFLite)."""
    return keras.layers.Activation("linear", dtype="float32", name=name)(x)
