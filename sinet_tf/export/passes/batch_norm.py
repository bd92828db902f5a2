"""BatchNormalizations that do not follow a conv, folded or made one int8 op.

A BatchNormalization after a concat, a residual add or a bilinear resize is MUL + ADD in
TFLite, and the converter gives the concat feeding such a MUL that MUL's output scale: in
SINet ``BR2`` the concat (and, since int8 CONCATENATION shares one scale, both of its
inputs, ``level2_0`` and ``output2``) got a range of 30 for values in [-1.5, 4]:
``level2_0``'s output used 8% of the int8 range. So such a BN is (a) folded into the conv
before a bilinear resize (the resize weights sum to 1, so ``resize(s*x + t) = s*resize(x)
+ t``), (b) after a concat whose parts are BN/conv outputs, folded slice by slice into
those parts, (c) after a resize of anything else, moved before the resize
(:class:`AffineThenResize`, on a 4x smaller tensor), else (d) one 1x1 depthwise conv with
bias (:class:`ChannelAffine`). A folded BN is left as
:class:`~sinet_tf.export.passes.graph.FoldedAway` (an identity).

**Residual add -> BN** where the added concat's parts are raw conv outputs (ExtremeC3Net's
C3 modules: one branch used 2% of the concat's shared int8 range): the BN is folded into
those convs and only its scale stays on the other addend (:class:`ScaledAdd`, a 1x1
depthwise conv + ADD). IoU loss on ExtremeC3Net 0.055 -> 0.026.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.export.passes.graph import (
    FoldedAway,
    RewriteContext,
    bn_affine,
    compose_affine,
    folded_away,
    is_linear,
    is_resize,
    read_graph,
    rebuild,
)
from sinet_tf.export.passes.input_normalization import OffsetConv2D
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import GroupedPointwiseConv

__all__ = ["AffineThenResize", "ChannelAffine", "ScaledAdd", "place_batch_norms"]


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

    def get_config(self):  # name, trainable, dtype: what Layer stores (its dtype policy is not an __init__ literal)
        return super().get_config()


@keras.saving.register_keras_serializable(package="sinet_tf")
class _ScaledAddSecond(ScaledAdd):
    """ScaledAdd with the scaled input second."""

    def build(self, input_shape):
        super().build(input_shape[::-1])

    def call(self, inputs):
        return super().call(inputs[::-1])

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def _scaled_add_for(x, producers, **kwargs):
    """A ScaledAdd that scales input ``x`` (inputs keep their order in the graph)."""
    if producers[0] == x:
        return ScaledAdd(**kwargs)
    return _ScaledAddSecond(**kwargs)


@keras.saving.register_keras_serializable(package="sinet_tf")
class AffineThenResize(BilinearResize):
    """``resize(s * x + t)`` with the per-channel affine a 1x1 depthwise conv with bias:
    a BatchNormalization after a bilinear resize moved before it (bilinear weights sum to
    one per output pixel, so ``resize(s x + t) = s resize(x) + t``), computed on the
    smaller tensor (SINet's ``bn_2``: 56x56x2 instead of 112x112x2)."""

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.affine_scale = self.add_weight(name="affine_scale", shape=(1, 1, c, 1), initializer="ones")
        self.affine_shift = self.add_weight(name="affine_shift", shape=(c,), initializer="zeros")

    def call(self, inputs):
        x = ops.depthwise_conv(inputs, ops.cast(self.affine_scale, inputs.dtype), strides=1, padding="valid")
        return super().call(x + ops.cast(self.affine_shift, inputs.dtype))


_CONV_SINKS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


class _Plan:
    """Where each BatchNormalization goes. ``affine[name] = (s, t)``: the layer's output
    becomes ``s * out + t`` (a BN or a conv that absorbed a later BN); ``identity``: BN
    layers folded into an earlier layer; ``depthwise``: standalone BNs computed as one 1x1
    depthwise conv with bias; ``pre_resize``: BNs moved before the bilinear resize they
    follow; ``scaled_add``: residual adds whose BN went into the added concat's parts."""

    def __init__(self, model):
        self.layers, self.producers, self.consumers = self.graph = read_graph(model)
        self.affine, self.identity, self.depthwise, self.folded_into = {}, set(), set(), {}
        self.scaled_add = {}
        self.pre_resize = {}  # resize name -> (s, t) of the BN after it
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization) and self._plain_bn(layer):
                self._place(layer)

    @staticmethod
    def _plain_bn(layer):
        return layer.axis in (-1, 3, [-1], [3]) and len(layer.input.shape) == 4

    def _single(self, name):
        return self.graph.single(name)

    def _sink(self, name):
        """The layer that can take an output affine for ``name``'s output, or None."""
        layer = self.layers[name]
        if name in self.identity:
            return None if self.folded_into[name] is None else self._sink(self.folded_into[name])
        if isinstance(layer, FoldedAway):  # an identity an earlier pass left: its producer's output
            (src,) = self.producers[name]
            return self._sink(src)
        if isinstance(layer, keras.layers.BatchNormalization) and name in self.affine:
            return name
        linear = is_linear(layer) if isinstance(layer, _CONV_SINKS) else False
        if linear and self._single(name):
            return name
        return None

    def _compose(self, name, s, t):
        self.affine[name] = compose_affine(self.affine.get(name, (1.0, 0.0)), s, t)

    def _place(self, bn):
        s, t = bn_affine(bn)
        (src,) = self.producers[bn.name]
        prev = self.layers[src]
        if isinstance(prev, OffsetConv2D) and self._single(src):  # the converter cannot fold it past the offset ADD
            self._compose(src, s, t)
            self.identity.add(bn.name)
            self.folded_into[bn.name] = src
            return
        if isinstance(prev, _CONV_SINKS + (GroupedPointwiseConv,)) and self._single(src):
            self.affine[bn.name] = (s, t)  # the converter folds it into the conv
            return
        # conv -> bilinear resize -> BN: resize weights sum to one, so the affine moves before it.
        if is_resize(prev) and self._single(src):
            (conv,) = self.producers[src]
            sink = self._sink(conv)
            if sink is not None:
                self._compose(sink, s, t)
                self.identity.add(bn.name)
                self.folded_into[bn.name] = sink
                return
        # (anything) -> bilinear resize -> BN: the BN as one 1x1 depthwise conv before the
        # resize, on the smaller tensor (AffineThenResize).
        if type(prev) is BilinearResize and self._single(src) and src not in self.pre_resize:
            self.pre_resize[src] = (s, t)
            self.identity.add(bn.name)
            self.folded_into[bn.name] = None
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

    def replacement(self, layer):
        """``(new layer, its weights)`` for ``layer``, or None: unchanged."""
        name = layer.name
        if name in self.pre_resize:
            s, t = self.pre_resize[name]
            new = AffineThenResize.from_config(layer.get_config())
            return new, [np.asarray(s, np.float32).reshape(1, 1, -1, 1), np.asarray(t, np.float32)]
        if name in self.scaled_add:
            x, scale = self.scaled_add[name]
            new = _scaled_add_for(x, self.producers[name], name=name, dtype=layer.dtype_policy)
            return new, [np.asarray(scale, np.float32).reshape(1, 1, -1, 1)]
        if name in self.identity:
            return folded_away(layer), []
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
            weights = [kernel.astype(np.float32), np.broadcast_to(bias * s + t, s.shape).astype(np.float32)]
            if isinstance(layer, OffsetConv2D):  # its border map scales with the output
                weights.append((np.asarray(layer.offset.numpy(), np.float64) * s).astype(np.float32))
            return new, weights
        return None


def place_batch_norms(model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
    """A copy of ``model`` (same function) with every BatchNormalization over the channels
    of a 4-D tensor placed as the module docstring says: a BN right after a conv stays (the
    converter folds it into the conv), with the affine of BNs folded into it as its
    weights; one after a resize, a concat or a residual add folds into the convs before it
    (:class:`~sinet_tf.export.passes.graph.FoldedAway` left in its place), moves before the
    resize (:class:`AffineThenResize`) or scales one addend (:class:`ScaledAdd`); any other
    becomes a :class:`ChannelAffine`. ``model`` itself when it has no such BN. ``context``
    is not used."""
    plan = _Plan(model)
    replaced, weights = {}, {}
    for layer in model.layers:
        found = plan.replacement(layer)
        if found is not None:
            replaced[layer.name], weights[layer.name] = found
    return rebuild(model, replaced, weights) if replaced else model
