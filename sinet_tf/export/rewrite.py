"""Numerically equivalent graph rewrites applied before full-integer (int8) conversion.

Measured here (LiteRT 2.x, XNNPACK on x86, 60 humanseg290 val images at 224x224, person
IoU Keras -> int8): official SINet 0.683 -> 0.644 with only the first two rewrites below,
0.685-0.691 with all of them; ExtremeC3Net 0.724 -> 0.586 -> 0.698. The rewrites:

* **PReLU** ``= alpha * x + (1 - alpha) * relu(x)``; with ``b = 1 - alpha``,
  ``b * relu(x) = sign(b) * relu(|b| * x)``. int8 PRELU is not taken by XNNPACK (each one
  splits the delegated graph; SINet has 39), and NEG, a standalone RELU, MAXIMUM and MINIMUM
  are not either. The per-channel products are 1x1 *depthwise convolutions* (the ReLU fused
  into the second), not MULs: XNNPACK's int8 MUL by a ``[1, 1, C]`` constant is ~5x slower
  (a 28x28x96 PReLU: 1.48 ms as MUL/MUL/ADD, 0.26 ms as DW/DW/ADD, one thread).
* **AveragePooling2D(k, stride k, valid)** -> a k x k depthwise conv with weights ``1/k^2``
  (int8 AVERAGE_POOL_2D is not taken by XNNPACK either).
* **BatchNormalization that does not follow a conv** (after a concat, a residual add or a
  bilinear resize) is MUL + ADD in TFLite, and the converter gives the concat feeding such a
  MUL that MUL's output scale: in SINet ``BR2`` the concat (and, since int8 CONCATENATION
  shares one scale, both of its inputs, ``level2_0`` and ``output2``) got a range of 30 for
  values in [-1.5, 4]: ``level2_0``'s output used 8% of the int8 range. So such a BN is
  (a) folded into the conv before a bilinear resize (the resize weights sum to 1, so
  ``resize(s*x + t) = s*resize(x) + t``), (b) after a concat whose parts are BN/conv
  outputs, folded slice by slice into those parts, else (c) one 1x1 depthwise conv with bias
  (:class:`ChannelAffine`). The folded BN is left as :class:`FoldedAway` (an identity).
* **Residual add -> BN** where the added concat's parts are raw conv outputs (ExtremeC3Net's
  C3 modules: one branch used 2% of the concat's shared int8 range): the BN is folded into
  those convs and only its scale stays on the other addend (:class:`ScaledAdd`, a 1x1
  depthwise conv + ADD). IoU loss on ExtremeC3Net 0.055 -> 0.026.

* **conv -> [linear Activation] -> 1x1 conv** (the export heads' fixed difference conv on
  SINet's logits) -> one conv with kernel ``W1 @ W2``: one full-resolution op less.

Tried and dropped: concat equalization from BN statistics (scale a concat's smaller parts
up through a PReLU/BN/conv/average pool, divide the BN after it): ExtremeC3Net -0.065 and
SINet -0.015 (both worse than without). A PReLU between a depthwise conv and a 1x1 conv computed as
``[relu(z), relu(-z)]`` (depthwise multiplier 2 with fused ReLU, the 1x1 conv reading
``[W; -alpha W]``): exact and accurate, but XNNPACK's int8 depthwise with multiplier 2 is
~8x slower than multiplier 1 (4.2 vs 0.55 ms at 56x56x48) and the model ran 4x slower.

The float32/fp16 exports keep the original layers (one PRELU op is cheaper on GPUs).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import GroupedPointwiseConv

__all__ = ["ChannelAffine", "DecomposedPReLU", "FoldedAway", "ScaledAdd", "int8_friendly"]


@keras.saving.register_keras_serializable(package="sinet_tf")
class DecomposedPReLU(keras.layers.Layer):
    """PReLU with a per-channel ``alpha`` (shared over height and width), computed as
    ``alpha * x + sign(1 - alpha) * relu(|1 - alpha| * x)`` with each per-channel product a
    constant 1x1 depthwise conv (DEPTHWISE_CONV_2D, DEPTHWISE_CONV_2D + fused RELU, ADD), so
    that every op has a fast int8 XNNPACK kernel. ``signed``: some ``alpha > 1`` (else the
    sign product is left out)."""

    def __init__(self, signed: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.signed = bool(signed)

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, x):
        c = x.shape[-1]
        alpha = ops.reshape(ops.cast(self.alpha, x.dtype), (1, 1, c, 1))
        b = 1.0 - alpha
        y = ops.depthwise_conv(x, alpha, strides=1, padding="valid")
        positive = ops.relu(ops.depthwise_conv(x, ops.abs(b), strides=1, padding="valid"))
        if self.signed:
            positive = ops.depthwise_conv(positive, ops.sign(b), strides=1, padding="valid")
        return y + positive

    def get_config(self):
        return {**super().get_config(), "signed": self.signed}


@keras.saving.register_keras_serializable(package="sinet_tf")
class FoldedAway(keras.layers.Layer):
    """Identity in place of a BatchNormalization folded into another layer (keeps the
    BN's call signature so the cloned graph is unchanged; TFLite drops it)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="sinet_tf")
class ChannelAffine(keras.layers.DepthwiseConv2D):
    """``s * x + t`` per channel as a 1x1 depthwise convolution with bias: a standalone
    BatchNormalization in one int8 op (the converter otherwise emits MUL + ADD)."""

    def __init__(self, **kwargs):
        kwargs.update(kernel_size=1, use_bias=True)
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        return super().call(inputs)


@keras.saving.register_keras_serializable(package="sinet_tf")
class ScaledAdd(keras.layers.Layer):
    """``scale * x + y`` (``scale`` per channel, a 1x1 depthwise conv): a residual Add whose
    following BatchNormalization was folded into ``y``'s producers, leaving its scale on ``x``."""

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(1, 1, input_shape[0][-1], 1), initializer="ones")

    def call(self, inputs):
        x, y = inputs
        return ops.depthwise_conv(x, ops.cast(self.scale, x.dtype), strides=1, padding="valid") + y

    def compute_output_shape(self, input_shape):
        return input_shape[1]


_CONV_SINKS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def _graph(model: keras.Model):
    """``(layers, producers, consumers)`` of a functional model, from its config: the
    layer objects by name, the producer names of each layer's inputs (in order) and the
    consumer names of each layer's output (model outputs count as a consumer ``None``)."""
    config = model.get_config()
    producers = {}
    for entry in config["layers"]:
        names = []

        def walk(o):
            if isinstance(o, dict):
                if o.get("class_name") == "__keras_tensor__":
                    names.append(o["config"]["keras_history"][0])
                    return
                for v in o.values():
                    walk(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    walk(v)

        walk(entry["inbound_nodes"])
        producers[entry["name"]] = names
    consumers = {name: [] for name in producers}
    for name, ps in producers.items():
        for p in ps:
            consumers[p].append(name)
    outputs = config["output_layers"]
    for out in [outputs] if isinstance(outputs[0], str) else outputs:
        consumers[out[0]].append(None)
    return {layer.name: layer for layer in model.layers}, producers, consumers


def _bn_affine(layer):
    """``(s, t)`` with ``BN(x) = s * x + t`` (inference)."""
    w = {v.path.split("/")[-1]: np.asarray(v.numpy(), np.float64) for v in layer.weights}
    s = 1.0 / np.sqrt(w["moving_variance"] + layer.epsilon)
    if "gamma" in w:
        s = s * w["gamma"]
    t = -w["moving_mean"] * s
    if "beta" in w:
        t = t + w["beta"]
    return s, t


class _Plan:
    """Where each BatchNormalization goes. ``affine[name] = (s, t)``: the layer's output
    becomes ``s * out + t`` (a BN or a conv that absorbed a later BN); ``identity``: BN
    layers folded into an earlier layer; ``depthwise``: standalone BNs computed as one
    1x1 depthwise conv with bias."""

    def __init__(self, model):
        self.layers, self.producers, self.consumers = _graph(model)
        self.affine, self.identity, self.depthwise, self.folded_into = {}, set(), set(), {}
        self.scaled_add = {}
        self.merged = {}  # 1x1 conv name -> the conv before it, which it is merged into
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization) and self._plain_bn(layer):
                self._place(layer)
        for layer in model.layers:
            self._merge_pointwise(layer)

    @staticmethod
    def _plain_bn(layer):
        return layer.axis in (-1, 3, [-1], [3]) and len(layer.input.shape) == 4

    def _single(self, name):
        return len(self.consumers[name]) == 1

    def _sink(self, name):
        """The layer that can take an output affine for ``name``'s output, or None."""
        layer = self.layers[name]
        if name in self.identity:
            return None if self.folded_into[name] is None else self._sink(self.folded_into[name])
        if isinstance(layer, keras.layers.BatchNormalization) and name in self.affine:
            return name
        linear = layer.activation in (None, keras.activations.linear) if isinstance(layer, _CONV_SINKS) else False
        if linear and self._single(name):
            return name
        return None

    def _compose(self, name, s, t):
        s0, t0 = self.affine.get(name, (1.0, 0.0))
        self.affine[name] = (s * s0, s * t0 + t)

    def _place(self, bn):
        s, t = _bn_affine(bn)
        (src,) = self.producers[bn.name]
        prev = self.layers[src]
        if isinstance(prev, _CONV_SINKS + (GroupedPointwiseConv,)) and self._single(src):
            self.affine[bn.name] = (s, t)  # the converter folds it into the conv
            return
        # conv -> bilinear resize -> BN: resize weights sum to one, so the affine moves before it.
        if _is_resize(prev) and self._single(src):
            (conv,) = self.producers[src]
            sink = self._sink(conv)
            if sink is not None:
                self._compose(sink, s, t)
                self.identity.add(bn.name)
                self.folded_into[bn.name] = sink
                return
        # concat of BN/conv outputs -> BN: each part takes its slice of the affine.
        if isinstance(prev, keras.layers.Concatenate) and self._single(src) and prev.axis in (-1, 3):
            parts = self.producers[src]
            sinks = [self._sink(p) if self._single(p) else None for p in parts]
            if all(k is not None for k in sinks):
                offset = 0
                for p, k in zip(parts, sinks):
                    c = int(self.layers[p].output.shape[-1])
                    self._compose(k, s[offset:offset + c], t[offset:offset + c])
                    offset += c
                self.identity.add(bn.name)
                self.folded_into[bn.name] = None
                return
        # x + concat(conv outputs) -> BN: the concat's parts take the affine (their int8
        # ranges then match: each channel normalized), x keeps only the scale (ScaledAdd).
        # Only when some part is a raw conv output (ExtremeC3Net's C3 branches, whose ranges
        # differ up to 50x); parts that end in their own BN (SINet's S2 blocks) already have
        # similar ranges, and there the fold measured worse (IoU -0.013 vs +0.002).
        if isinstance(prev, keras.layers.Add) and self._single(src) and len(self.producers[src]) == 2:
            for i in (0, 1):
                x, y = self.producers[src][i], self.producers[src][1 - i]
                cat = self.layers[y]
                if not (isinstance(cat, keras.layers.Concatenate) and self._single(y) and cat.axis in (-1, 3)):
                    continue
                parts = self.producers[y]
                sinks = [self._sink(p) if self._single(p) else None for p in parts]
                raw = any(isinstance(self.layers[q], _CONV_SINKS) for q in parts)
                if raw and all(k is not None for k in sinks) and x != y:
                    offset = 0
                    for p, k in zip(parts, sinks):
                        c = int(self.layers[p].output.shape[-1])
                        self._compose(k, s[offset:offset + c], t[offset:offset + c])
                        offset += c
                    self.scaled_add[src] = (x, s)
                    self.identity.add(bn.name)
                    self.folded_into[bn.name] = None
                    return
        self.depthwise.add(bn.name)
        self.affine[bn.name] = (s, t)

    def _merge_pointwise(self, layer):
        """conv -> 1x1 conv (linear in between, nothing else reading the first): one conv
        with kernel ``W1 @ W2``. The export heads put a fixed 1x1 conv on the logits; merged
        into SINet's last 3x3 conv it saves a full-resolution op (in int8 a 224x224x2 conv
        and its requantization)."""
        if type(layer) is not keras.layers.Conv2D or layer.groups != 1 or tuple(layer.kernel_size) != (1, 1) \
                or tuple(layer.strides) != (1, 1) or layer.name in self.affine:
            return
        (src,) = self.producers[layer.name]
        while isinstance(self.layers[src], keras.layers.Activation) and self._single(src) \
                and self.layers[src].activation is keras.activations.linear:  # the models' "logits" layer
            (src,) = self.producers[src]
        first = self.layers[src]
        if type(first) is not keras.layers.Conv2D or first.groups != 1 or not self._single(src) \
                or first.activation not in (None, keras.activations.linear) or src in self.merged.values():
            return
        self.merged[layer.name] = src

    def _merged_weights(self, first_name, second):
        first = self.layers[first_name]
        w1 = np.asarray(first.kernel.numpy(), np.float64)
        b1 = np.asarray(first.bias.numpy(), np.float64) if first.use_bias else np.zeros(w1.shape[-1])
        if first_name in self.affine:
            s1, t1 = (np.broadcast_to(np.asarray(v, np.float64), w1.shape[-1:]) for v in self.affine[first_name])
            w1, b1 = w1 * s1, b1 * s1 + t1
        w2 = np.asarray(second.kernel.numpy(), np.float64)[0, 0]
        b2 = np.asarray(second.bias.numpy(), np.float64) if second.use_bias else 0.0
        return (w1 @ w2).astype(np.float32), (b1 @ w2 + b2).astype(np.float32)

    def replacement(self, layer):
        name = layer.name
        if name in self.merged.values():
            (second,) = [k for k, v in self.merged.items() if v == name]
            second = self.layers[second]
            config = {**layer.get_config(), "filters": second.filters, "use_bias": True,
                      "activation": keras.activations.serialize(second.activation)}
            return layer.__class__.from_config(config), list(self._merged_weights(name, second))
        if name in self.merged:
            return FoldedAway(name=name, dtype=layer.dtype_policy), []
        if name in self.scaled_add:
            x, scale = self.scaled_add[name]
            new = _ScaledAddFor(x, self.producers[name], name=name, dtype=layer.dtype_policy)
            return new, [np.asarray(scale, np.float32).reshape(1, 1, -1, 1)]
        if name in self.identity:
            return FoldedAway(name=name, dtype=layer.dtype_policy), []
        if name in self.depthwise:
            s, t = self.affine[name]
            c = len(s)
            new = ChannelAffine(name=name, dtype=layer.dtype_policy)
            return new, [np.asarray(s, np.float32).reshape(1, 1, c, 1), np.asarray(t, np.float32)]
        if name in self.affine and isinstance(layer, keras.layers.BatchNormalization):
            s, t = self.affine[name]
            config = {**layer.get_config(), "center": True, "scale": True}
            eps = layer.epsilon
            return keras.layers.BatchNormalization.from_config(config), [
                np.asarray(s, np.float32), np.asarray(t, np.float32), np.zeros_like(s, np.float32),
                np.full_like(s, 1.0 - eps, np.float32)]
        if name in self.affine and isinstance(layer, _CONV_SINKS):
            s, t = (np.asarray(v, np.float64) for v in self.affine[name])
            kernel = np.asarray(layer.kernel.numpy(), np.float64)
            bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else 0.0
            if isinstance(layer, keras.layers.DepthwiseConv2D):
                kernel = kernel * s.reshape(kernel.shape[2], kernel.shape[3])
            else:
                kernel = kernel * s
            new = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
            return new, [kernel.astype(np.float32), np.broadcast_to(bias * s + t, s.shape).astype(np.float32)]
        return None


def _ScaledAddFor(x, producers, **kwargs):
    """A ScaledAdd that scales input ``x`` (inputs keep their order in the graph)."""
    if producers[0] == x:
        return ScaledAdd(**kwargs)
    return _ScaledAddSecond(**kwargs)


@keras.saving.register_keras_serializable(package="sinet_tf")
class _ScaledAddSecond(ScaledAdd):
    """ScaledAdd with the scaled input second."""

    def build(self, input_shape):
        super().build(input_shape[::-1])

    def call(self, inputs):
        return super().call(inputs[::-1])

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def _is_resize(layer):
    return isinstance(layer, BilinearResize) or (
        isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation == "bilinear")


def _replacement(layer):
    if isinstance(layer, keras.layers.PReLU):
        alpha = layer.get_weights()[0]
        if alpha.ndim == 3 and alpha.shape[:2] == (1, 1):
            signed = bool((alpha > 1.0).any())
            return DecomposedPReLU(signed=signed, name=layer.name, dtype=layer.dtype_policy), [alpha]
    if isinstance(layer, keras.layers.AveragePooling2D):
        pool, strides = tuple(layer.pool_size), tuple(layer.strides)
        if pool == strides and layer.padding == "valid":
            channels = layer.input.shape[-1]
            kernel = np.full((*pool, channels, 1), 1.0 / (pool[0] * pool[1]), np.float32)
            return keras.layers.DepthwiseConv2D(pool, strides=strides, padding="valid", use_bias=False,
                                                name=layer.name, dtype=layer.dtype_policy), [kernel]
    return None


def int8_friendly(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with the rewrites above (same weights, same function)."""
    plan = _Plan(model)
    new_weights = {}

    def clone(layer):
        replaced = plan.replacement(layer) or _replacement(layer)
        if replaced is None:
            return layer.__class__.from_config(layer.get_config())
        new_layer, weights = replaced
        new_weights[layer.name] = weights
        return new_layer

    rewritten = keras.models.clone_model(model, clone_function=clone)
    for layer in rewritten.layers:
        if layer.name in new_weights:
            if new_weights[layer.name]:
                layer.set_weights(new_weights[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rewritten
