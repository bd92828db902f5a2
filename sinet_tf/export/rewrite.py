"""Numerically equivalent graph rewrites applied before full-integer (int8) conversion,
as an ordered list of named passes (:data:`PASSES`, run by :func:`int8_friendly`).

Every rewrite computes the same function as the Keras model (up to float rounding; the
tests check each one). They exist because int8 kernels are not faster than float32 ones
at SINet's tiny channel counts on CPUs without int8 dot-product instructions, ops XNNPACK
does not take in int8 fall back to slow builtin kernels, and every extra op is another pass
over memory with its own requantization: the int8 graph has to do less work than the float
one. The measurements behind this, and the rewrites tried and dropped, are in
``benchmarks/results/int8_rewrites.md``.

The passes, in the order they run (each one module of :mod:`sinet_tf.export.passes`, with
the why and the numbers in its docstring):

* ``channel_shuffles`` (:mod:`~sinet_tf.export.passes.channel_shuffle`): the shuffles
  after SINet's grouped 1x1 convs move into the weights after them.
* ``input_normalization`` (:mod:`~sinet_tf.export.passes.input_normalization`): the
  normalization, and a BatchNorm right after the first conv, folded into that conv
  (:class:`OffsetConv2D`).
* ``batch_norms`` (:mod:`~sinet_tf.export.passes.batch_norm`): BatchNorms after a
  concat, a resize or a residual add folded into the convs before them
  (:class:`FoldedAway`), moved before the resize (:class:`AffineThenResize`), left as a
  scale on one addend (:class:`ScaledAdd`) or made one op (:class:`ChannelAffine`).
* ``pointwise_merge`` (:mod:`~sinet_tf.export.passes.pointwise`): conv -> [linear
  Activation] -> 1x1 conv as one conv.
* ``prelu`` (:mod:`~sinet_tf.export.passes.prelu`): :class:`DecomposedPReLU`.
* ``average_pools`` (:mod:`~sinet_tf.export.passes.pooling`): pools as depthwise convs.
* ``space_to_depth`` (:mod:`~sinet_tf.export.passes.space_to_depth`): few-channel
  full-resolution convs on 2x2 pixel blocks (:class:`SpaceToDepthConv2D`).
* ``equalize`` (:mod:`~sinet_tf.export.passes.equalize`): with calibration images,
  per-channel range equalization (:func:`equalize_channels`).

The order matters: ``channel_shuffles`` walks through PReLUs and pools, not their
replacements; ``input_normalization`` folds the BN after the first conv with the
normalization (one rounding to float32), and ``batch_norms`` then sees the
:class:`OffsetConv2D` (a BN after it cannot be left to the converter); ``space_to_depth``
takes the conv that ``pointwise_merge`` made; ``equalize`` scales the final layers.

A pass is a function ``(model, context) -> model`` (:class:`RewritePass`): it returns an
equivalent model, or ``model`` itself when it changes nothing, and never modifies
``model``; ``context`` (:class:`RewriteContext`) holds the calibration images and options.
A new pass is one function plus one entry in :data:`PASSES` (or a :func:`register_pass`
call, e.g. from a test).

The float32/fp16 exports keep the original layers (one PRELU op is cheaper on GPUs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras

from sinet_tf.export.passes.batch_norm import AffineThenResize, ChannelAffine, ScaledAdd, place_batch_norms
from sinet_tf.export.passes.channel_shuffle import absorb_channel_shuffles
from sinet_tf.export.passes.equalize import equalize_channels, equalize_on_calibration_images
from sinet_tf.export.passes.graph import FoldedAway, RewriteContext, copy_model
from sinet_tf.export.passes.input_normalization import OffsetConv2D, fold_input_normalization
from sinet_tf.export.passes.pointwise import merge_pointwise_convs
from sinet_tf.export.passes.pooling import pools_as_depthwise
from sinet_tf.export.passes.prelu import NEAR_RELU, DecomposedPReLU, auto_prelu_mode, decompose_prelus
from sinet_tf.export.passes.space_to_depth import SpaceToDepthConv2D, convs_on_pixel_blocks, space_to_depth_kernel

__all__ = ["NEAR_RELU", "PASSES", "AffineThenResize", "ChannelAffine", "DecomposedPReLU", "FoldedAway", "OffsetConv2D",
           "RewriteContext", "RewritePass", "ScaledAdd", "SpaceToDepthConv2D", "absorb_channel_shuffles",
           "auto_prelu_mode", "equalize_channels", "int8_friendly", "register_pass", "space_to_depth_kernel",
           "unregister_pass"]


_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class RewritePass:
    """One named rewrite: ``run(model, context)`` returns a model computing the same
    function (or ``model`` itself when nothing applies) and leaves ``model`` as it was.
    ``description``: one line. Calling the pass runs it alone (default context)."""

    name: str
    description: str
    run: Callable[[keras.Model, RewriteContext], keras.Model]

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"int8 rewrite pass name {self.name!r}: use lowercase letters, digits and '_'")
        if not isinstance(self.description, str) or not self.description.strip() or "\n" in self.description:
            raise ValueError(f"int8 rewrite pass {self.name!r}: the description must be one non-empty line")
        if not callable(self.run):
            raise TypeError(f"int8 rewrite pass {self.name!r}: run must be a function (model, context) -> model")

    def __call__(self, model: keras.Model, context: RewriteContext | None = None) -> keras.Model:
        result = self.run(model, RewriteContext() if context is None else context)
        if not isinstance(result, keras.Model):
            raise TypeError(f"int8 rewrite pass {self.name!r} returned {type(result).__name__}, not a keras.Model")
        return result


PASSES: list[RewritePass] = [
    RewritePass("channel_shuffles", "channel shuffles after grouped 1x1 convs moved into the weights after them",
                absorb_channel_shuffles),
    RewritePass("input_normalization", "input normalization (and a BN right after) folded into the first conv",
                fold_input_normalization),
    RewritePass("batch_norms", "BNs after concats/resizes/adds folded into convs, moved or made one depthwise op",
                place_batch_norms),
    RewritePass("pointwise_merge", "conv -> [linear activation] -> 1x1 conv merged into one conv",
                merge_pointwise_convs),
    RewritePass("prelu", "PReLU as MUL with fused ReLU + ADD (DecomposedPReLU)", decompose_prelus),
    RewritePass("average_pools", "AveragePooling2D(k, stride k) as a k x k depthwise conv", pools_as_depthwise),
    RewritePass("space_to_depth", "few-channel full-resolution convs computed on 2x2 pixel blocks",
                convs_on_pixel_blocks),
    RewritePass("equalize", "per-channel range equalization on the calibration images (none: skipped)",
                equalize_on_calibration_images),
]


def register_pass(rewrite_pass: RewritePass, *, before: str | None = None, after: str | None = None) -> RewritePass:
    """Add ``rewrite_pass`` to :data:`PASSES`: at the end, or right before/after the pass
    named ``before``/``after``. Names are unique. Returns the pass."""
    if not isinstance(rewrite_pass, RewritePass):
        raise TypeError(f"register_pass takes a RewritePass, not {type(rewrite_pass).__name__}")
    names = [p.name for p in PASSES]
    if rewrite_pass.name in names:
        raise ValueError(f"an int8 rewrite pass named {rewrite_pass.name!r} is already registered")
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
        raise ValueError(f"unknown int8 rewrite pass {', '.join(map(repr, unknown))}; "
                         f"registered, in order: {', '.join(registered)}")


def int8_friendly(model: keras.Model, prelu_mode="auto", images=None, passes: Iterable[str] | None = None,
                  **equalization) -> keras.Model:
    """A copy of ``model`` with the rewrite passes applied (same weights, same function):
    all of :data:`PASSES` in order, or only those named in ``passes`` (a name or a list of
    names; still in :data:`PASSES` order). ``prelu_mode``: the :class:`DecomposedPReLU` form, a function of a PReLU's
    alpha that returns one, or ``"auto"`` (:func:`auto_prelu_mode`). With calibration
    ``images``, channel ranges are then equalized (:func:`equalize_channels`, keyword
    arguments passed on)."""
    if passes is None:
        selected = list(PASSES)
    else:
        wanted = [passes] if isinstance(passes, str) else list(passes)
        _require_known(wanted)
        if "equalize" in wanted and images is None:
            raise ValueError("the int8 rewrite pass 'equalize' needs calibration images: give images=")
        selected = [p for p in PASSES if p.name in wanted]
    context = RewriteContext(images=images, prelu_mode=prelu_mode, equalization=equalization)
    rewritten = model
    for rewrite_pass in selected:
        rewritten = rewrite_pass(rewritten, context)
    return copy_model(model) if rewritten is model else rewritten
