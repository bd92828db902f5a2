"""PortraitNet augmentation: one spec, two backends.

The spec is PortraitNet's (Zhang et al., "PortraitNet: Real-time portrait segmentation
network for mobile device", Computers & Graphics 2019, Sec. 3.3), which SINet's training
also uses:

* geometric, applied identically to photo and label: horizontal flip (p = 0.5), rotation
  U(-45, 45) degrees, scale U(0.5, 1.5), translation U(-0.25, 0.25) of the output size;
  the photo is sampled bilinearly and padded with 128, the label with nearest neighbour
  and padded with 0 (background);
* texture, photo only, each with p = 0.5: Gaussian noise (sigma 10), Gaussian blur with
  kernel 3 or 5, and PIL-style enhancements: colour U(0.4, 1.7), brightness U(0.4, 1.7),
  contrast U(0.6, 1.5), sharpness U(0.8, 1.3).

Backend ``tf`` (here) is TensorFlow, and works on whole batches (:func:`augment_batch`):
one small XLA function draws every example's parameters, one XLA function does the pixel
work of the batch.

* **Canvas.** Each photo is resized once, when the pipeline first reads it, onto a
  fixed-size *canvas* (:func:`canvas_size`: the output size times the largest zoom, 1.5
  by default, so that zooming in samples as many photo pixels per output pixel as the
  full-size photo would give), packed with its label into one ``int32`` per pixel (R, G,
  B and label bytes) inside a :data:`RING` of fill values (128, 128, 128, 0)
  (:func:`make_canvas`). Photos of any size then batch, and constant-fill sampling is
  unchanged: outside the photo means outside the canvas. **This is the one change in
  pixel values**: the photo is resized first (OpenCV ``INTER_AREA`` when it shrinks,
  ``INTER_LINEAR`` otherwise; the label ``INTER_NEAREST``) and then sampled from the
  canvas, instead of being sampled once from the full-size photo (which aliases when it
  shrinks). The geometry is that of :func:`geometric_transform`, in coordinates of the
  photo stretched to the output size.
* **Warp.** Flip, rotation, scale and translation are one affine map from output to
  canvas pixel centres per image (:func:`_affine_to_input`). One XLA gather per output
  pixel fetches its packed 2x2 window (indices computed beforehand, vectorised), from
  which the photo is interpolated bilinearly and the label taken from the nearest of
  the four taps, as ``ImageProjectiveTransformV3`` with constant fill does (the tests
  compare the two), photo and label on one sampling grid. The warp covers a 3-pixel
  :data:`MARGIN` around the output, which the blur (radius 2) and PIL's smoothing
  (radius 1) read instead of a padded border (:func:`texture_transform`, given one photo,
  pads it symmetrically instead: the results agree away from the border).
* **Texture.** Noise, blur and sharpness run in a loop over the images of the batch,
  each skipped by an XLA conditional when its coin says no. PIL's colour, brightness,
  contrast and sharpness (``out = degenerate + factor * (image - degenerate)``) are
  linear per image, so colour, brightness and contrast commute with the sharpness' (linear)
  smoothing and are applied after it as one affine map per image, batched, in the pass
  that also interleaves the channels: the same result as applying them in turn.
* **Random numbers.** Every draw is a counter-based hash (murmur3's 32-bit finaliser) of
  the example's seed (int64 ``[2]``), the draw's stream number and, for the noise, the
  element index: a pure function of ``(seed, example)``, vectorised over a batch. An
  example's augmentation depends on its own seed and photo only, never on its batch-mates
  or the batch size. The noise is Box-Muller (a 20-bit radius draw and a 12-bit angle, so
  |z| <= 5.4 sigma), i.i.d. per pixel and channel and drawn afresh for every example.
  Streams are allocated by the draw's name (:func:`draw_streams`): PortraitNet's draws keep
  the numbers they always had (:data:`_RESERVED_STREAMS`, below 2^16), any other draw gets
  a hash of its name (2^16 and above), and registration refuses a name or number in use.

**Texture ops** are registry entries (:class:`TextureOp`): name, probability field, named
parameter draws (:class:`Draw`), per-image *factors* (the values the op's coin gates; when
it says no, the op's neutral values), the apply function and, optionally, an imgaug form.
Which pass runs the apply function is its *stage*: ``filter`` (per image, before the
clip, may read up to its ``radius`` of neighbours; noise, blur), ``enhance`` (per image,
after the clip, reads neighbours; sharpness), ``affine`` (batched, an affine map of the
image and of its mean grey; colour, brightness, contrast) or ``pixel`` (batched, after
the final clip, the result clipped again). A new op is one definition and one registration::

    @texture_op("invert", "pixel", draws=(Draw("invert", "uniform", (0.5, 1.0), neutral=0.0),))
    def invert(x, f, keys):  # planar [B, 3, h, w]; f["invert"] [B, 1, 1, 1], 0 when not applied
        return f["invert"] * 255.0 + (1.0 - 2.0 * f["invert"]) * x

It is drawn (``apply_invert``, ``invert``) by :func:`sample_params`, runs in
:func:`augment_batch`, :func:`augment_example` and :func:`texture_transform` after the
registered ops, and the imgaug backend refuses it unless it is given ``imgaug=``.

:func:`geometric_transform` (``ImageProjectiveTransformV3`` on any photo) and
:func:`texture_transform` (one photo, explicit parameters) are the per-example reference
forms. :func:`augment_batch` needs XLA's CPU (or GPU) compiler, part of every TensorFlow
build; it compiles once per output size, batch size and spec (a few seconds).
Backend ``imgaug`` lives in :mod:`sinet_tf.data.augment_imgaug`.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np
import tensorflow as tf

from sinet_tf.compat import xla_window_gather

__all__ = ["PortraitNetAugmentation", "sample_params", "augment_example", "augment_batch",
           "geometric_transform", "texture_transform", "resize_example", "canvas_size", "make_canvas",
           "MARGIN", "RING", "TEXTURE_OPS", "Draw", "TextureOp", "texture_op", "register_texture_op",
           "unregister_texture_op", "texture_ops", "draw_streams", "STAGES"]


@dataclass(frozen=True)
class PortraitNetAugmentation:
    """The augmentation parameters (defaults: PortraitNet's)."""

    flip_prob: float = 0.5
    rotation_deg: tuple[float, float] = (-45.0, 45.0)
    scale: tuple[float, float] = (0.5, 1.5)
    translate: tuple[float, float] = (-0.25, 0.25)
    image_fill: float = 128.0
    label_fill: int = 0
    texture_prob: float = 0.5
    noise_sigma: float = 10.0
    blur_kernels: tuple[int, ...] = (3, 5)
    color: tuple[float, float] = (0.4, 1.7)
    brightness: tuple[float, float] = (0.4, 1.7)
    contrast: tuple[float, float] = (0.6, 1.5)
    sharpness: tuple[float, float] = (0.8, 1.3)

    def __post_init__(self):
        # the probabilities and ranges the declared draws read (geometry's, then each
        # registered texture op's), in declaration order
        own = {f.name for f in fields(self)}
        draws = _GEOMETRY + tuple(d for op in _REGISTRY for d in (op.coin, *op.draws))

        def read(kind):
            names = [d.source for d in draws if d.kind == kind and isinstance(d.source, str) and d.source in own]
            return list(dict.fromkeys(names))

        for name in read("coin"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        for name in read("uniform"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"augmentation range {name}={getattr(self, name)} has low > high")
        if self.scale[0] <= 0:
            raise ValueError(f"augmentation scale must be positive, got {self.scale}")
        for op in _REGISTRY:
            if op.check is not None:
                op.check(self)
        for name in ("image_fill", "label_fill"):
            v = getattr(self, name)
            if not (0 <= v <= 255 and float(v) == int(v)):
                raise ValueError(f"augmentation {name} must be an integer in [0, 255] (a uint8 value), got {v}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def none(cls) -> "PortraitNetAugmentation":
        """No augmentation at all (identity geometry, every registered texture op's
        probability field 0)."""
        own = {f.name for f in fields(cls)}
        off = {op.prob: 0.0 for op in _REGISTRY if isinstance(op.prob, str) and op.prob in own}
        return cls(flip_prob=0.0, rotation_deg=(0.0, 0.0), scale=(1.0, 1.0), translate=(0.0, 0.0), **off)


TEXTURE_OPS = ("noise", "blur", "color", "brightness", "contrast", "sharpness")  # PortraitNet's, registered below
MARGIN = 3  # pixels warped around the output: blur radius 2 + PIL SMOOTH radius 1
RING = 2  # pixels of fill around a canvas: every 2x2 window of a point outside is all fill
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's convert("L") used by ImageEnhance

# ----------------------------------------------------------------------------------------
# counter-based random numbers (uint32 arithmetic: wrapping products, logical shifts)

_U32 = tf.uint32


def _shr(x, k):
    return tf.bitwise.right_shift(x, tf.constant(k, _U32))


def _xor(a, b):
    return tf.bitwise.bitwise_xor(a, b)


def _fmix(h):
    """murmur3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    h = _xor(h, _shr(h, 16)) * tf.constant(0x85EBCA6B, _U32)
    h = _xor(h, _shr(h, 13)) * tf.constant(0xC2B2AE35, _U32)
    return _xor(h, _shr(h, 16))


def _seed_keys(seed):
    """int64 ``[..., 2]`` seeds -> two uint32 ``[...]`` key words, two independent hash
    chains over the four 32-bit words of the seed."""
    seed = tf.cast(seed, tf.int64)
    w = []
    for j in range(2):
        s = seed[..., j]
        w.append(tf.cast(tf.bitwise.bitwise_and(s, 0xFFFFFFFF), _U32))
        w.append(tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(s, 32), 0xFFFFFFFF), _U32))
    c1, c2 = tf.constant(0x243F6A88, _U32), tf.constant(0x13198A2E, _U32)
    k1 = _fmix(_fmix(_xor(_fmix(_fmix(_xor(w[0], c1)) + w[1]), w[2])) + w[3])
    k2 = _fmix(_xor(_fmix(_fmix(_xor(_fmix(w[0] + c2), w[1])) + w[2]), w[3]))
    return k1, k2


def _stream_bits(keys, streams):
    """32 random bits (uint32 ``[..., len(streams)]``) for the draws numbered ``streams``
    of each key pair."""
    k1, k2 = keys
    offsets = tf.constant([(j * 0x9E3779B9) & 0xFFFFFFFF for j in streams], _U32)
    return _fmix(_xor(_fmix(k1[..., None] + offsets), k2[..., None]))


def _to_float(bits):
    """uint32 values below 2^31 as float32 (via int32: a native conversion)."""
    return tf.cast(tf.bitcast(bits, tf.int32), tf.float32)


def _unit(bits):
    """Top 24 bits as a float32 in [0, 1)."""
    return _to_float(_shr(bits, 8)) * (1.0 / 16777216.0)


# ln(1 + t) on [0, 1): least-squares degree-7 polynomial, |error| < 3e-7
_LOG1P = (0.99997851, -0.49942326, 0.32793693, -0.2250061, 0.1333498, -0.05417405, 0.01048553)


def _log_unit(u):
    """ln(u) for float32 u in (0, 1], vectorisable: exponent and a polynomial of the
    mantissa (XLA's own logarithm handles every special value and costs 3x the work)."""
    bits = tf.bitcast(u, tf.int32)
    exponent = tf.cast(tf.bitwise.right_shift(bits, 23) - 127, tf.float32)
    t = tf.bitcast(tf.bitwise.bitwise_or(tf.bitwise.bitwise_and(bits, 0x7FFFFF), 0x3F800000), tf.float32) - 1.0
    poly = _LOG1P[-1]
    for c in _LOG1P[-2::-1]:
        poly = c + t * poly
    return exponent * math.log(2.0) + t * poly


def _standard_normal(noise_keys, shape):
    """Standard normal noise ``[B, *shape]``, one field per key pair (uint32 ``[B, 2]``
    from :func:`_draw`): murmur3's finaliser of (key, element index) -> Box-Muller with a
    20-bit radius draw and a 12-bit angle (so |z| <= 5.4), from polynomials accurate to
    ~1e-6 (XLA's logarithm is slow and its cosine scalar on CPU)."""
    expand = [-1] + [1] * len(shape)
    nk1, nk2 = (tf.reshape(noise_keys[:, i], expand) for i in range(2))
    index = tf.bitcast(tf.reshape(tf.range(int(np.prod(shape)), dtype=tf.int32), [1, *shape]), _U32)
    # one finaliser round of an affine function of the index, its multiplier odd (a bijection
    # of the index per key: no value repeats within a field)
    h = _fmix(index * tf.bitwise.bitwise_or(nk1, tf.constant(1, _U32)) + nk2)
    u1 = (_to_float(_shr(h, 12)) + 0.5) * (1.0 / 1048576.0)  # (0, 1)
    v = _to_float(tf.bitwise.bitwise_and(h, tf.constant(4095, _U32))) * (1.0 / 4096.0) - 0.5  # [-1/2, 1/2)
    # cos(2 pi v) = 1 - 2 sin^2(pi v), sin by its Taylor series to degree 11 (|error| < 1e-6);
    # products with reciprocals (XLA keeps a division by a constant a division)
    a = math.pi * v
    a2 = a * a
    s = 1 - a2 * (1 / 110)
    for n in (72, 42, 20, 6):
        s = 1 - a2 * (1 / n) * s
    s = a * s
    radius2 = tf.maximum(-2.0 * _log_unit(u1), 0.0)
    return tf.sqrt(radius2) * (1.0 - 2.0 * s * s)


# ----------------------------------------------------------------------------------------
# random draws, allocated by name


@dataclass(frozen=True)
class Draw:
    """One random parameter of an example, drawn from its own stream(s) of random numbers.

    ``kind``:

    * ``"coin"``: bool, ``u < p`` with ``p`` from ``source``;
    * ``"uniform"``: float32, ``lo + (hi - lo) * u`` with ``(lo, hi)`` from ``source``;
    * ``"choice"``: int32, one of the integers of ``source``, each equally likely;
    * ``"bits"``: ``words`` raw uint32 (the keys of a noise field); not a parameter of
      :func:`sample_params`, handed to the op's apply function as ``keys``.

    ``u`` is the top 24 bits of the stream's hash as a float32 in [0, 1). ``source`` is the
    name of a :class:`PortraitNetAugmentation` field (validated with the spec: a coin's in
    [0, 1], a range's low <= high) or a literal value. ``neutral`` is the value that leaves
    the image as it is: the parameter's default in :func:`texture_transform` and, for an op
    without explicit factors, its factor when the op's coin says no.
    """

    name: str
    kind: str
    source: object = None
    neutral: float = 0.0
    words: int = 1

    def __post_init__(self):
        if self.kind not in _DRAW_KINDS:
            raise ValueError(f"draw {self.name!r}: kind {self.kind!r} is not one of {', '.join(_DRAW_KINDS)}")
        if self.words < 1 or (self.words > 1 and self.kind != "bits"):
            raise ValueError(f"draw {self.name!r}: words={self.words} (only 'bits' draws take more than one)")
        if self.kind != "bits" and self.source is None:
            raise ValueError(f"draw {self.name!r}: a {self.kind} draw needs a source (a spec field or a value)")


_DRAW_KINDS = ("coin", "uniform", "choice", "bits")

# The stream numbers PortraitNet's draws always had: fixed, because the number decides which
# random numbers a seed gives (augmentation is a pure function of seed, epoch and position).
# 10 was never drawn. Every other draw's streams are a hash of its name, from 2^16 up.
_RESERVED_STREAMS = {
    "flip": (0,), "angle_deg": (1,), "scale": (2,), "tx": (3,), "ty": (4,), "blur_kernel": (5,), "color": (6,),
    "brightness": (7,), "contrast": (8,), "sharpness": (9,),
    "apply_noise": (11,), "apply_blur": (12,), "apply_color": (13,), "apply_brightness": (14,),
    "apply_contrast": (15,), "apply_sharpness": (16,),
    "noise_keys": (1000, 1001),
}
_NOISE_STREAMS = _RESERVED_STREAMS["noise_keys"]
_HASHED_STREAMS = 1 << 16


def _stream_numbers(name: str, words: int = 1) -> tuple[int, ...]:
    """The stream numbers of the draw called ``name``: its reserved ones, else CRC-32 of
    ``"name/i"`` mapped into [2^16, 2^32) (stable across runs and registration orders)."""
    if name in _RESERVED_STREAMS:
        streams = _RESERVED_STREAMS[name]
        if len(streams) != words:
            raise ValueError(f"draw {name!r} has {len(streams)} reserved streams, not {words}")
        return streams
    span = (1 << 32) - _HASHED_STREAMS
    return tuple(_HASHED_STREAMS + zlib.crc32(f"{name}/{i}".encode()) % span for i in range(words))


_GEOMETRY = (Draw("flip", "coin", "flip_prob"), Draw("angle_deg", "uniform", "rotation_deg"),
             Draw("scale", "uniform", "scale", neutral=1.0), Draw("tx", "uniform", "translate"),
             Draw("ty", "uniform", "translate"))
_STREAMS: dict[str, tuple[int, ...]] = {d.name: _stream_numbers(d.name) for d in _GEOMETRY}  # name -> streams
_REGISTRY: list["TextureOp"] = []  # the texture ops, in the order they apply within their stage
_TAKEN = ("noise_seed",)  # parameter names that are not draws


def _spec_value(spec, source, who):
    """``source`` read from ``spec`` when it names a field, else ``source`` itself."""
    if not isinstance(source, str):
        return source
    try:
        return getattr(spec, source)
    except AttributeError:
        raise ValueError(f"{who} reads augmentation field {source!r}, which {type(spec).__name__} "
                         "does not have") from None


# ----------------------------------------------------------------------------------------
# texture ops: one definition + one registration

STAGES = ("filter", "enhance", "affine", "pixel")


@dataclass(frozen=True, eq=False)
class TextureOp:
    """A texture op: drawn per example, gated by its own coin (``apply_<name>``, probability
    ``prob``: a spec field name or a number), applied by ``apply`` in its ``stage``.

    * ``draws``: its parameters (:class:`Draw`), by name.
    * ``factors(params, spec) -> {name: value}``: the per-image numbers ``apply`` reads,
      when the coin says yes (scalar or ``[B]``); ``neutral`` ``{name: value}`` when it
      says no. Default: each non-``bits`` draw is a factor of its own name and neutral.
    * ``apply`` by stage (``f``: the factors; ``keys``: the op's ``bits`` draws, uint32):

      - ``filter``: ``(x [1, 3, H, W], f scalars, keys [words]) -> [1, 3, H - 2r, W - 2r]``
        with ``r = radius``, per image, before the clip; skipped (an XLA conditional)
        unless ``active(f)`` (default: a factor is not its neutral value). The stage is one
        switch over which of its ops are active (2^n branches);
      - ``enhance``: the same signature, per image, after the clip, each its own conditional;
      - ``affine``: ``(z [B, 3, h, w], mean [B, 1, 1, 1], f [B, 1, 1, 1]) -> (z, mean)``,
        batched, an affine map per image of the image and of its mean grey (the mean grey
        of the image before ``enhance``, PIL's contrast degenerate, as transformed so far);
        these commute with the ``enhance`` stage's normalised smoothing, so the order of the
        spec holds; applied at the neutral factors too (it must leave the image as it is);
      - ``pixel``: ``(x [B, 3, h, w], f [B, 1, 1, 1], keys [B, words]) -> x``, batched,
        after the final clip, the result clipped again; applied at the neutral factors too.

    * ``radius``: ``filter``/``enhance`` only; the radii of the two stages add up to at most
      :data:`MARGIN`, the pixels the warp provides around the output.
    * ``imgaug(iaa, spec) -> augmenter``: the op for the imgaug backend (wrapped in
      ``iaa.Sometimes(probability)``); ``None``: that backend refuses a spec under which the
      op can apply.
    * ``check(spec)``: raises ``ValueError`` for an invalid spec (run by the spec).
    """

    name: str
    stage: str
    apply: Callable
    draws: tuple[Draw, ...] = ()
    prob: object = "texture_prob"
    factors: Callable | None = None
    neutral: Mapping[str, float] | None = None
    active: Callable | None = None
    radius: int = 0
    imgaug: Callable | None = None
    check: Callable | None = None

    @property
    def coin(self) -> Draw:
        return Draw(f"apply_{self.name}", "coin", self.prob)

    def probability(self, spec) -> float:
        return float(_spec_value(spec, self.prob, f"texture op {self.name!r}"))

    def neutral_factors(self) -> dict[str, float]:
        if self.neutral is not None:
            return dict(self.neutral)
        return {d.name: d.neutral for d in self.draws if d.kind != "bits"}

    def factor_values(self, params, spec) -> dict:
        if self.factors is not None:
            return self.factors(params, spec)
        return {d.name: params[d.name] for d in self.draws if d.kind != "bits"}

    @property
    def words(self) -> int:
        return sum(d.words for d in self.draws if d.kind == "bits")


def register_texture_op(op: TextureOp) -> TextureOp:
    """Add ``op`` after the registered texture ops; its draws get their streams. Refuses a
    name, parameter or stream in use, an unknown stage and a radius the margin cannot hold."""
    if not isinstance(op, TextureOp):
        raise TypeError(f"register_texture_op takes a TextureOp, got {type(op).__name__}")
    who = f"texture op {op.name!r}"
    if not op.name.isidentifier():
        raise ValueError(f"{who}: the name must be a Python identifier")
    if any(o.name == op.name for o in _REGISTRY):
        raise ValueError(f"{who} is registered already")
    if op.stage not in STAGES:
        raise ValueError(f"{who}: stage {op.stage!r} is not one of {', '.join(STAGES)}")
    if (op.factors is None) != (op.neutral is None):
        raise ValueError(f"{who}: factors= and neutral= go together (neutral: the factors' values that "
                         "leave the image as it is)")
    if not op.neutral_factors():
        raise ValueError(f"{who} has no factor for its coin to gate: give it a draw, or factors= and neutral=")
    if op.stage == "affine" and op.words:
        raise ValueError(f"{who}: an affine op takes no random words ('bits' draws)")
    if op.radius and op.stage not in ("filter", "enhance"):
        raise ValueError(f"{who}: only filter and enhance ops read neighbours (radius={op.radius})")
    reach = sum(o.radius for o in (*_REGISTRY, op) if o.stage in ("filter", "enhance"))
    if op.radius < 0 or reach > MARGIN:
        raise ValueError(f"{who}: radius {op.radius} makes the filter and enhance stages read {reach} pixels "
                         f"around the output; the warp provides MARGIN={MARGIN}")
    draws = (op.coin, *op.draws)
    streams, owner = {}, {s: name for name, ss in _STREAMS.items() for s in ss}
    for d in draws:
        if d.name in _STREAMS or d.name in _TAKEN or d.name in streams:
            raise ValueError(f"{who}: draw name {d.name!r} is in use")
        literal = not isinstance(d.source, str)
        if literal and d.kind == "uniform" and d.source[0] > d.source[1]:
            raise ValueError(f"{who}: draw {d.name!r} has range {d.source} with low > high")
        if literal and d.kind == "coin" and not 0.0 <= d.source <= 1.0:
            raise ValueError(f"{who}: draw {d.name!r} has probability {d.source}, not in [0, 1]")
        if literal and d.kind == "choice" and not d.source:
            raise ValueError(f"{who}: draw {d.name!r} chooses from nothing")
        streams[d.name] = _stream_numbers(d.name, d.words)
        for s in streams[d.name]:
            if s in owner:
                raise ValueError(f"{who}: draw {d.name!r} gets random stream {s}, which {owner[s]!r} has: "
                                 "rename the draw")
            owner[s] = d.name
    _STREAMS.update(streams)
    _REGISTRY.append(op)
    return op


def texture_op(name: str, stage: str, **fields_):
    """Decorator: ``@texture_op(name, stage, draws=..., ...)`` on the apply function defines
    and registers the :class:`TextureOp` (which the name then refers to)."""
    def register(apply):
        return register_texture_op(TextureOp(name, stage, apply, **fields_))

    return register


def unregister_texture_op(name: str) -> TextureOp:
    """Remove the texture op called ``name`` (and free its draws' names); returns it."""
    for i, op in enumerate(_REGISTRY):
        if op.name == name:
            del _REGISTRY[i]
            for d in (op.coin, *op.draws):
                del _STREAMS[d.name]
            return op
    raise ValueError(f"no texture op named {name!r} is registered ({', '.join(o.name for o in _REGISTRY)})")


def texture_ops() -> tuple[TextureOp, ...]:
    """The registered texture ops, in order."""
    return tuple(_REGISTRY)


def draw_streams() -> dict[str, tuple[int, ...]]:
    """Every declared draw (geometry's and the registered texture ops') -> its stream numbers."""
    return dict(_STREAMS)


def _check_streams():
    """All stream numbers in use and reserved are disjoint (checked at import)."""
    owner = {}
    for name, streams in (*_RESERVED_STREAMS.items(), *_STREAMS.items()):
        for s in streams:
            if owner.setdefault(s, name) != name:
                raise RuntimeError(f"draws {owner[s]!r} and {name!r} share random stream {s}")
    if max(s for ss in _RESERVED_STREAMS.values() for s in ss) >= _HASHED_STREAMS:
        raise RuntimeError("a reserved stream number lies in the hashed range")


def _draw(spec: PortraitNetAugmentation, seed, ops):
    """``(params, keys [..., words])`` from int64 seeds ``[..., 2]`` for the texture ops
    ``ops``: one hash of each seed and one vectorised draw per parameter (``keys``: the
    ops' ``bits`` draws, in op order)."""
    seed = tf.cast(seed, tf.int64)
    params = list(_GEOMETRY) + [d for op in ops for d in op.draws if d.kind != "bits"]
    scalars = params + [op.coin for op in ops]
    words = [d for op in ops for d in op.draws if d.kind == "bits"]
    streams = [_stream_numbers(d.name)[0] for d in scalars]
    streams += [s for d in words for s in _stream_numbers(d.name, d.words)]
    bits = _stream_bits(_seed_keys(seed), streams)
    u = _unit(bits[..., :len(scalars)])  # [..., n] in [0, 1)
    lo, span = [], []
    for d in scalars:
        a, b = _spec_value(spec, d.source, f"draw {d.name!r}") if d.kind == "uniform" else (0.0, 1.0)
        lo.append(float(a))
        span.append(float(b - a))
    values = tf.unstack(tf.constant(lo, tf.float32) + tf.constant(span, tf.float32) * u, axis=-1)
    def value(i, d):
        if d.kind == "uniform":
            return values[i]
        source = _spec_value(spec, d.source, f"draw {d.name!r}")
        if d.kind == "coin":
            return values[i] < source
        choices = tuple(int(c) for c in source)
        index = tf.minimum(tf.cast(values[i] * len(choices), tf.int32), len(choices) - 1)
        return tf.gather(tf.constant(choices, tf.int32), index)

    p = {d.name: value(i, d) for i, d in enumerate(params)}
    p["noise_seed"] = seed
    p.update((d.name, value(i, d)) for i, d in enumerate(scalars) if i >= len(params))
    return p, bits[..., len(scalars):]


def sample_params(spec: PortraitNetAugmentation, seed) -> dict[str, tf.Tensor]:
    """Draw every random parameter of one example from its ``seed`` (int64 ``[2]``), or of
    a batch from seeds ``[B, 2]`` (each example from its own seed: the same values as one
    at a time): geometry's, then each registered texture op's parameters, ``noise_seed``,
    and the texture ops' coins ``apply_<op>``.

    Returned so that tests can check ranges, and so that two views can share geometry.
    ``noise_seed`` is the seed the example's noise field is drawn from.
    """
    return _draw(spec, seed, texture_ops())[0]


# ----------------------------------------------------------------------------------------
# geometry


def _affine_to_input(params, in_hw, out_hw):
    """The 8 projective coefficients (``[..., 8]``, the last two 0) mapping an output pixel
    to the input pixel it samples, for scalar or batched ``params``.

    Output coordinates are those of the photo stretched to the output size (the plain
    resize of the official SINet pipeline); in them the augmentation flips, rotates and
    scales about the centre and translates by a fraction of the size. Pixel centres are
    mapped consistently (``in = (q + 0.5) * in_size / out_size - 0.5``).
    """
    in_h, in_w = tf.cast(in_hw[0], tf.float32), tf.cast(in_hw[1], tf.float32)
    out_h, out_w = float(out_hw[0]), float(out_hw[1])
    cx, cy = (out_w - 1) / 2.0, (out_h - 1) / 2.0
    theta = tf.cast(params["angle_deg"], tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    s = tf.cast(params["scale"], tf.float32)
    tx, ty = tf.cast(params["tx"], tf.float32) * out_w, tf.cast(params["ty"], tf.float32) * out_h
    # inverse of p = R S (q - c) + c + t  ->  q = S^-1 R^-1 (p - c - t) + c
    a, b = cos / s, sin / s
    c_, d = -sin / s, cos / s
    ox, oy = -(cx + tx), -(cy + ty)
    qx = [a, b, a * ox + b * oy + cx]
    qy = [c_, d, c_ * ox + d * oy + cy]
    flip = tf.cast(params["flip"], tf.float32)
    # flip applies to q: q_x -> (out_w - 1) - q_x
    qx = [qx[0] * (1 - 2 * flip), qx[1] * (1 - 2 * flip), qx[2] + flip * ((out_w - 1) - 2 * qx[2])]
    sx, sy = in_w / out_w, in_h / out_h
    row_x = [qx[0] * sx, qx[1] * sx, (qx[2] + 0.5) * sx - 0.5]
    row_y = [qy[0] * sy, qy[1] * sy, (qy[2] + 0.5) * sy - 0.5]
    zero = tf.zeros_like(a)
    return tf.stack([*row_x, *row_y, zero, zero], axis=-1)


def _project(x, transform, out_hw, interpolation, fill):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.constant(out_hw, tf.int32),
        fill_value=tf.cast(fill, tf.float32), interpolation=interpolation, fill_mode="CONSTANT")[0]


def geometric_transform(image, label, params, out_hw):
    """Resize to ``out_hw`` and apply flip/rotation/scale/translation to photo and label,
    sampling the photo given (any size) once, with ``ImageProjectiveTransformV3``: the
    reference form of the geometry that :func:`augment_batch` applies to its canvases.

    ``image`` float32 ``[H, W, 3]``, ``label`` uint8/int ``[H, W]``; returns float32
    ``[h, w, 3]`` (bilinear, padded with ``image_fill``) and uint8 ``[h, w]`` (nearest,
    padded with ``label_fill``).
    """
    spec_fill_img, spec_fill_lbl = params.get("image_fill", 128.0), params.get("label_fill", 0)
    transform = _affine_to_input(params, tf.shape(image)[:2], out_hw)
    img = _project(tf.cast(image, tf.float32), transform, out_hw, "BILINEAR", spec_fill_img)
    lbl = _project(tf.cast(label[..., None], tf.float32), transform, out_hw, "NEAREST", spec_fill_lbl)
    return img, tf.cast(lbl[..., 0], tf.uint8)


def canvas_size(spec: PortraitNetAugmentation, out_hw) -> tuple[int, int]:
    """The size photos are cached at for output size ``out_hw``: ``out_hw`` times the
    largest zoom of ``spec`` (at least 1), so that zooming in samples as many photo
    pixels per output pixel as the full-size photo would give (when it has them)."""
    zoom = max(1.0, float(spec.scale[1]))
    return int(math.ceil(out_hw[0] * zoom - 1e-6)), int(math.ceil(out_hw[1] * zoom - 1e-6))


def make_canvas(image, label, canvas_hw, image_fill=128, label_fill=0) -> np.ndarray:
    """``image`` uint8 ``[H, W, 3]`` and ``label`` uint8 ``[H, W]`` resized to ``canvas_hw``
    and packed as int32 ``[h + 4, w + 4]`` (bytes R, G, B, label, little end first) with a
    ring of :data:`RING` pixels of ``(image_fill,) * 3 + (label_fill,)``: the input of
    :func:`augment_batch`."""
    import cv2

    h, w = int(canvas_hw[0]), int(canvas_hw[1])
    image = np.asarray(image, np.uint8)
    label = np.asarray(label, np.uint8)
    if image.ndim != 3 or image.shape[-1] != 3 or label.shape != image.shape[:2]:
        raise ValueError(f"make_canvas: image {image.shape} and label {label.shape} do not match "
                         "([H, W, 3] and [H, W])")
    shrink = image.shape[0] >= h and image.shape[1] >= w
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    r = RING
    packed = np.empty((h + 2 * r, w + 2 * r, 4), np.uint8)
    packed[...] = (int(image_fill),) * 3 + (int(label_fill),)
    packed[r:-r, r:-r, :3] = image
    packed[r:-r, r:-r, 3] = label
    return np.ascontiguousarray(packed.view("<i4")[..., 0], dtype=np.int32)


def _byte(packed, i):
    """Byte ``i`` (0 = least significant) of int32 ``packed``."""
    shifted = tf.bitwise.right_shift(packed, 8 * i) if i else packed
    return tf.bitwise.bitwise_and(shifted, 255)


def _sample_grid(coeffs, out_hw, margin):
    """Canvas coordinates (x, y) ``[B, h + 2m, w + 2m]`` of the output pixel centres plus
    ``margin`` pixels around the output, for ``coeffs [B, 6]`` mapping output (x, y) to
    canvas (x, y)."""
    hh, ww = out_hw[0] + 2 * margin, out_hw[1] + 2 * margin
    ys = tf.range(-margin, hh - margin, dtype=tf.float32)[None, :, None]
    xs = tf.range(-margin, ww - margin, dtype=tf.float32)[None, None, :]
    c = coeffs[:, :, None, None]
    return c[:, 0] * xs + c[:, 1] * ys + c[:, 2], c[:, 3] * xs + c[:, 4] * ys + c[:, 5]


def _gather_index(coeffs, canvas_hw, out_hw, margin):
    """Flat int32 index ``[B, h + 2m, w + 2m]`` into a batch of packed canvases (rings
    included) of the top-left tap of each output pixel's 2x2 bilinear window (computed
    apart from the gather: fused into XLA's gather loop, this arithmetic runs unvectorised).

    Window starts are clamped to [-2, size] (canvas pixels), so that a window always lies
    within the canvas and its two-pixel :data:`RING`, and the window of a point outside the
    photo holds fill values only: constant-fill sampling needs no test per pixel."""
    x, y = _sample_grid(coeffs, out_hw, margin)
    hc, wc = canvas_hw
    hp, wp = hc + 2 * RING, wc + 2 * RING
    if coeffs.shape[0] is not None and coeffs.shape[0] * hp * wp >= 2 ** 31:
        raise ValueError(f"a batch of {coeffs.shape[0]} canvases of {hp}x{wp} is too large for int32 indexing")
    x0 = tf.cast(tf.clip_by_value(tf.floor(x), -RING, wc + RING - 2), tf.int32) + RING
    y0 = tf.cast(tf.clip_by_value(tf.floor(y), -RING, hc + RING - 2), tf.int32) + RING
    return tf.range(tf.shape(coeffs)[0])[:, None, None] * (hp * wp) + y0 * wp + x0


def _warp(canvas, index, coeffs, out_hw, margin):
    """Sample packed canvases ``[B, Hc + 4, Wc + 4]`` at the output grid plus ``margin``
    pixels around it; ``coeffs [B, 6]`` map output (x, y) to canvas (x, y), ``index`` is
    :func:`_gather_index` of them.

    Returns the photo planar float32 ``[B, 3, h + 2m, w + 2m]`` (bilinear) and the label
    uint8 ``[B, h, w]`` (nearest), outside the canvas the ring's fill values: as
    ``ImageProjectiveTransformV3`` with constant fill, pixel centres at integers.
    """
    batch, wp = canvas.shape[0], int(canvas.shape[2])
    hh, ww = out_hw[0] + 2 * margin, out_hw[1] + 2 * margin
    # one gather of the rows [i, i + 1] and [i + wp, i + wp + 1]: [B, hh, ww, 2, 2]
    starts = tf.stack([index, index + wp], axis=-1)[..., None]
    win = xla_window_gather(tf.reshape(canvas, [-1]), starts, window=2)
    win.set_shape([batch, hh, ww, 2, 2])
    x, y = _sample_grid(coeffs, out_hw, margin)
    # (a clamped window is all fill, so its weights do not matter)
    fx, fy = x - tf.floor(x), y - tf.floor(y)
    taps = [win[..., i, j] for i in (0, 1) for j in (0, 1)]
    planes = []
    for ch in range(3):
        v = [tf.cast(_byte(t, ch), tf.float32) for t in taps]
        top = v[0] + fx * (v[1] - v[0])
        bottom = v[2] + fx * (v[3] - v[2])
        planes.append(top + fy * (bottom - top))
    right, low = fx >= 0.5, fy >= 0.5
    nearest = tf.where(low, tf.where(right, taps[3], taps[2]), tf.where(right, taps[1], taps[0]))
    label = tf.cast(_byte(nearest, 3), tf.uint8)
    if margin:
        label = label[:, margin:-margin, margin:-margin]
    return tf.stack(planes, axis=1), label


# ----------------------------------------------------------------------------------------
# texture


def _taps(x, taps, axis):
    """``sum_k taps[k] * x[i + k]`` along ``axis`` (2 = rows, 3 = columns): a valid
    correlation, the output ``len(taps) - 1`` shorter."""
    n = len(taps)
    size = int(x.shape[axis]) - (n - 1)
    out = None
    for k, t in enumerate(taps):
        part = x[:, :, k:k + size] if axis == 2 else x[:, :, :, k:k + size]
        out = t * part if out is None else out + t * part
    return out


def _grey(x):  # planar [B, 3, ...] -> [B, 1, ...]
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


# PortraitNet's texture ops (Sec. 3.3), registered in the spec's order, each with p = texture_prob

_BLUR_SIGMA = {3: 0.5 ** 0.5, 5: 1.0}  # imgaug: the Gaussian with the variance of the k-tap binomial, (k - 1) / 4


@texture_op("noise", "filter", draws=(Draw("noise_keys", "bits", words=2),),
            factors=lambda p, spec: {"sigma": float(spec.noise_sigma)}, neutral={"sigma": 0.0},
            active=lambda f: f["sigma"] > 0.0,
            imgaug=lambda iaa, spec: iaa.AdditiveGaussianNoise(scale=spec.noise_sigma))
def _noise(x, f, keys):
    """Gaussian noise of standard deviation ``noise_sigma``, i.i.d. per pixel and channel
    (:func:`_standard_normal` of the example's two noise keys)."""
    return x + f["sigma"] * _standard_normal(keys[None], [int(d) for d in x.shape[1:]])


def _check_blur(spec):
    if not spec.blur_kernels or set(spec.blur_kernels) - {3, 5}:
        raise ValueError(f"augmentation blur_kernels must be drawn from (3, 5), got {spec.blur_kernels}")


@texture_op("blur", "filter", radius=2, draws=(Draw("blur_kernel", "choice", "blur_kernels", neutral=3),),
            # OpenCV's GaussianBlur with sigma 0 uses the binomial kernels [1 2 1]/4 and
            # [1 4 6 4 1]/16 for k = 3, 5, here as 5 taps [t2 t1 1-2(t1+t2) t1 t2];
            # not applied: the identity [0 0 1 0 0]
            factors=lambda p, spec: {"t1": 0.25, "t2": tf.where(p["blur_kernel"] > 3, 0.0625, 0.0)},
            neutral={"t1": 0.0, "t2": 0.0}, active=lambda f: f["t1"] > 0.0, check=_check_blur,
            imgaug=lambda iaa, spec: iaa.GaussianBlur(sigma=[_BLUR_SIGMA[k] for k in spec.blur_kernels]))
def _blur(x, f, keys):
    """OpenCV's Gaussian blur with kernel 3 or 5 (separable, valid: 4 pixels shorter)."""
    t1, t2 = f["t1"], f["t2"]
    kernel = [t2, t1, 1.0 - 2.0 * (t1 + t2), t1, t2]
    return _taps(_taps(x, kernel, 2), kernel, 3)


# PIL's ImageEnhance: out = degenerate + factor * (image - degenerate)

@texture_op("color", "affine", draws=(Draw("color", "uniform", "color", neutral=1.0),),
            imgaug=lambda iaa, spec: iaa.pillike.EnhanceColor(spec.color))
def _color(z, mean, f):
    """ImageEnhance.Color: degenerate = the grey image (kept: the mean grey is unchanged)."""
    g = _grey(z)
    return g + f["color"] * (z - g), mean


@texture_op("brightness", "affine", draws=(Draw("brightness", "uniform", "brightness", neutral=1.0),),
            imgaug=lambda iaa, spec: iaa.pillike.EnhanceBrightness(spec.brightness))
def _brightness(z, mean, f):
    """ImageEnhance.Brightness: degenerate = black."""
    return f["brightness"] * z, f["brightness"] * mean


@texture_op("contrast", "affine", draws=(Draw("contrast", "uniform", "contrast", neutral=1.0),),
            imgaug=lambda iaa, spec: iaa.pillike.EnhanceContrast(spec.contrast))
def _contrast(z, mean, f):
    """ImageEnhance.Contrast: degenerate = the mean grey."""
    return mean + f["contrast"] * (z - mean), mean


@texture_op("sharpness", "enhance", radius=1, draws=(Draw("sharpness", "uniform", "sharpness", neutral=1.0),),
            imgaug=lambda iaa, spec: iaa.pillike.EnhanceSharpness(spec.sharpness))
def _sharpness(y, f, keys):
    """ImageEnhance.Sharpness: degenerate = PIL's SMOOTH filter, (3x3 box sum + 4 * centre) / 13."""
    centre = y[:, :, 1:-1, 1:-1]
    ones = [1.0, 1.0, 1.0]
    smooth = (_taps(_taps(y, ones, 2), ones, 3) + 4.0 * centre) * (1.0 / 13.0)
    return smooth + f["sharpness"] * (centre - smooth)


_check_streams()


@functools.lru_cache(maxsize=None)
def _layout(ops: tuple[TextureOp, ...]):
    """Where each op's factors and keys sit in the per-image ``factors [B, F]`` and
    ``keys [B, K]``: ``({op name: {factor: column}}, {op name: (start, stop)}, {stage: ops})``."""
    columns, words, col, word = {}, {}, 0, 0
    for op in ops:
        names = list(op.neutral_factors())
        columns[op.name] = {k: col + i for i, k in enumerate(names)}
        col += len(names)
        words[op.name] = (word, word + op.words)
        word += op.words
    return columns, words, {s: tuple(op for op in ops if op.stage == s) for s in STAGES}


def _texture_factors(p, spec: PortraitNetAugmentation, ops):
    """Per-image factors ``[B, F]`` (:func:`_layout`'s columns) of the gated texture ops:
    each op's own when its coin says yes, else the values that leave the image as it is."""
    cols = []
    for op in ops:
        values = op.factor_values(p, spec)
        for name, neutral in op.neutral_factors().items():
            cols.append(tf.cast(tf.where(p[op.coin.name], values[name], neutral), tf.float32))
    if not cols:
        return tf.zeros(tf.concat([tf.shape(p["flip"]), [0]], 0), tf.float32)
    return tf.stack(cols, axis=-1)


def _active(op, f):
    if op.active is not None:
        return op.active(f)
    tests = [tf.not_equal(f[k], v) for k, v in op.neutral_factors().items()]
    return functools.reduce(tf.logical_or, tests)


def _texture_one(x, keys, f, ops):
    """The ``filter`` and ``enhance`` stages on one image: ``x`` planar float32
    ``[1, 3, h + 2m, w + 2m]`` (the warped photo with an m-pixel margin, m = the stages'
    reach), ``keys [K]``, ``f [F]`` its factors (:func:`_texture_factors`). Returns the
    filtered, clipped and enhanced centre ``z [3, h, w]`` and the mean grey before the
    enhancement (the contrast's degenerate).

    An op that is not active is skipped (XLA conditionals): this is why a batch loops over
    its images rather than gating every op arithmetically. The filter ops (noise, blur)
    share one 2^n-way branch: XLA turns a conditional whose branches are all cheap into a
    select of both, and the noise's logarithm in half of the branches keeps this one a
    branch. The clip follows the filters (a warped photo none touched is in [0, 255])."""
    columns, words, stage = _layout(ops)
    shape = [int(d) for d in x.shape[1:]]
    fs = {op.name: {k: f[i] for k, i in columns[op.name].items()} for op in ops if op.stage in ("filter", "enhance")}
    ks = {op.name: keys[words[op.name][0]:words[op.name][1]] for op in ops if op.stage in ("filter", "enhance")}

    def crop(v, r):
        return v[:, :, r:-r, r:-r] if r else v

    filters = stage["filter"]
    reach = sum(op.radius for op in filters)

    def branch(subset):
        def run():
            y = x
            for op in subset:
                y = op.apply(y, fs[op.name], ks[op.name])
            y = crop(y, reach - sum(op.radius for op in subset))
            return tf.clip_by_value(y, 0.0, 255.0) if subset else y
        return run

    n = len(filters)
    which = None
    for j, op in enumerate(filters):
        bit = tf.cast(_active(op, fs[op.name]), tf.int32)
        term = bit if j == n - 1 else 2 ** (n - 1 - j) * bit
        which = term if which is None else which + term
    if n:
        y = tf.switch_case(which, [branch([op for j, op in enumerate(filters) if i >> (n - 1 - j) & 1])
                                   for i in range(2 ** n)])
    else:
        y = x
    y.set_shape([1, shape[0], shape[1] - 2 * reach, shape[2] - 2 * reach])
    mean = tf.reduce_mean(_grey(crop(y, sum(op.radius for op in stage["enhance"]))))
    for op in stage["enhance"]:
        y = tf.cond(_active(op, fs[op.name]), lambda y=y, op=op: op.apply(y, fs[op.name], ks[op.name]),
                    lambda y=y, op=op: crop(y, op.radius))
    return y[0], mean


def _texture_planar(x, keys, factors, ops):
    """PortraitNet's texture changes (and any registered op) on a batch: ``x`` planar
    float32 ``[B, 3, h + 2m, w + 2m]`` (photos with a margin), ``keys [B, K]``,
    ``factors [B, F]`` from :func:`_texture_factors`; returns NHWC ``[B, h, w, 3]``. Order
    as in the spec: noise, blur, clip, colour, brightness, contrast, sharpness, clip; then
    the ``pixel`` ops.

    The filter and enhance ops (noise, blur, sharpness) run in a loop over the images
    (:func:`_texture_one`). The affine ops (colour, brightness, contrast) are linear per
    image and so commute with the (linear) smoothing of the sharpness op: they are applied
    after it, as affine maps per image (the same result as applying them in turn), in the
    batched pass that also interleaves the channels."""
    z, mean = tf.map_fn(lambda a: _texture_one(a[0][None], a[1], a[2], ops), (x, keys, factors),
                        fn_output_signature=(tf.float32, tf.float32))
    columns, words, stage = _layout(ops)

    def batched(op):
        return {k: tf.reshape(factors[:, i], [-1, 1, 1, 1]) for k, i in columns[op.name].items()}

    m = tf.reshape(mean, [-1, 1, 1, 1])
    for op in stage["affine"]:
        z, m = op.apply(z, m, batched(op))
    out = tf.clip_by_value(z, 0.0, 255.0)
    for op in stage["pixel"]:
        out = tf.clip_by_value(op.apply(out, batched(op), keys[:, words[op.name][0]:words[op.name][1]]), 0.0, 255.0)
    return tf.transpose(out, [0, 2, 3, 1])


def _per_image(seeds, spec: PortraitNetAugmentation, canvas_hw, out_hw, ops):
    """Everything random about a batch (a function of its own, apart from the pixel work:
    inside it, XLA would fuse these few numbers per image into every pixel): the canvas
    transforms ``[B, 6]``, the random keys ``[B, K]``, the texture factors ``[B, F]`` and
    the gather index ``[B, h + 6, w + 6]``."""
    p, keys = _draw(spec, seeds, ops)
    coeffs = _affine_to_input(p, canvas_hw, out_hw)[:, :6]
    return coeffs, keys, _texture_factors(p, spec, ops), _gather_index(coeffs, canvas_hw, out_hw, MARGIN)


def _augment_core(canvas, coeffs, keys, factors, index, out_hw, two_views, ops):
    plain, label = _warp(canvas, index, coeffs, out_hw, MARGIN)
    textured = _texture_planar(plain, keys, factors, ops)
    if two_views:
        plain = tf.transpose(plain[:, :, MARGIN:-MARGIN, MARGIN:-MARGIN], [0, 2, 3, 1])
        return textured, plain, label
    return textured, label


@functools.lru_cache(maxsize=None)
def _compiled_per_image(spec: PortraitNetAugmentation, canvas_hw: tuple[int, int], out_hw: tuple[int, int],
                        ops: tuple[TextureOp, ...]):
    # compiled too: a few hundred tiny ops, which XLA runs in one go
    return tf.function(functools.partial(_per_image, spec=spec, canvas_hw=canvas_hw, out_hw=out_hw, ops=ops),
                       jit_compile=True, autograph=False)


@functools.lru_cache(maxsize=None)
def _compiled_core(out_hw: tuple[int, int], two_views: bool, ops: tuple[TextureOp, ...]):
    return tf.function(functools.partial(_augment_core, out_hw=out_hw, two_views=two_views, ops=ops),
                       jit_compile=True, autograph=False)


def augment_batch(canvas, seeds, out_hw, spec: PortraitNetAugmentation, two_views: bool = False):
    """Augment a batch: ``canvas`` int32 ``[B, Hc + 4, Wc + 4]`` from :func:`make_canvas`
    (``Hc, Wc = canvas_size(spec, out_hw)``), ``seeds`` int64 ``[B, 2]`` (one per example).

    Returns ``(image float32 [B, h, w, 3] in [0, 255], label uint8 [B, h, w])`` or, with
    ``two_views``, ``(textured, plain, label)`` sharing the same geometry (PortraitNet's
    consistency loss). The pixel work is one XLA-compiled function per ``(out_hw,
    two_views)``, batch shape and set of registered texture ops; example ``i`` depends only
    on ``canvas[i]`` and ``seeds[i]``.
    """
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    ops = texture_ops()
    canvas = tf.convert_to_tensor(canvas, tf.int32)
    canvas_hw = (int(canvas.shape[1]) - 2 * RING, int(canvas.shape[2]) - 2 * RING)
    per_image = _compiled_per_image(spec, canvas_hw, out_hw, ops)(tf.convert_to_tensor(seeds, tf.int64))
    return _compiled_core(out_hw, bool(two_views), ops)(canvas, *per_image)


def augment_example(image, label, seed, out_hw, spec: PortraitNetAugmentation, two_views: bool = False):
    """Augment one example (``image`` uint8 ``[H, W, 3]``, ``label`` uint8 ``[H, W]``, ``seed``
    int64 ``[2]``): the canvas and :func:`augment_batch` with a batch of one, so exactly what
    the pipeline produces for this example. Returns ``(image, label)`` or, with
    ``two_views``, ``(textured, plain, label)``."""
    hw = canvas_size(spec, out_hw)

    def _canvas(img, lbl):
        return make_canvas(img, lbl, hw, spec.image_fill, spec.label_fill)

    canvas = tf.numpy_function(_canvas, [tf.cast(image, tf.uint8), tf.cast(label, tf.uint8)], tf.int32,
                               stateful=False)
    canvas.set_shape([hw[0] + 2 * RING, hw[1] + 2 * RING])
    outs = augment_batch(canvas[None], tf.reshape(tf.cast(seed, tf.int64), [1, 2]), out_hw, spec, two_views)
    return tuple(o[0] for o in outs)


_DTYPES = {"coin": tf.bool, "uniform": tf.float32, "choice": tf.int32}


def _params_or_neutral(params, ops):
    """Batch-of-one parameters for :func:`texture_transform`; missing ones leave the image
    alone (coins: off; parameters: their draw's neutral value)."""
    def get(name, default, dtype):
        return tf.reshape(tf.cast(params.get(name, default), dtype), [1])

    p = {op.coin.name: get(op.coin.name, False, tf.bool) for op in ops}
    for d in (d for op in ops for d in op.draws if d.kind != "bits"):
        p[d.name] = get(d.name, d.neutral, _DTYPES[d.kind])
    p["noise_seed"] = tf.reshape(tf.cast(params.get("noise_seed", [0, 0]), tf.int64), [1, 2])
    return p


def _texture_core(image, keys, factors, ops):
    h, w = int(image.shape[0]), int(image.shape[1])
    x = tf.pad(tf.transpose(image, [2, 0, 1])[None], [[0, 0], [0, 0], [MARGIN] * 2, [MARGIN] * 2],
               mode="SYMMETRIC")
    x.set_shape([1, 3, h + 2 * MARGIN, w + 2 * MARGIN])
    return _texture_planar(x, keys, factors, ops)[0]


@functools.lru_cache(maxsize=None)
def _compiled_texture(ops: tuple[TextureOp, ...]):
    return tf.function(functools.partial(_texture_core, ops=ops), jit_compile=True, autograph=False)


def texture_transform(image, params, spec: PortraitNetAugmentation):
    """The registered texture ops (PortraitNet's: noise, blur, colour, brightness, contrast,
    sharpness) on one float32 photo ``[H, W, 3]`` in [0, 255], each gated by its
    ``apply_<op>`` flag (a missing flag meaning off), with the borders padded symmetrically:
    the same computation :func:`augment_batch` runs on its warped batches (which read a
    warped margin instead of padding)."""
    ops = texture_ops()
    p = _params_or_neutral(params, ops)
    keys = _draw(spec, p["noise_seed"], ops)[1]
    return _compiled_texture(ops)(tf.convert_to_tensor(image, tf.float32), keys, _texture_factors(p, spec, ops))


def resize_example(image, label, out_hw):
    """No augmentation: the plain resize used for validation and calibration (bilinear
    photo with half-pixel centres, like ``cv2.resize(..., INTER_LINEAR)``; nearest label)."""
    img = tf.image.resize(tf.cast(image, tf.float32), out_hw, method="bilinear")
    lbl = tf.image.resize(label[..., None], out_hw, method="nearest")[..., 0]
    return img, tf.cast(lbl, tf.uint8)
