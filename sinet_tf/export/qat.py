"""Quantization-aware fine-tuning (QAT) for Keras 3 models, converted so that the ``.tflite``
file computes what was trained.

tensorflow-model-optimization's QAT refuses Keras 3 models, so this module builds its own,
on exactly the graph the int8 exporter converts:

1. the rewritten model (:func:`sinet_tf.export.rewrite.int8_friendly`, with the chosen
   post-training candidate's equalization), with every BatchNormalization that follows a
   conv folded into that conv (:func:`fold_batch_norms`), as TFLite's converter folds it;
   the passes in :data:`AFTER_TRAINING` only change how a conv's tensors are laid out
   (the same integer arithmetic), so they run on the fine-tuned model, before conversion;
2. fake quantization where the int8 file has a quantized tensor (:func:`quantization_aware`):
   per-channel symmetric int8 weights of every conv / depthwise / transposed conv kernel
   (``[-127, 127]``, scale ``max|w| / 127``, what TFLite's quantizer writes), and per-tensor
   asymmetric 8-bit activations with TFLite's zero-point nudging
   (``tf.quantization.fake_quant_with_min_max_vars``) after each op. The activation ranges
   are exponential moving averages of each batch's minimum and maximum (Jacob et al.,
   CVPR 2018, Sec. 3.1), started from the average per-image extremes of the calibration
   images. Tensors TFLite gives one shared scale get one range: the inputs of a concat take
   the concat's (int8 CONCATENATION keeps one scale), a conv followed only by a ReLU is one
   fused op (only the ReLU's output is a tensor), padding and max pooling keep their
   input's values and a bilinear resize its input's range. Weights train through the
   straight-through estimator (Bengio et al., 2013): the forward pass uses the quantized
   kernels, the gradient updates float "shadow" kernels;
3. fine-tuning for a few epochs with the model's own loss, batch size, augmentation and
   data (:class:`QATSettings`; ``sinet export --qat-epochs`` uses a tenth of the recipe's
   learning rate), with Adam, on :func:`sinet_tf.data.pipeline.make_pipeline`;
4. conversion of the fine-tuned float model (shadow kernels, which the quantizer rounds
   exactly as the fake quantization did) with the learned ranges written into the
   calibrated model's tensors before the MLIR quantizer runs
   (:func:`sinet_tf.export.calibration.write_ranges`), and a check: the ``.tflite`` file's
   output against the fake-quantized Keras model's on the calibration images.

Layers outside :data:`COVERED` (and a BatchNormalization that does not follow a conv) make
:func:`quantization_aware` raise :class:`QATError` naming them. Two approximations remain:
the internal tensors of a layer that becomes several TFLite ops (a decomposed PReLU's
product, a global average pool) keep the calibrated range of the fine-tuned float model,
and constant operands of MUL/ADD (PReLU slopes, offsets) are quantized by the converter
without having been fake-quantized; :class:`QATResult` reports the measured difference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import keras
import numpy as np
import tensorflow as tf

from sinet_tf.data.pipeline import make_pipeline, steps_per_epoch
from sinet_tf.data.sources import open_source
from sinet_tf.export.calibration import write_ranges
from sinet_tf.export.frozen import input_names
from sinet_tf.export.heads import with_output_head
from sinet_tf.export.layer_error import tensors_by_layer
from sinet_tf.export.passes.batch_norm import AffineThenResize, ChannelAffine, ScaledAdd
from sinet_tf.export.passes.graph import FoldedAway, bn_affine, folded_away, is_linear, read_graph, rebuild
from sinet_tf.export.passes.input_normalization import OffsetConv2D
from sinet_tf.export.passes.prelu import DecomposedPReLU
from sinet_tf.export.passes.space_to_depth import SpaceToDepthConv2D
from sinet_tf.export.quantize import ExportError, calibrate, quantize_calibrated_model, representative_dataset
from sinet_tf.export.rewrite import int8_friendly, passes_for
from sinet_tf.layers.information_blocking import InformationBlockingGate
from sinet_tf.layers.resize import BilinearResize
from sinet_tf.losses import build_loss
from sinet_tf.runtime.heads import person_probability_from_output
from sinet_tf.runtime.interpreter import TFLiteRunner, make_interpreter

__all__ = ["AFTER_TRAINING", "COVERED", "FakeQuant", "QATError", "QATModel", "QATResult", "QATSettings",
           "fold_batch_norms", "quantization_aware", "quantization_aware_export"]


class QATError(ExportError):
    """A model or setting quantization-aware fine-tuning cannot take."""


@dataclass
class QATSettings:
    """What the fine-tuning runs on: ``data`` (a dataset path or ``synthetic[:N]``), and from
    the model's recipe its ``loss`` spec, ``batch_size``, ``learning_rate`` (Adam) and
    ``augment`` (as in a recipe stage). ``ema``: momentum of the activation ranges' moving
    averages per step."""

    data: str
    epochs: int = 2
    loss: Any = "ce"
    batch_size: int = 8
    learning_rate: float = 1e-4
    augment: Any = False
    train_split: str | None = "train"
    seed: int = 0
    ema: float = 0.9
    recipe: str = "defaults"

    def check(self) -> None:
        if not self.data:
            raise QATError("quantization-aware fine-tuning needs training data: give --data SRC "
                           "(a dataset folder/list file, or synthetic[:N])")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise QATError(f"--qat-epochs {self.epochs!r}: expected a whole number of epochs >= 1")
        if not self.batch_size >= 1 or not self.learning_rate > 0:
            raise QATError(f"quantization-aware fine-tuning: batch size {self.batch_size} and learning rate "
                           f"{self.learning_rate} must be positive")
        build_loss(self.loss)


# --------------------------------------------------------------------------- the graph

_SAME_VALUES = (keras.layers.ZeroPadding2D, keras.layers.MaxPooling2D, FoldedAway, keras.layers.Dropout,
                keras.layers.InputLayer)                     # output values are input values: no new range
_SAME_RANGE = (BilinearResize, keras.layers.UpSampling2D)    # interpolated, requantized with the input's range
_OWN_RANGE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Conv2DTranspose, OffsetConv2D,
              SpaceToDepthConv2D, ChannelAffine, ScaledAdd, AffineThenResize, DecomposedPReLU, keras.layers.ReLU,
              keras.layers.Add, keras.layers.Multiply, keras.layers.Concatenate, keras.layers.Activation,
              keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D, keras.layers.Softmax,
              InformationBlockingGate, keras.layers.PReLU)
COVERED = _SAME_VALUES + _SAME_RANGE + _OWN_RANGE
_ACTIVATIONS = ("linear", "relu", "sigmoid", "softmax")
_FUSABLE = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Add)

# int8 rewrite passes that run after fine-tuning: ``column_blocks`` computes a conv on a
# reshaped tensor with a block kernel whose every output channel holds one original
# kernel's taps (and zeros), so the per-channel weight scales, the tensors' per-tensor
# ranges and the integer sums are the original conv's: fine-tuning the conv is fine-tuning
# what the file computes
AFTER_TRAINING = ("column_blocks",)


def _kernel_axis(layer, variable) -> Callable | None:
    """How to make ``variable`` of ``layer`` a ``[..., channels]`` array whose last axis is
    TFLite's per-channel quantization axis, or None when it is not a per-channel kernel."""
    name = variable.path.split("/")[-1]
    rank = len(variable.shape)
    if rank != 4:
        return None
    if isinstance(layer, keras.layers.Conv2DTranspose) and name == "kernel":
        return "transpose"        # [kh, kw, out, in]: per output channel (axis 2)
    if (isinstance(layer, keras.layers.DepthwiseConv2D) and name in ("kernel", "depthwise_kernel")) or (
            isinstance(layer, (ScaledAdd, AffineThenResize)) and name in ("scale", "affine_scale")):
        return "depthwise"        # [kh, kw, in, multiplier]: per in * multiplier
    if name == "kernel":
        return "conv"             # [kh, kw, in, out]: per output channel
    return None


def _fake_quant_kernel(w, kind):
    """Per-channel symmetric int8 (``[-127, 127]``, scale ``max|w| / 127``)."""
    shape = tf.shape(w)
    if kind == "depthwise":
        v = tf.reshape(w, tf.concat([shape[:2], [-1]], 0))
    elif kind == "transpose":
        v = tf.transpose(w, [0, 1, 3, 2])
    else:
        v = w
    scale = tf.reduce_max(tf.abs(v), axis=[0, 1, 2], keepdims=True) / 127.0
    scale = tf.where(scale > 0, scale, tf.ones_like(scale))
    q = tf.clip_by_value(tf.round(v / scale), -127.0, 127.0) * scale
    if kind == "depthwise":
        return tf.reshape(q, shape)
    if kind == "transpose":
        return tf.transpose(q, [0, 1, 3, 2])
    return q


@keras.saving.register_keras_serializable(package="sinet_tf")
class FakeQuant(keras.layers.Layer):
    """Per-tensor asymmetric 8-bit fake quantization with TFLite's nudged zero point, its
    range ``[lo, hi]`` (containing 0) an exponential moving average of each training
    batch's extremes (``fixed``: never updated). ``shared``: another FakeQuant whose range
    this one uses (tensors TFLite gives one scale)."""

    def __init__(self, ema: float = 0.9, fixed: bool = False, shared: "FakeQuant | None" = None, **kwargs):
        super().__init__(**kwargs)
        self.ema = float(ema)
        self.fixed = bool(fixed)
        self.shared = shared

    def build(self, input_shape):
        if self.shared is None:
            self.lo = self.add_weight(name="lo", shape=(), initializer="zeros", trainable=False)
            self.hi = self.add_weight(name="hi", shape=(), initializer="zeros", trainable=False)

    @property
    def source(self) -> "FakeQuant":
        return self if self.shared is None else self.shared.source

    def range(self) -> tuple[float, float]:
        return float(self.source.lo.numpy()), float(self.source.hi.numpy())

    def call(self, x, training=False):
        src = self.source
        if training and not self.fixed and self.shared is None:
            lo = tf.minimum(tf.reduce_min(x), 0.0)
            hi = tf.maximum(tf.reduce_max(x), 0.0)
            self.lo.assign(self.ema * self.lo + (1.0 - self.ema) * lo)
            self.hi.assign(self.ema * self.hi + (1.0 - self.ema) * hi)
        lo, hi = tf.minimum(src.lo, 0.0), tf.maximum(src.hi, 0.0)
        hi = tf.maximum(hi, lo + 1e-6)
        return tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8, narrow_range=False)

    def compute_output_shape(self, input_shape):
        return input_shape


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """A copy of ``model`` with every BatchNormalization whose input is a linear conv or
    depthwise conv used by nothing else folded into that conv (inference statistics:
    ``k' = s k``, ``b' = s b + t``), as TFLite's converter folds it; the BN is left as
    :class:`FoldedAway`."""
    layers, producers, consumers = read_graph(model)
    replaced, weights = {}, {}
    for name, layer in layers.items():
        if type(layer) is not keras.layers.BatchNormalization or len(producers[name]) != 1:
            continue
        conv = layers[producers[name][0]]
        if not (isinstance(conv, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) and is_linear(conv)
                and len(consumers[conv.name]) == 1 and conv.name not in replaced
                and type(conv) in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, OffsetConv2D)):
            continue
        s, t = bn_affine(layer)
        new = {v.path.split("/")[-1]: np.asarray(v.numpy(), np.float64) for v in conv.weights}
        out = []
        for v in conv.weights:
            key = v.path.split("/")[-1]
            w = new[key]
            if key in ("kernel", "depthwise_kernel") and isinstance(conv, keras.layers.DepthwiseConv2D):
                w = (w.reshape(*w.shape[:2], -1) * s).reshape(w.shape)
            elif key == "kernel":
                w = w * s
            elif key == "bias":
                w = w * s + t
            else:  # OffsetConv2D's border map [1, H, W, C]
                w = w * s
            out.append(w.astype(np.float32))
        if not conv.use_bias:
            config = {**conv.get_config(), "use_bias": True}
            fresh = type(conv).from_config(config)
            # the bias sits after the kernel in the weight list
            out.insert(1, t.astype(np.float32))
            replaced[conv.name] = fresh
        weights[conv.name] = out
        replaced[name] = folded_away(layer)
        weights[name] = []
    if not replaced and not weights:
        return model
    return rebuild(model, replaced, weights)


@dataclass
class _Plan:
    quantizers: dict = field(default_factory=dict)     # layer name -> FakeQuant applied to its output
    range_of: dict = field(default_factory=dict)       # layer name -> FakeQuant whose range its tensor has


def _plan(model: keras.Model, ema: float) -> tuple[_Plan, dict]:
    layers, producers, consumers = read_graph(model)
    uncovered = [f"{n} ({type(layer).__name__})" for n, layer in layers.items() if not isinstance(layer, COVERED)]
    uncovered += [f"{n} (Activation {layer.activation.__name__})" for n, layer in layers.items()
                  if type(layer) is keras.layers.Activation and layer.activation.__name__ not in _ACTIVATIONS]
    uncovered += [f"{n} (BatchNormalization not after a conv)" for n, layer in layers.items()
                  if type(layer) is keras.layers.BatchNormalization]
    if uncovered:
        raise QATError(f"quantization-aware fine-tuning does not cover layer{'s' if len(uncovered) > 1 else ''} "
                       f"{', '.join(uncovered[:5])}{' ...' if len(uncovered) > 5 else ''} of {model.name}; it covers "
                       + ", ".join(sorted({c.__name__ for c in COVERED})))
    plan = _Plan()

    def only_consumers(name, kinds):
        cs = consumers[name]
        return bool(cs) and all(c is not None and isinstance(layers[c], kinds) for c in cs)

    def is_relu(layer):
        return isinstance(layer, keras.layers.ReLU) or (type(layer) is keras.layers.Activation
                                                        and layer.activation.__name__ == "relu")

    for name, layer in layers.items():  # functional models list layers in call order
        if isinstance(layer, keras.layers.InputLayer):
            plan.quantizers[name] = FakeQuant(ema, fixed=True, name=f"{name}_fq")
            continue
        first = producers[name][0] if producers[name] else None
        if isinstance(layer, _SAME_VALUES):
            plan.range_of[name] = plan.range_of.get(first)
            continue
        if type(layer) is keras.layers.Activation and layer.activation.__name__ == "linear":
            plan.range_of[name] = plan.range_of.get(first)
            continue
        if isinstance(layer, _SAME_RANGE):
            source = plan.range_of.get(first)
            if source is not None:
                plan.quantizers[name] = FakeQuant(ema, shared=source, name=f"{name}_fq")
            plan.range_of[name] = source
            continue
        fused = (isinstance(layer, _FUSABLE) and is_linear(layer) and len(consumers[name]) == 1
                 and consumers[name][0] is not None and is_relu(layers[consumers[name][0]]))
        into_concat = only_consumers(name, keras.layers.Concatenate)
        if fused or into_concat:
            plan.range_of[name] = None  # filled from the consumer below
            continue
        fq = FakeQuant(ema, name=f"{name}_fq")
        plan.quantizers[name] = fq
        plan.range_of[name] = fq
    for name, layer in layers.items():  # fused convs and concat inputs take their consumer's range
        if name in plan.range_of and plan.range_of[name] is None and consumers[name] and consumers[name][0]:
            plan.range_of[name] = plan.range_of.get(consumers[name][0])
    return plan, producers


def quantization_aware(model: keras.Model, ema: float = 0.9) -> tuple[keras.Model, _Plan]:
    """The fake-quantized twin of ``model`` (BN already folded, :func:`fold_batch_norms`):
    the same layer objects (shared weights) with :class:`FakeQuant` layers after the
    outputs TFLite quantizes. Kernels are fake-quantized by :class:`QATModel`."""
    plan, producers = _plan(model, ema)
    tensors = {}
    inputs = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            x = keras.Input(batch_shape=layer.batch_shape, name=layer.name)
            inputs.append(x)
            y = x
        else:
            args = [tensors[p] for p in producers[layer.name]]
            y = layer(args if len(args) > 1 or isinstance(layer, (keras.layers.Concatenate, keras.layers.Add,
                                                                   keras.layers.Multiply)) else args[0])
        fq = plan.quantizers.get(layer.name)
        tensors[layer.name] = fq(y) if fq is not None else y
    outputs = [tensors[layer_name] for layer_name in _output_layers(model)]
    return keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_qat"), plan


def _output_layers(model) -> list[str]:
    from sinet_tf.compat import layer_input_producers

    return layer_input_producers(model)["<outputs>"]


def _first_layers(model: keras.Model) -> list:
    """The layers that read the model input, through padding and identities (a folded
    normalization): the first convs, which see pixels in [0, 255]."""
    layers, _, consumers = read_graph(model)
    frontier = [n for n, layer in layers.items() if isinstance(layer, keras.layers.InputLayer)]
    found, seen = [], set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for c in consumers.get(name, []):
            if c is None:
                continue
            if isinstance(layers[c], _SAME_VALUES):
                frontier.append(c)
            else:
                found.append(layers[c])
    return found


class QATModel(keras.Model):
    """Trains a fake-quantized network: each step writes the fake-quantized shadow kernels
    into the network's kernels, runs forward and backward on them, and applies the
    gradients to the shadow kernels (straight-through estimator)."""

    def __init__(self, network: keras.Model, base: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.kernels = []
        # the first convs read pixels in [0, 255] (the input normalization is folded into
        # them), so their weights are ~1/255 of the others', and Adam's steps have the same
        # size for every weight: they stay as they are (still fake-quantized)
        self.frozen = {id(v) for layer in _first_layers(base) for v in layer.trainable_weights}
        for layer in base.layers:
            for v in layer.weights:
                kind = _kernel_axis(layer, v)
                if kind is not None and v.trainable:
                    self.kernels.append((v, kind))
        self.shadows = [keras.Variable(np.asarray(v.numpy()), name=f"shadow_{i}", trainable=True)
                        for i, (v, _) in enumerate(self.kernels)]
        self._kernel_ids = {id(v): i for i, (v, _) in enumerate(self.kernels)}
        self.loss_mean = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_mean]

    def call(self, x, training=False):
        return self.network(x, training=training)

    def quantize_kernels(self):
        for (v, kind), s in zip(self.kernels, self.shadows):
            v.assign(_fake_quant_kernel(s, kind))

    def float_kernels(self):
        for (v, _), s in zip(self.kernels, self.shadows):
            v.assign(s)

    def train_step(self, data):
        x, y = data[0], data[1]
        self.quantize_kernels()
        variables = [v for v in self.network.trainable_variables if id(v) not in self.frozen]
        with tf.GradientTape() as tape:
            y_pred = self.network(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred)
        grads = tape.gradient(loss, variables)
        targets = [self.shadows[self._kernel_ids[id(v)]] if id(v) in self._kernel_ids else v for v in variables]
        pairs = [(g, t) for g, t in zip(grads, targets) if g is not None]
        self.optimizer.apply_gradients(pairs)
        self.loss_mean.update_state(loss)
        return {"loss": self.loss_mean.result()}


@dataclass
class QATResult:
    data: bytes
    model: keras.Model          # the fine-tuned float model the file was converted from (rewritten, BN folded)
    seconds: float
    summary: dict
    fake_quantized: Callable = None   # batch of float pixels -> the fake-quantized model's output (export head)


def _start_ranges(float_model: keras.Model, plan: _Plan, images: np.ndarray) -> None:
    """Each range starts at the mean over ``images`` of that image's minimum and maximum of
    the layer's output in the *float* model (in the fake-quantized one, ranges that are
    still 0 upstream would make every range downstream collapse)."""
    own = [(name, fq) for name, fq in plan.quantizers.items() if fq.shared is None]
    inputs = [fq for name, fq in own if fq.fixed]
    for fq in inputs:
        fq.lo.assign(0.0)
        fq.hi.assign(255.0)
    learned = [(name, fq) for name, fq in own if not fq.fixed]
    if not learned:
        return
    probe = keras.Model(float_model.inputs, [float_model.get_layer(name).output for name, _ in learned])
    lows, highs = np.zeros(len(learned)), np.zeros(len(learned))
    for x in images:
        outs = probe(np.asarray(x, np.float32)[None])
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for j, o in enumerate(outs):
            o = np.asarray(o)
            lows[j] += min(float(o.min()), 0.0)
            highs[j] += max(float(o.max()), 0.0)
    for j, (_, fq) in enumerate(learned):
        fq.lo.assign(lows[j] / len(images))
        fq.hi.assign(highs[j] / len(images))


def quantization_aware_export(model: keras.Model, settings: QATSettings, images: np.ndarray, io: str,
                              head: str = "logits", equalize: bool = False, equalization_images=None,
                              log=None) -> QATResult:
    """Fine-tune ``model`` (the batch-1 Keras model with a logits output, before the int8
    rewrites) with quantization-aware training and convert it with the learned ranges;
    ``images`` are the calibration images (range start, calibration of the tensors QAT does
    not model, and the TFLite-vs-Keras check)."""
    say = log or (lambda text: None)
    settings.check()
    t0 = time.perf_counter()
    images_eq = equalization_images if equalize else None
    before = [n for n in passes_for("int8") if n not in AFTER_TRAINING and (n != "equalize" or images_eq is not None)]
    friendly = int8_friendly(model, images=images_eq, passes=before)
    folded = fold_batch_norms(friendly)
    qat_net, plan = quantization_aware(folded, settings.ema)
    _start_ranges(folded, plan, images[: min(len(images), 32)])

    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    out_h = int(qat_net.outputs[0].shape[1])
    source = open_source(str(settings.data), settings.train_split, seed=settings.seed)
    batch = min(settings.batch_size, len(source))
    steps = steps_per_epoch(source, batch)
    # the network is built at batch 1 (what is exported); train on a batch-free twin
    trainable = _unbatched(folded)
    train_net, train_plan = quantization_aware(trainable, settings.ema)
    for name, fq in plan.quantizers.items():
        twin = train_plan.quantizers[name]
        if fq.shared is None:
            twin.lo.assign(fq.lo)
            twin.hi.assign(fq.hi)
    qat = QATModel(train_net, trainable)
    qat.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=build_loss(settings.loss),
                jit_compile=False)
    dataset = make_pipeline(source, size, batch, augment=settings.augment, seed=settings.seed,
                            label_stride=max(1, size[0] // out_h), epochs=settings.epochs)
    say(f"quantization-aware fine-tuning: {settings.epochs} epoch(s) x {steps} steps of {batch} on {settings.data} "
        f"({settings.recipe}; loss {settings.loss}, Adam {settings.learning_rate:g})")
    history = qat.fit(dataset, epochs=settings.epochs, steps_per_epoch=steps, verbose=0)
    train_seconds = time.perf_counter() - t0

    # back to the batch-1 graph: float (shadow) kernels for conversion, learned ranges
    qat.float_kernels()
    for layer in folded.layers:
        if layer.weights:
            layer.set_weights(trainable.get_layer(layer.name).get_weights())
    for name, fq in plan.quantizers.items():
        twin = train_plan.quantizers[name]
        if fq.shared is None:
            fq.lo.assign(twin.lo)
            fq.hi.assign(twin.hi)

    converted = int8_friendly(folded, passes=AFTER_TRAINING)  # layer names kept: the ranges find their tensors
    export_model = with_output_head(converted, head)
    calibrated = calibrate(export_model, representative_dataset(images), io)
    interpreter = make_interpreter(calibrated, xnnpack=False)
    by_layer = tensors_by_layer(interpreter)
    # the model output is named after the graph's output, not after its layer
    by_layer.setdefault(_output_layers(export_model)[0], int(interpreter.get_output_details()[0]["index"]))
    indices, lows, highs, written = [], [], [], []
    for name, tensor in by_layer.items():
        fq = plan.range_of.get(name)
        if fq is None or fq.fixed:
            continue
        lo, hi = fq.range()
        if hi - lo <= 0:
            continue
        indices.append(tensor)
        lows.append(lo)
        highs.append(hi)
        written.append(name)
    data = quantize_calibrated_model(write_ranges(calibrated, indices, lows, highs), io, input_names(export_model))

    # what the file computes against what was trained
    qat_check = _quantized_twin(folded, plan, head, settings.ema)
    runner = TFLiteRunner(data)
    diffs, agree = [], []
    for x in images[: min(len(images), 8)]:
        pk = person_probability_from_output(np.asarray(qat_check(x[None])), _kind(head))[0]
        pl = person_probability_from_output(runner(x[None]), _kind(head))[0]
        diffs.append(np.abs(pk - pl))
        agree.append(float(((pk > 0.5) == (pl > 0.5)).mean()))
    qat.float_kernels()
    seconds = time.perf_counter() - t0
    losses = [round(float(v), 5) for v in history.history.get("loss", [])]
    summary = {"epochs": settings.epochs, "steps_per_epoch": steps, "batch_size": batch, "data": str(settings.data),
               "recipe": settings.recipe, "learning_rate": settings.learning_rate, "loss_by_epoch": losses,
               "train_seconds": round(train_seconds, 1), "ranges_written": len(written),
               "tflite_vs_fake_quant": {"max_abs_diff_probability": round(float(max(d.max() for d in diffs)), 5),
                                        "mean_abs_diff_probability": round(float(np.mean([d.mean() for d in diffs])),
                                                                           6),
                                        "mask_agreement": round(float(np.mean(agree)), 6)}}
    say(f"QAT: {settings.epochs} epoch(s) in {train_seconds:.0f} s (loss {losses}); TFLite vs fake-quantized Keras: "
        f"max |dp| {summary['tflite_vs_fake_quant']['max_abs_diff_probability']:.4f}, masks agree on "
        f"{summary['tflite_vs_fake_quant']['mask_agreement']:.2%} of pixels")
    return QATResult(data, converted, seconds, summary, qat_check)


def _kind(head: str) -> str:
    return "logits" if head == "logits" else "probabilities"


def _unbatched(model: keras.Model) -> keras.Model:
    """``model`` rebuilt with a free batch dimension (same weights)."""
    from sinet_tf.export.passes.graph import copy_model

    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            shape = layer["config"].get("batch_shape")
            if shape:
                layer["config"]["batch_shape"] = [None, *shape[1:]]
    clone = keras.Model.from_config(config)
    source = copy_model(model)
    for layer in clone.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return clone


def _quantized_twin(folded: keras.Model, plan: _Plan, head: str, ema: float) -> Callable:
    """The fake-quantized ``folded`` model with the export head, at inference: quantized
    kernels and the learned ranges (a copy; ``folded`` keeps its float kernels)."""
    from sinet_tf.export.passes.graph import copy_model

    twin = copy_model(folded)
    net, twin_plan = quantization_aware(twin, ema)
    probe = QATModel(net, twin)
    probe.quantize_kernels()
    for name, fq in plan.quantizers.items():
        if fq.shared is None:
            other = twin_plan.quantizers[name]
            other.lo.assign(fq.lo)
            other.hi.assign(fq.hi)
    headed = with_output_head(net, head)
    fn = tf.function(lambda x: headed(x, training=False))
    return lambda x: fn(np.asarray(x, np.float32))
