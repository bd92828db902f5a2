"""PReLU as ops that XNNPACK runs in int8 (:class:`DecomposedPReLU`).

``x + relu((alpha - 1) x)``: one MUL with the ReLU fused and one ADD (int8 PRELU is not
delegated by XNNPACK; neither are NEG, a standalone RELU, MAXIMUM, MINIMUM). Near-ReLU
layers (median ``|alpha|`` < :data:`NEAR_RELU`, most of ExtremeC3Net's) use
``alpha x + relu((1 - alpha) x)`` instead, one MUL more, because the two terms of the
first form cancel for ``x < 0`` (:func:`auto_prelu_mode`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.export.passes.graph import RewriteContext, rebuild

__all__ = ["NEAR_RELU", "DecomposedPReLU", "auto_prelu_mode", "decompose_prelus"]

NEAR_RELU = 0.05  # median |alpha| below which a PReLU counts as nearly a ReLU (auto_prelu_mode)


@keras.saving.register_keras_serializable(package="sinet_tf")
class DecomposedPReLU(keras.layers.Layer):
    """PReLU with a per-channel ``alpha`` (shared over height and width) as ops that
    XNNPACK runs in int8 (int8 PRELU is not delegated: a partition break and the builtin
    kernel, ~19x the float time). ``signed``: some ``alpha > 1``. Three exact forms:

    ``"add"``: ``PReLU(x) = x + (1 - alpha) relu(-x) = x + relu((alpha - 1) x)`` when every
    ``alpha <= 1`` (signed: ``x + sign(c) relu(-|c| x)``, ``c = 1 - alpha``, one MUL more):
    one MUL by the per-channel constant with the ReLU fused into it, one ADD.
    ``"split"``: ``alpha x + relu((1 - alpha) x)`` (signed: ``alpha x + sign(1 - alpha)
    relu(|1 - alpha| x)``): MUL, MUL(+ReLU), ADD.
    ``"depthwise"``: ``"split"`` with each per-channel product a 1x1 depthwise conv.

    ``"add"`` is the fastest (XNNPACK, one thread, 28x28x96 int8: 0.083 ms; depthwise
    0.224 ms; float32 PRELU 0.053-0.077 ms), but for ``x < 0`` its two terms nearly cancel
    when ``alpha`` is near 0, so the result carries the int8 rounding of both terms;
    ``"split"`` and ``"depthwise"`` compute ``alpha x`` directly (and the ReLU term is
    exactly 0 there). The per-channel constants are rank-1 ``[C]`` tensors (MUL operands
    are quantized per tensor; depthwise weights per channel).
    """

    MODES = ("add", "split", "depthwise")

    def __init__(self, signed: bool = True, mode: str = "add", **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown PReLU decomposition {mode!r}; choose one of {', '.join(self.MODES)}")
        self.signed = bool(signed)
        self.mode = mode

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, x):
        alpha = ops.reshape(ops.cast(self.alpha, x.dtype), (-1,))
        c = 1.0 - alpha
        if self.mode == "add":
            if not self.signed:
                return x + ops.relu(x * (alpha - 1.0))
            return x + ops.relu(x * (-ops.abs(c))) * ops.sign(c)
        if self.mode == "split":
            positive = ops.relu(x * ops.abs(c))
            return x * alpha + (positive * ops.sign(c) if self.signed else positive)
        channels = x.shape[-1]

        def per_channel(t, w):
            return ops.depthwise_conv(t, ops.reshape(w, (1, 1, channels, 1)), strides=1, padding="valid")

        positive = ops.relu(per_channel(x, ops.abs(c)))
        if self.signed:
            positive = per_channel(positive, ops.sign(c))
        return per_channel(x, alpha) + positive

    def get_config(self):
        return {**super().get_config(), "signed": self.signed, "mode": self.mode}


def auto_prelu_mode(alpha, threshold: float = NEAR_RELU) -> str:
    """:class:`DecomposedPReLU`'s form for one layer: ``"add"`` (two ops), unless the layer
    is nearly a ReLU (median ``|alpha|`` below ``threshold``), where ``"add"``'s two terms
    cancel for ``x < 0`` and ``"split"`` keeps ``alpha x`` exact."""
    return "add" if float(np.median(np.abs(alpha))) >= threshold else "split"


def decompose_prelus(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` with every PReLU whose ``alpha`` is per channel (shared over
    height and width) a :class:`DecomposedPReLU` (``model`` itself when there is none).
    ``context.prelu_mode``: the form, a function of a PReLU's alpha that returns one, or
    ``"auto"`` (:func:`auto_prelu_mode`, also without a context)."""
    prelu_mode = "auto" if context is None else context.prelu_mode
    if prelu_mode == "auto":
        prelu_mode = auto_prelu_mode
    replaced, weights = {}, {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.PReLU):
            continue
        alpha = layer.get_weights()[0]
        if alpha.ndim == 3 and alpha.shape[:2] == (1, 1):
            signed = bool((alpha > 1.0).any())
            mode = prelu_mode(alpha) if callable(prelu_mode) else prelu_mode
            replaced[layer.name] = DecomposedPReLU(signed=signed, mode=mode, name=layer.name, dtype=layer.dtype_policy)
            weights[layer.name] = [alpha]
    return rebuild(model, replaced, weights) if replaced else model
