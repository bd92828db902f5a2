"""Output heads for export: what the exported model returns instead of raw logits.

``logits``        the network's own output (C channels; 1 for single-logit models).
``probabilities`` per-class probabilities, ``[1, H, W, max(C, 2)]``.
``mask``          one channel: the person probability.

Every head is built from ops the mobile GPU delegate runs and that quantize well (no
ARG_MAX, which the delegate refuses). For two classes the softmax is written as what it
equals, ``softmax(l)_1 = sigmoid(l_1 - l_0)``: a fixed 1x1 convolution (kernel
``[[1, -1], [-1, 1]]``) followed by LOGISTIC. The difference of logits is bounded by
construction of the conv and LOGISTIC's int8 output has the fixed scale 1/256, whereas an
int8 SOFTMAX over two channels spends its range on the larger logit. A single-logit model
(ExtremeC3Net) gives ``[sigmoid(-l), sigmoid(l)]`` the same way; with three or more classes
the head is a SOFTMAX (and, for ``mask``, a fixed 1x1 conv that picks the person channel).
"""

from __future__ import annotations

import keras
import numpy as np

from sinet_tf.runtime.heads import PERSON_CLASS, person_probability_from_output

__all__ = ["OUTPUT_HEADS", "PERSON_CLASS", "with_output_head", "person_probability_from_output"]

OUTPUT_HEADS = ("logits", "probabilities", "mask")


def _fixed_conv(x, kernel: np.ndarray, name: str):
    """A frozen 1x1 convolution with the given ``[C_in, C_out]`` kernel and no bias."""
    kernel = np.asarray(kernel, dtype=np.float32)
    layer = keras.layers.Conv2D(kernel.shape[1], 1, use_bias=False, trainable=False, dtype="float32", name=name)
    y = layer(x)
    layer.set_weights([kernel[None, None]])
    return y


def with_output_head(model: keras.Model, head: str) -> keras.Model:
    """``model`` (first output only: auxiliary/boundary outputs are training-time heads)
    with the export head ``head`` on top; ``logits`` returns the single-output model."""
    if head not in OUTPUT_HEADS:
        raise ValueError(f"unknown output head {head!r}; choose one of {', '.join(OUTPUT_HEADS)}")
    logits = model.outputs[0]
    channels = int(logits.shape[-1])
    if head == "logits":
        return model if len(model.outputs) == 1 else keras.Model(model.inputs, logits, name=model.name)
    if channels == 1:
        kernel = [[-1.0, 1.0]] if head == "probabilities" else [[1.0]]
        y = keras.layers.Activation("sigmoid", dtype="float32", name=head if head != "mask" else "person_probability")(
            _fixed_conv(logits, kernel, "head_difference"))
    elif channels == 2:
        kernel = [[1.0, -1.0], [-1.0, 1.0]] if head == "probabilities" else [[-1.0], [1.0]]
        y = keras.layers.Activation("sigmoid", dtype="float32", name=head if head != "mask" else "person_probability")(
            _fixed_conv(logits, kernel, "head_difference"))
    else:
        y = keras.layers.Softmax(axis=-1, dtype="float32", name="probabilities")(logits)
        if head == "mask":
            pick = np.zeros((channels, 1), np.float32)
            pick[PERSON_CLASS, 0] = 1.0
            y = _fixed_conv(y, pick, "person_probability")
    return keras.Model(model.inputs, y, name=model.name)
