"""Numerically equivalent graph rewrites applied before conversion, as an ordered list of
named passes (:data:`PASSES`), each taking part in the export modes it pays in: ``"int8"``
(full-integer files, :func:`int8_friendly`) and ``"float"`` (float32, fp16 and dynamic-range
files, :func:`float_friendly`); :func:`rewrite_for_export` picks the list for a
quantization mode.

Every rewrite computes the same function as the Keras model (up to float rounding; the
tests check each one). They exist because on-device time is decided by the number and the
kind of ops more than by multiply-adds: int8 kernels are not faster than float32 ones at
SINet's tiny channel counts, ops XNNPACK does not take in int8 fall back to slow builtin
kernels, few-channel convs waste the kernels' vector tiles, and every extra op is another
pass over memory. The measurements behind the choices, and the rewrites tried and
dropped, are in ``benchmarks/results/int8_rewrites.md`` and
``benchmarks/results/float_rewrites.md``.

The passes, in the order they run, with their modes (each one module of
:mod:`sinet_tf.export.passes`):

* ``channel_shuffles`` (int8, float; :mod:`~sinet_tf.export.passes.channel_shuffle`): the
  shuffles after SINet's grouped 1x1 convs move into the weights after them, so those
  convs export as grouped CONV_2Ds (half the multiply-adds of the dense block-diagonal
  kernel; XNNPACK and the GPU delegate run grouped convs, TFLite's builtin float kernel
  only through its slower reference path).
* ``input_normalization`` (int8; :mod:`~sinet_tf.export.passes.input_normalization`): the
  normalization, and a BatchNorm right after the first conv, folded into that conv
  (:class:`OffsetConv2D`).
* ``batch_norms`` (int8, float; :mod:`~sinet_tf.export.passes.batch_norm`): BatchNorms
  after a concat, a resize or a residual add folded into the convs before them
  (:class:`FoldedAway`), moved before the resize (:class:`AffineThenResize`), left as a
  scale on one addend (:class:`ScaledAdd`) or made one op (:class:`ChannelAffine`).
* ``pointwise_merge`` (int8, float; :mod:`~sinet_tf.export.passes.pointwise`): conv ->
  [linear Activation] -> 1x1 conv as one conv.
* ``concat_activations`` (int8, float; :mod:`~sinet_tf.export.passes.concat_activation`):
  a ReLU after a concat of conv outputs becomes those convs' fused activation (int8
  XNNPACK has no standalone RELU: it split the graph).
* ``prelu`` (int8; :mod:`~sinet_tf.export.passes.prelu`): :class:`DecomposedPReLU`.
* ``average_pools`` (int8; :mod:`~sinet_tf.export.passes.pooling`): pools as depthwise convs.
* ``space_to_depth`` (by name only; :mod:`~sinet_tf.export.passes.space_to_depth`):
  few-channel full-resolution convs on 2x2 pixel blocks (:class:`SpaceToDepthConv2D`);
  ``column_blocks`` does the same job with no data movement.
* ``equalize`` (int8; :mod:`~sinet_tf.export.passes.equalize`): with calibration images,
  per-channel range equalization (:func:`equalize_channels`).
* ``column_blocks`` (int8, float; :mod:`~sinet_tf.export.passes.column_blocks`): the
  few-channel convs at the ends of the network (the first conv in int8, the classifier)
  on blocks of adjacent columns, reached by RESHAPE (:class:`ColumnBlockConv2D`).
* ``implicit_padding`` (by name only; :mod:`~sinet_tf.export.passes.implicit_padding`): an
  explicit PyTorch-style ZeroPadding2D before a conv made that conv's own ``"same"``
  padding (zero taps appended to the kernel where TensorFlow pads differently): no PAD op.
  Not in a mode's list: XNNPACK already fuses such a PAD into the conv, and the larger
  kernel measured slower (``benchmarks/results/float_rewrites.md``).

The order matters: ``channel_shuffles`` walks through PReLUs and pools, not their
replacements; ``input_normalization`` folds the BN after the first conv with the
normalization (one rounding to float32), and ``batch_norms`` then sees the
:class:`OffsetConv2D` (a BN after it cannot be left to the converter); the conv that
``pointwise_merge`` made is one ``column_blocks`` can take; ``equalize`` scales chains
that start at the first conv and end at plain convs, so ``column_blocks`` comes after it;
``column_blocks`` takes a padded first conv as it is, so ``implicit_padding`` (asked for by
name) comes last.

A pass is a function ``(model, context) -> model`` (:class:`RewritePass`): it returns an
equivalent model, or ``model`` itself when it changes nothing, and never modifies
``model``; ``context`` (:class:`RewriteContext`) holds the calibration images, options and
the export mode. A new pass is one function plus one entry in :data:`PASSES` (or a
:func:`register_pass` call, e.g. from a test), whose ``modes`` say which exports run it.

Float files keep PReLU as one op (one PRELU is cheaper than its decomposition in float,
and on GPUs), keep the input normalization as its own 1x1 conv (folding it needs a border
map whose ADD costs what the conv saves on XNNPACK, and the mean left as a per-channel ADD
before the padding, its channel matrix folded into the conv, measured slower than the conv
it replaces) and keep AVERAGE_POOL_2D.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras

from sinet_tf.export.passes.batch_norm import AffineThenResize, ChannelAffine, ScaledAdd, place_batch_norms
from sinet_tf.export.passes.channel_shuffle import absorb_channel_shuffles
from sinet_tf.export.passes.column_blocks import ColumnBlockConv2D, convs_on_column_blocks
from sinet_tf.export.passes.concat_activation import activations_into_concat_parts
from sinet_tf.export.passes.equalize import equalize_channels, equalize_on_calibration_images
from sinet_tf.export.passes.graph import FoldedAway, RewriteContext, copy_model, sharing_unchanged_layers
from sinet_tf.export.passes.implicit_padding import paddings_into_convs, same_kernel_size
from sinet_tf.export.passes.input_normalization import OffsetConv2D, fold_input_normalization
from sinet_tf.export.passes.pointwise import merge_pointwise_convs
from sinet_tf.export.passes.pooling import pools_as_depthwise
from sinet_tf.export.passes.prelu import NEAR_RELU, DecomposedPReLU, auto_prelu_mode, decompose_prelus
from sinet_tf.export.passes.space_to_depth import SpaceToDepthConv2D, convs_on_pixel_blocks, space_to_depth_kernel

__all__ = ["NEAR_RELU", "PASSES", "REWRITE_MODES", "AffineThenResize", "ChannelAffine", "ColumnBlockConv2D",
           "DecomposedPReLU", "FoldedAway", "OffsetConv2D", "RewriteContext", "RewritePass", "ScaledAdd",
           "SpaceToDepthConv2D", "absorb_channel_shuffles", "auto_prelu_mode", "equalize_channels", "float_friendly",
           "int8_friendly", "int8_friendly_variants", "paddings_into_convs", "passes_for", "register_pass",
           "rewrite_for_export", "rewrite_mode", "same_kernel_size", "space_to_depth_kernel", "unregister_pass"]

REWRITE_MODES = ("int8", "float")  # the pass lists: full-integer files, and float32/fp16/dynamic files


_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class RewritePass:
    """One named rewrite: ``run(model, context)`` returns a model computing the same
    function (or ``model`` itself when nothing applies) and leaves ``model`` as it was.
    In a chain of passes the two models may share their unchanged layers
    (:func:`~sinet_tf.export.passes.graph.sharing_unchanged_layers`): read a layer's
    connections with ``read_graph``, not from ``layer.input`` / ``layer.output``.
    ``description``: one line. ``modes``: the export modes (:data:`REWRITE_MODES`) whose
    pass list it is in (none: it runs only when asked for by name). Calling the pass runs
    it alone (default context)."""

    name: str
    description: str
    run: Callable[[keras.Model, RewriteContext], keras.Model]
    modes: tuple[str, ...] = ("int8",)

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"rewrite pass name {self.name!r}: use lowercase letters, digits and '_'")
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ValueError(f"rewrite pass {self.name!r}: the description must be one non-empty line")
        if not callable(self.run):
            raise TypeError(f"rewrite pass {self.name!r}: run must be a function (model, context) -> model")
        modes = (self.modes,) if isinstance(self.modes, str) else tuple(self.modes)
        unknown = [m for m in modes if m not in REWRITE_MODES]
        if unknown:
            raise ValueError(f"rewrite pass {self.name!r}: unknown mode {unknown[0]!r}; "
                             f"choose from {', '.join(REWRITE_MODES)}")
        object.__setattr__(self, "modes", modes)

    def __call__(self, model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
        result = self.run(model, RewriteContext() if context is None else context)
        if not isinstance(result, keras.Model):
            raise TypeError(f"rewrite pass {self.name!r} returned {type(result).__name__}, not a keras.Model")
        return result


PASSES: list[RewritePass] = [
    RewritePass("channel_shuffles", "channel shuffles after grouped 1x1 convs moved into the weights after them",
                absorb_channel_shuffles, modes=("int8", "float")),
    RewritePass("input_normalization", "input normalization (and a BN right after) folded into the first conv",
                fold_input_normalization),
    RewritePass("batch_norms", "BNs after concats/resizes/adds folded into convs, moved or made one depthwise op",
                place_batch_norms, modes=("int8", "float")),
    RewritePass("pointwise_merge", "conv -> [linear activation] -> 1x1 conv merged into one conv",
                merge_pointwise_convs, modes=("int8", "float")),
    RewritePass("concat_activations", "a ReLU after a concat of conv outputs fused into those convs",
                activations_into_concat_parts, modes=("int8", "float")),
    RewritePass("prelu", "PReLU as MUL with fused ReLU + ADD (DecomposedPReLU)", decompose_prelus),
    RewritePass("average_pools", "AveragePooling2D(k, stride k) as a k x k depthwise conv", pools_as_depthwise),
    RewritePass("space_to_depth", "few-channel full-resolution convs computed on 2x2 pixel blocks",
                convs_on_pixel_blocks, modes=()),
    RewritePass("equalize", "per-channel range equalization on the calibration images (none: skipped)",
                equalize_on_calibration_images),
    RewritePass("column_blocks", "few-channel convs at the network's ends computed on blocks of adjacent columns",
                convs_on_column_blocks, modes=("int8", "float")),
    RewritePass("implicit_padding", "an explicit zero padding before a conv made the conv's own 'same' padding",
                paddings_into_convs, modes=()),
]


def register_pass(rewrite_pass: RewritePass, *, before: str | None = None, after: str | None = None) -> RewritePass:
    """Add ``rewrite_pass`` to :data:`PASSES`: at the end, or right before/after the pass
    named ``before``/``after``. Names are unique. Returns the pass."""
    if not isinstance(rewrite_pass, RewritePass):
        raise TypeError(f"register_pass takes a RewritePass, not {type(rewrite_pass).__name__}")
    names = [p.name for p in PASSES]
    if rewrite_pass.name in names:
        raise ValueError(f"a rewrite pass named {rewrite_pass.name!r} is already registered")
    if before is not None and after is not None:
        raise ValueError("register_pass: give before or after, not both")
    anchor = before if before is not None else after
    if anchor is None:
        PASSES.append(rewrite_pass)
    else:
        _require_known([anchor])
        PASSES.insert(names.index(anchor) + (after is not None), rewrite_pass)
    return rewrite_pass


def unregister_pass(name: str) -> RewritePass:
    """Remove the pass ``name`` from :data:`PASSES`; returns it."""
    _require_known([name])
    return PASSES.pop([p.name for p in PASSES].index(name))


def _require_known(names: Iterable[str]) -> None:
    registered = [p.name for p in PASSES]
    unknown = [n for n in names if n not in registered]
    if unknown:
        raise ValueError(f"unknown rewrite pass {', '.join(map(repr, unknown))}; "
                         f"registered, in order: {', '.join(registered)}")


def passes_for(mode: str) -> list[str]:
    """The names of the passes in ``mode``'s list (:data:`REWRITE_MODES`), in run order."""
    if mode not in REWRITE_MODES:
        raise ValueError(f"unknown rewrite mode {mode!r}; choose one of {', '.join(REWRITE_MODES)}")
    return [p.name for p in PASSES if mode in p.modes]


def rewrite_mode(quantize: str) -> str:
    """The rewrite mode of an export's quantization: ``"int8"`` for full-integer files,
    ``"float"`` for the others (float32, fp16 and dynamic-range files compute in float)."""
    return "int8" if quantize == "int8" else "float"


def _rewrite(model, mode, passes, images, prelu_mode, equalization, final_copy=True):
    if passes is None:
        selected = [p for p in PASSES if mode in p.modes]
    else:
        wanted = [passes] if isinstance(passes, str) else list(passes)
        _require_known(wanted)
        if "equalize" in wanted and images is None:
            raise ValueError("the rewrite pass 'equalize' needs calibration images: give images=")
        selected = [p for p in PASSES if p.name in wanted]
    context = RewriteContext(images=images, prelu_mode=prelu_mode, equalization=equalization, mode=mode)
    rewritten = model
    with sharing_unchanged_layers():   # the intermediate models are private to this chain
        for rewrite_pass in selected:
            rewritten = rewrite_pass(rewritten, context)
    return copy_model(rewritten) if final_copy else rewritten


def int8_friendly(model: keras.Model, prelu_mode="auto", images=None, passes: Iterable[str] | None = None,
                  **equalization) -> keras.Model:
    """A copy of ``model`` with the rewrite passes applied (same weights, same function):
    the int8 list (the passes of :data:`PASSES` whose modes include ``"int8"``) in order, or
    only those named in ``passes`` (a name or a list of names, any mode; still in
    :data:`PASSES` order). ``prelu_mode``: the :class:`DecomposedPReLU` form, a function of a
    PReLU's alpha that returns one, or ``"auto"`` (:func:`auto_prelu_mode`). With
    calibration ``images``, channel ranges are then equalized (:func:`equalize_channels`,
    keyword arguments passed on)."""
    return _rewrite(model, "int8", passes, images, prelu_mode, equalization)


def int8_friendly_variants(model: keras.Model, image_sets, prelu_mode="auto", copy: bool = True,
                           **equalization) -> list[keras.Model]:
    """``[int8_friendly(model, prelu_mode, images=s, **equalization) for s in image_sets]``
    (``None`` in ``image_sets``: no equalization), with the passes before ``equalize`` run
    once for all of them: each pass is a function of the model it is given, so the results
    are the same models, and an export that tries both settings rebuilds the graph half as
    often. ``copy=False``: the results may share their unchanged layers with ``model``
    (:func:`~sinet_tf.export.passes.graph.sharing_unchanged_layers`; for models that are
    only run or converted, never trained or changed, e.g. by the exporter)."""
    names = passes_for("int8")
    cut = names.index("equalize") if "equalize" in names else len(names)
    # the shared prefix is an intermediate model too: each variant's result is the copy
    base = _rewrite(model, "int8", names[:cut], None, prelu_mode, {}, final_copy=False) if cut else model
    return [_rewrite(base, "int8", [n for n in names[cut:] if images is not None or n != "equalize"], images,
                     prelu_mode, equalization, final_copy=copy) for images in image_sets]


def float_friendly(model: keras.Model, passes: Iterable[str] | None = None, copy: bool = True) -> keras.Model:
    """A copy of ``model`` with the float list of rewrite passes applied (the passes whose
    modes include ``"float"``; same function), or only those named in ``passes``: what
    float32, fp16 and dynamic-range exports convert. ``copy=False``: as in
    :func:`int8_friendly_variants`."""
    return _rewrite(model, "float", passes, None, "auto", {}, final_copy=copy)


def rewrite_for_export(model: keras.Model, quantize: str, images=None, **options) -> keras.Model:
    """``model`` rewritten with the pass list of the export mode ``quantize`` (``none``,
    ``fp16``, ``dynamic``: :func:`float_friendly`; ``int8``: :func:`int8_friendly` with
    ``images`` and ``options``)."""
    if rewrite_mode(quantize) == "int8":
        return int8_friendly(model, images=images, **options)
    return float_friendly(model, **options)
