"""Reading and editing a functional Keras graph, shared by the int8 rewrite passes.

A pass reads the graph (:func:`read_graph`: each layer's producers and consumers, by
name), decides which layers change, and builds the new model with :func:`rebuild` (a
clone in which some layers are replaced and some get new weights). A layer whose work
moved into another one is left as :class:`FoldedAway`, an identity, so the graph and
every other layer's name stay as they were.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np

from sinet_tf.compat import layer_input_producers
from sinet_tf.layers.resize import BilinearResize

__all__ = ["FoldedAway", "Graph", "bn_affine", "compose_affine", "copy_model", "folded_away", "is_linear",
           "is_resize", "read_graph", "rebuild", "sharing_unchanged_layers"]

_SHARING = contextvars.ContextVar("sinet_tf_rebuild_shares_unchanged_layers", default=False)


@keras.saving.register_keras_serializable(package="sinet_tf")
class FoldedAway(keras.layers.Layer):
    """Identity in place of a BatchNormalization folded into another layer (keeps the
    BN's call signature so the cloned graph is unchanged; TFLite drops it)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):  # name, trainable, dtype: what Layer stores (its dtype policy is not an __init__ literal)
        return super().get_config()


def folded_away(layer) -> FoldedAway:
    """The identity that stands in for ``layer`` (same name and dtype policy)."""
    return FoldedAway(name=layer.name, dtype=layer.dtype_policy)


@dataclass(frozen=True)
class Graph:
    """A functional model's layers by name, the producer names of each layer's inputs
    (in order) and the consumer names of each layer's output (a model output counts as a
    consumer ``None``)."""

    layers: dict
    producers: dict
    consumers: dict

    def __iter__(self):  # layers, producers, consumers = read_graph(model)
        return iter((self.layers, self.producers, self.consumers))

    def single(self, name: str) -> bool:
        """Whether ``name``'s output has exactly one consumer."""
        return len(self.consumers[name]) == 1


def read_graph(model: keras.Model) -> Graph:
    """The :class:`Graph` of ``model``, read from the layers' call nodes (every layer here
    is called once) through :func:`sinet_tf.compat.layer_input_producers`."""
    layers = {layer.name: layer for layer in model.layers}
    producers = layer_input_producers(model)
    outputs = producers.pop("<outputs>")
    consumers = {name: [] for name in producers}
    for name, ps in producers.items():
        for p in ps:
            consumers[p].append(name)
    for p in outputs:
        consumers[p].append(None)
    return Graph(layers, producers, consumers)


@contextlib.contextmanager
def sharing_unchanged_layers():
    """Within this block :func:`rebuild` reuses each layer it neither replaces nor gives new
    weights (the same object, called again in the new graph, its variables shared) instead
    of copying it from its config: most of a rebuild's cost is creating, initializing and
    then overwriting the copies' variables. For a chain of rewrites whose intermediate
    models are neither trained nor changed in place (:func:`copy_model` still copies every
    layer); the chain's result is then copied once, so that it shares no layer with the
    model the chain started from. Read a shared layer's connections with
    :func:`read_graph`: ``layer.input`` / ``layer.output`` are its first call's."""
    with _sharing(True):
        yield


@contextlib.contextmanager
def _sharing(value: bool):
    token = _SHARING.set(value)
    try:
        yield
    finally:
        _SHARING.reset(token)


def rebuild(model: keras.Model, layers: dict | None = None, weights: dict | None = None) -> keras.Model:
    """A copy of ``model`` with ``layers[name]`` (a new, unbuilt layer of the same name)
    in place of those layers and ``weights[name]`` (a list of arrays; empty: none to set)
    as those layers' weights. Every other layer is a fresh copy from its config with its
    weights copied (within :func:`sharing_unchanged_layers`: the same layer); ``model``
    is left as it was."""
    layers, weights = layers or {}, weights or {}
    share = _SHARING.get()

    def clone(layer):
        if layer.name in layers:
            return layers[layer.name]
        if share and layer.name not in weights:
            return layer
        return layer.__class__.from_config(layer.get_config())

    rebuilt = keras.models.clone_model(model, clone_function=clone)
    before = {layer.name: layer for layer in model.layers}
    for layer in rebuilt.layers:
        if layer.name in weights:
            if weights[layer.name]:
                layer.set_weights(weights[layer.name])
        elif layer.weights and layer is not before[layer.name]:
            layer.set_weights(before[layer.name].get_weights())
    return rebuilt


def copy_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the same weights in new layers (also within
    :func:`sharing_unchanged_layers`): it shares no layer with ``model``."""
    with _sharing(False):
        return rebuild(model)


def is_linear(layer) -> bool:
    """A layer without an activation (or a linear one)."""
    return getattr(layer, "activation", None) in (None, keras.activations.linear)


def is_resize(layer) -> bool:
    """A bilinear resize (its weights sum to one for every output pixel)."""
    return isinstance(layer, BilinearResize) or (
        isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "bilinear")


def bn_affine(layer):
    """``(s, t)`` with ``BN(x) = s * x + t`` (inference), in float64."""
    w = {v.path.split("/")[-1]: np.asarray(v.numpy(), np.float64) for v in layer.weights}
    s = 1.0 / np.sqrt(w["moving_variance"] + layer.epsilon)
    if "gamma" in w:
        s = s * w["gamma"]
    t = -w["moving_mean"] * s
    if "beta" in w:
        t = t + w["beta"]
    return s, t


def compose_affine(first, s, t):
    """``(s, t)`` applied after the affine ``first = (s0, t0)``: ``(s s0, s t0 + t)``."""
    s0, t0 = first
    return s * s0, s * t0 + t


@dataclass
class RewriteContext:
    """What a pass may use besides the model: calibration ``images`` (``[N, H, W, 3]``
    float32, or None), the :class:`DecomposedPReLU` form ``prelu_mode`` (a mode, a function
    of a PReLU's alpha that returns one, or ``"auto"``: :func:`auto_prelu_mode`), the
    keyword arguments of :func:`equalize_channels`, and the export ``mode`` the passes
    run for (``"int8"`` or ``"float"``: a pass may choose its form by it)."""

    images: np.ndarray | None = None
    prelu_mode: str | Callable = "auto"
    equalization: dict = field(default_factory=dict)
    mode: str = "int8"
