"""Numerically equivalent graph rewrites applied before full-integer (int8) conversion.

Every rewrite computes the same function as the Keras model (up to float rounding; the
tests check each one). They exist because, on the x86 CPUs measured here (AVX2, no VNNI;
LiteRT 2.x with XNNPACK), int8 kernels are not faster than float32 ones for SINet's tiny
channel counts (``benchmarks/int8_kernels.py``, one thread: 1x1 convs 1.0-1.3x the float
time, 3x3 depthwise 1.7x, convs with 2-3 input channels 2.3-2.9x), ops XNNPACK does not
take in int8 fall back to the builtin kernels at 5-20x, and every extra op is another
pass over memory with its own requantization. The int8 graph therefore has to do less
work than the float one. Measured per op (``benchmarks/profile_ops.py``, official SINet,
224x224, one thread, summed warm op times): 23.6 ms before these rewrites were revised,
of which PReLU as two 1x1 depthwise convs + ADD 6.4 ms (float PRELU: 1.1 ms), the
classifier's 3x3 conv 2->2 at 224x224 2.7 ms (float: 0.9 ms), the input normalization
conv 0.75 ms. The rewrites:

* **PReLU** -> :class:`DecomposedPReLU`: ``x + relu((alpha - 1) x)``, one MUL with the ReLU
  fused and one ADD (int8 PRELU is not delegated by XNNPACK; neither are NEG, a standalone
  RELU, MAXIMUM, MINIMUM). Near-ReLU layers (median ``|alpha|`` < :data:`NEAR_RELU`, most of
  ExtremeC3Net's) use ``alpha x + relu((1 - alpha) x)`` instead, one MUL more, because the
  two terms of the first form cancel for ``x < 0`` (:func:`auto_prelu_mode`).
* **AveragePooling2D(k, stride k, valid)** -> a k x k depthwise conv with weights ``1/k^2``
  (int8 AVERAGE_POOL_2D is not delegated).
* **BatchNormalization that does not follow a conv** (after a concat, a residual add or a
  bilinear resize) is MUL + ADD in TFLite, and the converter gives the concat feeding such a
  MUL that MUL's output scale: in SINet ``BR2`` the concat (and, since int8 CONCATENATION
  shares one scale, both of its inputs, ``level2_0`` and ``output2``) got a range of 30 for
  values in [-1.5, 4]: ``level2_0``'s output used 8% of the int8 range. So such a BN is
  (a) folded into the conv before a bilinear resize (the resize weights sum to 1, so
  ``resize(s*x + t) = s*resize(x) + t``), (b) after a concat whose parts are BN/conv
  outputs, folded slice by slice into those parts, (c) after a resize of anything else,
  moved before the resize (:class:`AffineThenResize`, on a 4x smaller tensor), else (d) one
  1x1 depthwise conv with bias (:class:`ChannelAffine`). A folded BN is left as
  :class:`FoldedAway` (an identity).
* **Residual add -> BN** where the added concat's parts are raw conv outputs (ExtremeC3Net's
  C3 modules: one branch used 2% of the concat's shared int8 range): the BN is folded into
  those convs and only its scale stays on the other addend (:class:`ScaledAdd`, a 1x1
  depthwise conv + ADD). IoU loss on ExtremeC3Net 0.055 -> 0.026.
* **conv -> [linear Activation] -> 1x1 conv** (the export heads' fixed difference conv on
  SINet's logits) -> one conv with kernel ``W1 @ W2``: one full-resolution op less.
* **Few-channel full-resolution convs** (<= 4 in and out channels, stride 1, "same") run on
  2x2 pixel blocks (:class:`SpaceToDepthConv2D`): SINet's classifier 2.7 -> 0.9 ms.
* **Input normalization -> first conv**: the normalization (a 1x1 conv 3->3 over the whole
  image, 0.75 ms in int8) is folded into the first conv's kernel and bias, and a constant
  border map restores what the zero padding of the normalized image contributed
  (:class:`OffsetConv2D`, one ADD at the conv's output resolution). The int8 conv then
  reads the camera pixels themselves (scale 1).
* **Channel shuffles** after SINet's grouped 1x1 convs move into the weights of the
  per-channel layers and 1x1 convs after them (:func:`absorb_channel_shuffles`): the
  grouped conv exports as a grouped CONV_2D instead of a dense one with half its kernel
  zero (28x28, 96 -> 48: 0.15 instead of 0.26 ms).
* Optionally, with calibration images, **per-channel range equalization**
  (:func:`equalize_channels`): channels scaled up through per-channel layers and scaled
  back in the next conv's kernel, so small channels get more of their tensor's int8 levels.

Tried and dropped: concat equalization from BN statistics (scale a concat's smaller parts
up through a PReLU/BN/conv/average pool, divide the BN after it): ExtremeC3Net -0.065 and
SINet -0.015 (both worse than without); equalizing through a concat into the BN after it
(ExtremeC3Net's image-pyramid inputs): no better than without. A PReLU between a depthwise
conv and a 1x1 conv computed as ``[relu(z), relu(-z)]`` (depthwise multiplier 2 with fused
ReLU, the 1x1 conv reading ``[W; -alpha W]``): exact, but XNNPACK's int8 depthwise with
multiplier 2 is ~8x slower than multiplier 1 (4.2 vs 0.55 ms at 56x56x48). The first conv
(3 -> 12, 3x3, stride 2) as SPACE_TO_DEPTH + 2x2 conv 12 -> 12: 1.22 vs 1.30 ms, not worth
an op.

The float32/fp16 exports keep the original layers (one PRELU op is cheaper on GPUs).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from sinet_tf.compat import layer_input_producers
from sinet_tf.layers.normalization import InputNormalization
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.layers.s2 import GroupedPointwiseConv

__all__ = ["AffineThenResize", "ChannelAffine", "DecomposedPReLU", "FoldedAway", "OffsetConv2D", "ScaledAdd",
           "SpaceToDepthConv2D", "absorb_channel_shuffles", "auto_prelu_mode", "equalize_channels", "int8_friendly",
           "space_to_depth_kernel"]


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


@keras.saving.register_keras_serializable(package="sinet_tf")
class SpaceToDepthConv2D(keras.layers.Layer):
    """A stride-1 "same" convolution with few channels, computed on 2x2 pixel blocks:
    ``depth_to_space(conv(space_to_depth(x, 2), K_block), 2)``.

    Pixel ``(2Y + a, 2X + b)``, channel ``c`` is block ``(Y, X)``, channel
    ``(2a + b) * C + c`` of ``space_to_depth(x, 2)``. An output pixel of a ``k x k`` conv
    (``k = 2r + 1``, ``r <= 2``) reads input pixels within ``r`` rows/columns, i.e. blocks
    within one block, so the same map is a 3x3 "same" conv on the block grid whose kernel
    holds the original taps at the matching (block offset, phase) positions and zeros
    elsewhere (:func:`space_to_depth_kernel`). The block grid's zero padding (one block,
    two pixels) covers the original zero padding (``r`` pixels) and the extra taps it
    reaches have zero weights: the same function, exactly.

    Why: XNNPACK's int8 convolution pads the input channels of every tap and the output
    channels to its microkernel tiles, so a 224x224 conv 2->2 3x3 (SINet's classifier)
    costs 2.6 ms in int8 against 0.9 ms in float32; on 112x112 blocks with 8 -> 8
    channels it is 0.65 ms, plus 0.09 + 0.08 ms for SPACE_TO_DEPTH and DEPTH_TO_SPACE
    (both GPU-delegate ops)."""

    def __init__(self, filters: int, kernel_size: int = 3, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, 4 * c, 4 * self.filters), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(4 * self.filters,), initializer="zeros")

    def call(self, x):
        import tensorflow as tf

        y = tf.nn.space_to_depth(x, 2)
        y = ops.conv(y, ops.cast(self.kernel, y.dtype), strides=1, padding="same") + ops.cast(self.bias, y.dtype)
        return tf.nn.depth_to_space(self.activation(y), 2)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "activation": keras.activations.serialize(self.activation)}


def space_to_depth_kernel(kernel: np.ndarray, bias: np.ndarray):
    """The block kernel ``[3, 3, 4 C_in, 4 C_out]`` and bias ``[4 C_out]`` of
    :class:`SpaceToDepthConv2D` for a ``[k, k, C_in, C_out]`` stride-1 "same" kernel
    (``k`` odd, ``k <= 5``). Input pixel row ``2 (Y + u) + a`` feeds output row
    ``2 Y + a'`` through tap ``2 u + a - a' + r``."""
    k, _, cin, cout = kernel.shape
    r = k // 2
    block = np.zeros((3, 3, 4 * cin, 4 * cout), np.float64)
    for u in (-1, 0, 1):
        for v in (-1, 0, 1):
            for a in (0, 1):
                for b in (0, 1):
                    for a2 in (0, 1):
                        for b2 in (0, 1):
                            ty, tx = 2 * u + a - a2 + r, 2 * v + b - b2 + r
                            if 0 <= ty < k and 0 <= tx < k:
                                i, o = (2 * a + b) * cin, (2 * a2 + b2) * cout
                                block[u + 1, v + 1, i:i + cin, o:o + cout] = kernel[ty, tx]
    return block.astype(np.float32), np.tile(np.asarray(bias, np.float64), 4).astype(np.float32)


@keras.saving.register_keras_serializable(package="sinet_tf")
class OffsetConv2D(keras.layers.Conv2D):
    """A linear Conv2D plus a constant ``[1, H_out, W_out, C_out]`` map (one CONV_2D and
    one ADD of a constant): the first convolution with the input normalization folded
    into it, the map restoring what the zero padding of the *normalized* image
    contributed at the border (see :meth:`_Plan._norm_fold_weights`)."""

    def build(self, input_shape):
        super().build(input_shape)
        out = self.compute_output_shape(input_shape)
        self.offset = self.add_weight(name="offset", shape=(1, *out[1:]), initializer="zeros")

    def call(self, inputs):
        return super().call(inputs) + ops.cast(self.offset, self.compute_dtype)


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
NEAR_RELU = 0.05  # median |alpha| below which a PReLU counts as nearly a ReLU (auto_prelu_mode)


def _graph(model: keras.Model):
    """``(layers, producers, consumers)`` of a functional model: the layer objects by
    name, the producer names of each layer's inputs (in order) and the consumer names of
    each layer's output (model outputs count as a consumer ``None``). Read from the
    layers' call nodes (every layer here is called once)."""
    layers = {layer.name: layer for layer in model.layers}
    producers = layer_input_producers(model)
    outputs = producers.pop("<outputs>")
    consumers = {name: [] for name in producers}
    for name, ps in producers.items():
        for p in ps:
            consumers[p].append(name)
    for p in outputs:
        consumers[p].append(None)
    return layers, producers, consumers


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


# Layers that act on each channel alone: a channel permutation before them is the same
# permutation after them, with their per-channel weights permuted.
_PER_CHANNEL = (keras.layers.DepthwiseConv2D, keras.layers.BatchNormalization, keras.layers.PReLU,
                keras.layers.AveragePooling2D, keras.layers.MaxPooling2D, keras.layers.ZeroPadding2D,
                keras.layers.UpSampling2D, keras.layers.Activation, BilinearResize)


def _per_channel(layer) -> bool:
    if isinstance(layer, keras.layers.Activation):
        return layer.activation not in (keras.activations.softmax, keras.activations.log_softmax)
    return isinstance(layer, _PER_CHANNEL)


def _mixes_channels(layer) -> bool:
    """A layer whose input channels can be permuted by permuting its kernel rows."""
    return (type(layer) is keras.layers.Conv2D and layer.groups == 1) or (
        type(layer) is GroupedPointwiseConv and layer.groups == 1)


def _permute_channels(layer, weights, inv):
    """``layer``'s weights for an input whose channel ``k`` was channel ``inv[k]``."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out = [weights[0][:, :, inv, :]]
        if len(weights) > 1:
            m = weights[0].shape[-1]
            out.append(weights[1].reshape(-1, m)[inv].reshape(-1))
        return out
    if isinstance(layer, keras.layers.BatchNormalization):
        return [w[inv] for w in weights]
    if isinstance(layer, keras.layers.PReLU):
        return [w[..., inv] if w.shape[-1] == len(inv) else w for w in weights]
    if _mixes_channels(layer):
        return [weights[0][:, :, inv, :], *weights[1:]]
    return weights


def absorb_channel_shuffles(model: keras.Model) -> keras.Model:
    """A copy of ``model`` in which every :class:`~sinet_tf.layers.s2.GroupedPointwiseConv`
    with a channel shuffle whose output reaches only per-channel layers and then
    channel-mixing convolutions becomes a plain grouped ``Conv2D`` (output in group order),
    the shuffle moved into the weights downstream.

    Exact: the shuffle is a fixed permutation ``P`` of the channels; a per-channel layer
    (depthwise conv, BatchNorm, PReLU, pooling, resize) commutes with it once its
    per-channel weights are permuted, and a convolution reading ``P x`` with kernel rows
    ``W`` reads ``x`` with rows ``W[P^-1]``. In SINet every S2 module's ``c1`` feeds two
    S2 blocks (avg pool, depthwise, BN, PReLU, then a 1x1 conv).

    Why: :class:`GroupedPointwiseConv` exports as a dense CONV_2D with half of its kernel
    zero (mobile GPU delegates refused grouped convs with runtime weights; with constant
    weights the delegate takes them). XNNPACK's int8 grouped conv skips the zero blocks:
    28x28, 96 -> 48 channels in two groups, 0.15 ms against 0.26 ms dense (float32 dense
    0.25 ms)."""
    layers, producers, consumers = _graph(model)
    inverse, grouped = {}, set()
    for layer in model.layers:
        if not (type(layer) is GroupedPointwiseConv and layer.groups > 1 and layer.shuffle_groups):
            continue
        inv = np.argsort(np.asarray(layer._perm))
        reached, frontier, ok = {}, list(consumers[layer.name]), True
        while frontier and ok:
            name = frontier.pop()
            if name is None or len(producers[name]) != 1 or name in inverse:
                ok = False
            elif _mixes_channels(layers[name]):
                reached[name] = inv
            elif _per_channel(layers[name]):
                reached[name] = inv
                frontier += consumers[name]
            else:
                ok = False
        if ok:
            grouped.add(layer.name)
            inverse.update(reached)
    if not grouped:
        return model

    def clone(layer):
        if layer.name in grouped:
            return keras.layers.Conv2D(layer.filters, 1, groups=layer.groups, use_bias=layer.use_bias,
                                       name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    rewritten = keras.models.clone_model(model, clone_function=clone)
    for new in rewritten.layers:
        if not new.weights:
            continue
        old = model.get_layer(new.name)
        weights = old.get_weights()
        if new.name in inverse:
            weights = _permute_channels(old, weights, inverse[new.name])
        new.set_weights(weights)
    return rewritten


class _Plan:
    """Where each BatchNormalization goes, and which layers change. ``affine[name] = (s, t)``:
    the layer's output becomes ``s * out + t`` (a BN or a conv that absorbed a later BN);
    ``identity``: BN layers folded into an earlier layer; ``depthwise``: standalone BNs
    computed as one 1x1 depthwise conv with bias; ``pre_resize``: BNs moved before the
    bilinear resize they follow; ``norm_fold``: the first conv, with the input
    normalization folded into it; ``merged``: 1x1 convs merged into the conv before them."""

    def __init__(self, model):
        self.layers, self.producers, self.consumers = _graph(model)
        self.affine, self.identity, self.depthwise, self.folded_into = {}, set(), set(), {}
        self.scaled_add = {}
        self.merged = {}  # 1x1 conv name -> the conv before it, which it is merged into
        self.pre_resize = {}  # resize name -> (s, t) of the BN after it
        self.norm_fold = {}  # conv name -> (InputNormalization name, ZeroPadding2D name or None)
        self._find_norm_fold()
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization) and self._plain_bn(layer):
                self._place(layer)
        for layer in model.layers:
            self._merge_pointwise(layer)

    def _find_norm_fold(self):
        """InputNormalization -> [ZeroPadding2D] -> linear Conv2D, each read only by the next."""
        for name, layer in self.layers.items():
            if type(layer) is not InputNormalization or not self._single(name):
                continue
            (nxt,) = self.consumers[name]
            pad = None
            if nxt is not None and type(self.layers[nxt]) is keras.layers.ZeroPadding2D and self._single(nxt):
                pad, (nxt,) = nxt, self.consumers[nxt]
            if nxt is None:
                continue
            conv = self.layers[nxt]
            if type(conv) is keras.layers.Conv2D and conv.groups == 1 and conv.data_format == "channels_last" \
                    and conv.activation in (None, keras.activations.linear) \
                    and (pad is None or conv.padding == "valid"):
                self.norm_fold[nxt] = (name, pad)

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
        if src in self.norm_fold and self._single(src):  # the converter cannot fold it past the offset ADD
            self._compose(src, s, t)
            self.identity.add(bn.name)
            self.folded_into[bn.name] = src
            return
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

    def _norm_fold_weights(self, conv):
        """Kernel, bias and border map of the first conv with the input normalization
        ``n(x) = A x + b_n`` (a 1x1 conv: channel order and scale, then the mean) folded in.

        The original computes ``conv(pad0(A x + b_n))``; the folded conv computes
        ``conv_{W A}(pad0(x)) + sum_k W_k b_n`` (every tap ``k`` counted). At an output
        pixel whose window reaches the zero padding, the original's padded taps saw 0, not
        ``b_n``: the map adds back ``-sum_{k outside} W_k b_n`` there (it is 0 inside).
        Zero-padding raw pixels is what PAD does with an int8 input of scale 1, and
        XNNPACK fuses that PAD into the conv. Then any BN after the conv is applied to
        kernel, bias and map."""
        norm_name, pad_name = self.norm_fold[conv.name]
        norm = self.layers[norm_name]
        a = np.asarray(norm.matrix, np.float64)  # [in, out]
        b_n = np.asarray(norm.offset, np.float64)
        w = np.asarray(conv.kernel.numpy(), np.float64)
        bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(w.shape[-1])
        kernel = np.einsum("ic,hwco->hwio", a, w)
        per_tap = np.einsum("hwco,c->hwo", w, b_n)
        height, width = (int(d) for d in norm.input.shape[1:3])
        out_h, out_w = (int(d) for d in conv.output.shape[1:3])
        (sh, sw), (dh, dw), (kh, kw) = conv.strides, conv.dilation_rate, conv.kernel_size
        if pad_name is not None:
            (top, _), (left, _) = self.layers[pad_name].padding
        elif conv.padding == "same":
            top = max((out_h - 1) * sh + (kh - 1) * dh + 1 - height, 0) // 2
            left = max((out_w - 1) * sw + (kw - 1) * dw + 1 - width, 0) // 2
        else:
            top = left = 0
        rows = np.arange(out_h)[:, None] * sh + np.arange(kh)[None, :] * dh - top
        cols = np.arange(out_w)[:, None] * sw + np.arange(kw)[None, :] * dw - left
        outside = 1.0 - np.einsum("at,bu->abtu", ((rows >= 0) & (rows < height)).astype(np.float64),
                                  ((cols >= 0) & (cols < width)).astype(np.float64))
        border = -np.einsum("abtu,tuo->abo", outside, per_tap)
        bias = bias + per_tap.sum(axis=(0, 1))
        if conv.name in self.affine:
            s, t = (np.broadcast_to(np.asarray(v, np.float64), bias.shape) for v in self.affine[conv.name])
            kernel, bias, border = kernel * s, bias * s + t, border * s
        return [kernel.astype(np.float32), bias.astype(np.float32), border[None].astype(np.float32)]

    def replacement(self, layer):
        return _as_space_to_depth(layer, self._replacement(layer))

    def _replacement(self, layer):
        name = layer.name
        if any(norm == name for norm, _ in self.norm_fold.values()):
            return FoldedAway(name=name, dtype=layer.dtype_policy), []
        if name in self.norm_fold:
            new = OffsetConv2D.from_config({**layer.get_config(), "use_bias": True})
            return new, self._norm_fold_weights(layer)
        if name in self.pre_resize:
            s, t = self.pre_resize[name]
            new = AffineThenResize.from_config(layer.get_config())
            return new, [np.asarray(s, np.float32).reshape(1, 1, -1, 1), np.asarray(t, np.float32)]
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


def _as_space_to_depth(layer, result):
    """``result`` (a replacement ``(layer, weights)`` or None: ``layer`` unchanged) as a
    :class:`SpaceToDepthConv2D` when it is a Conv2D that XNNPACK's int8 kernels run far
    below their speed: stride 1, "same", odd kernel <= 5, at most 4 input and 4 output
    channels, on an even-sized input of at least 64x64."""
    new, weights = (layer, None) if result is None else result
    if type(new) is not keras.layers.Conv2D:
        return result
    config = new.get_config()
    shape = layer.input.shape
    k = tuple(config["kernel_size"])
    if not (config["groups"] == 1 and tuple(config["strides"]) == (1, 1) and tuple(config["dilation_rate"]) == (1, 1)
            and config["padding"] == "same" and config.get("data_format", "channels_last") == "channels_last"
            and k[0] == k[1] and k[0] % 2 == 1 and k[0] <= 5 and shape[-1] <= 4 and config["filters"] <= 4
            and shape[1] is not None and shape[2] is not None and shape[1] % 2 == 0 and shape[2] % 2 == 0
            and min(shape[1], shape[2]) >= 64):
        return result
    weights = layer.get_weights() if weights is None else weights
    bias = weights[1] if config["use_bias"] else np.zeros(config["filters"], np.float32)
    block_kernel, block_bias = space_to_depth_kernel(np.asarray(weights[0], np.float64), bias)
    s2d = SpaceToDepthConv2D(config["filters"], k[0], activation=config["activation"], name=layer.name,
                             dtype=layer.dtype_policy)
    return s2d, [block_kernel, block_bias]


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


def _replacement(layer, prelu_mode):
    if isinstance(layer, keras.layers.PReLU):
        alpha = layer.get_weights()[0]
        if alpha.ndim == 3 and alpha.shape[:2] == (1, 1):
            signed = bool((alpha > 1.0).any())
            mode = prelu_mode(alpha) if callable(prelu_mode) else prelu_mode
            return DecomposedPReLU(signed=signed, mode=mode, name=layer.name, dtype=layer.dtype_policy), [alpha]
    if isinstance(layer, keras.layers.AveragePooling2D):
        pool, strides = tuple(layer.pool_size), tuple(layer.strides)
        if pool == strides and layer.padding == "valid":
            channels = layer.input.shape[-1]
            kernel = np.full((*pool, channels, 1), 1.0 / (pool[0] * pool[1]), np.float32)
            return keras.layers.DepthwiseConv2D(pool, strides=strides, padding="valid", use_bias=False,
                                                name=layer.name, dtype=layer.dtype_policy), [kernel]
    return None


_PASS_THROUGH = (keras.layers.BatchNormalization, DecomposedPReLU, keras.layers.PReLU, keras.layers.ReLU, FoldedAway,
                 keras.layers.ZeroPadding2D, keras.layers.AveragePooling2D, keras.layers.MaxPooling2D, BilinearResize)


def _linear(layer) -> bool:
    return getattr(layer, "activation", None) in (None, keras.activations.linear)


def _equalization_root(layer) -> bool:
    """A layer whose output channels can be scaled through its own weights."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1 and _linear(layer)
    return type(layer) in (keras.layers.Conv2D, OffsetConv2D) and _linear(layer)


def _equalization_terminal(layer) -> bool:
    """A layer that can undo a per-channel scale of its input through its weights."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier == 1
    return type(layer) is keras.layers.Conv2D or (type(layer) is GroupedPointwiseConv and layer.groups == 1)


def _pass_through(layer) -> bool:
    """Per channel and positively homogeneous: ``f(s x) = s f(x)`` for ``s > 0`` once its
    per-channel constants are scaled (see :func:`_scale_weights`)."""
    if isinstance(layer, keras.layers.Activation):
        return layer.activation in (keras.activations.linear, keras.activations.relu)
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer.scale and layer.axis in (-1, 3, [-1], [3])
    return isinstance(layer, _PASS_THROUGH)


def _scale_weights(layer, s, role):
    """New weights of ``layer`` when its output (``role="root"``), its input and output
    (``"through"``) or its input (``"terminal"``) channels are multiplied by ``s``."""
    w = [np.asarray(v, np.float64) for v in layer.get_weights()]
    if role == "terminal":
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            w[0] = w[0] / s.reshape(1, 1, -1, 1)
        elif getattr(layer, "groups", 1) > 1:
            cin_g, g = w[0].shape[2], layer.groups
            cout_g = w[0].shape[3] // g
            for i in range(g):
                w[0][:, :, :, i * cout_g:(i + 1) * cout_g] /= s[i * cin_g:(i + 1) * cin_g].reshape(1, 1, -1, 1)
        else:
            w[0] = w[0] / s.reshape(1, 1, -1, 1)
        return w
    if role == "root":
        w[0] = w[0] * (s.reshape(1, 1, -1, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else s)
        for i in range(1, len(w)):  # bias [C], and OffsetConv2D's border map [1, H, W, C]
            w[i] = w[i] * s
        return w
    if isinstance(layer, keras.layers.BatchNormalization):
        names = [v.path.split("/")[-1] for v in layer.weights]
        eps = layer.epsilon
        for i, n in enumerate(names):
            if n in ("gamma", "beta", "moving_mean"):
                w[i] = w[i] * s
            elif n == "moving_variance":  # sqrt(var' + eps) = s sqrt(var + eps)
                w[i] = s ** 2 * (w[i] + eps) - eps
        return w
    if isinstance(layer, AffineThenResize):
        w[1] = w[1] * s
    return w


def _chain(root, layers, producers, consumers, claimed):
    """``(members, terminals)`` of the equalization chain starting at ``root``, or None:
    the root and the per-channel layers after it, and the layers that end it."""
    members, terminals, frontier = [root], [], list(consumers[root])
    while frontier:
        name = frontier.pop()
        if name is None or len(producers[name]) != 1:
            return None
        layer = layers[name]
        if _equalization_terminal(layer):
            terminals.append(name)
        elif _pass_through(layer) and name not in claimed:
            members.append(name)
            frontier += consumers[name]
        else:
            return None
    return (members, terminals) if terminals else None


def equalize_channels(model: keras.Model, images, max_scale: float = 16.0, conv_power: float = 0.5) -> keras.Model:
    """Per-channel range equalization (in place, same function): for every chain
    *root -> per-channel layers -> terminals*, channel ``c`` of every tensor of the chain is
    multiplied by ``s_c > 0`` and the terminals divide it out again.

    A root is a linear conv or depthwise conv (its output channels scale through its
    kernel and bias), the layers in between act per channel and are positively
    homogeneous (BatchNorm with its statistics and affine rescaled, PReLU in any form, ReLU,
    padding, pooling, bilinear resize), and every consumer at the end is a conv or
    depthwise conv whose kernel rows divide by ``s`` (a depthwise conv is the terminal of
    one chain and the root of the next). Exact up to float rounding.

    Why: int8 activations have one scale per tensor, so a channel whose values span a
    tenth of the tensor's range is quantized with a tenth of the levels.
    ``s_c = 1 / max_T (r_{T,c} / R_T)`` (``r_{T,c}``: the largest ``|value|`` of channel
    ``c`` of tensor ``T`` of the chain on ``images``; ``R_T = max_c r_{T,c}``) scales each
    channel up until it fills the range of one tensor of the chain, and no tensor's range
    grows. Depthwise weights are quantized per channel, so a depthwise terminal loses
    nothing; a conv terminal's weights are quantized per *output* channel, and a row
    divided by ``s_c`` keeps fewer levels: there ``s ** conv_power`` is used. ``s`` is
    capped at ``max_scale``."""
    layers, producers, consumers = _graph(model)
    chains, claimed = [], set()
    for layer in model.layers:
        if not _equalization_root(layer) or layer.name in claimed:
            continue
        chain = _chain(layer.name, layers, producers, consumers, claimed)
        if chain is not None:
            chains.append(chain)
            claimed.update(chain[0])
    if not chains:
        return model
    names = sorted({n for members, _ in chains for n in members})
    probe = keras.Model(model.inputs, [layers[n].output for n in names])
    ranges = {n: 0.0 for n in names}
    for start in range(0, len(images), 8):
        outs = probe([np.asarray(images[start:start + 8], np.float32)])  # a list, as model.inputs
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for n, out in zip(names, outs):
            ranges[n] = np.maximum(ranges[n], np.abs(np.asarray(out, np.float64)).max(axis=(0, 1, 2)))
    for members, terminals in chains:
        peak = np.max(np.stack([ranges[n] / max(float(np.max(ranges[n])), 1e-30) for n in members]), axis=0)
        s = np.where(peak > 0, 1.0 / np.maximum(peak, 1e-30), 1.0)
        if any(not isinstance(layers[t], keras.layers.DepthwiseConv2D) for t in terminals):
            s = s ** conv_power
        s = np.minimum(s, max_scale)
        if np.allclose(s, 1.0):
            continue
        for i, n in enumerate(members):
            layers[n].set_weights(_scale_weights(layers[n], s, "root" if i == 0 else "through"))
        for t in terminals:
            layers[t].set_weights(_scale_weights(layers[t], s, "terminal"))
    return model


def auto_prelu_mode(alpha, threshold: float = NEAR_RELU) -> str:
    """:class:`DecomposedPReLU`'s form for one layer: ``"add"`` (two ops), unless the layer
    is nearly a ReLU (median ``|alpha|`` below ``threshold``), where ``"add"``'s two terms
    cancel for ``x < 0`` and ``"split"`` keeps ``alpha x`` exact."""
    return "add" if float(np.median(np.abs(alpha))) >= threshold else "split"


def int8_friendly(model: keras.Model, prelu_mode="auto", images=None, **equalization) -> keras.Model:
    """A copy of ``model`` with the rewrites above (same weights, same function).
    ``prelu_mode``: the :class:`DecomposedPReLU` form, a function of a PReLU's alpha that
    returns one, or ``"auto"`` (:func:`auto_prelu_mode`). With calibration ``images``,
    channel ranges are then equalized (:func:`equalize_channels`, keyword arguments passed
    on)."""
    if prelu_mode == "auto":
        prelu_mode = auto_prelu_mode
    model = absorb_channel_shuffles(model)
    plan = _Plan(model)
    new_weights = {}

    def clone(layer):
        replaced = plan.replacement(layer) or _replacement(layer, prelu_mode)
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
    if images is not None:
        equalize_channels(rewritten, images, **equalization)
    return rewritten
