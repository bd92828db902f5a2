"""Segmentation losses for portrait models (Keras 3 / TensorFlow).

Conventions shared by every loss in this module
-----------------------------------------------
* ``y_true``: integer label map ``[B, H, W]`` (``[B, H, W, 1]`` is accepted and squeezed) holding
  class indices, plus ``ignore_index`` (default 255) for pixels that no loss looks at.
* ``y_pred``: logits ``[B, H, W, C]``.  ``C == 1``: a single person logit (sigmoid, person where
  the logit is > 0).  ``C >= 2``: softmax over classes, class 1 is the person.
* Logits may be float16 (mixed precision); every loss computes in float32.
* Labels and logits must have the same spatial size (the data pipeline resizes labels with
  nearest-neighbour): a static mismatch raises ``ValueError``, a dynamic one fails a
  ``tf.debugging`` assertion.
* ``call`` returns one loss per example (``[B]``) and the reduction machinery of
  :class:`keras.losses.Loss` (``reduction=``, ``sample_weight=``) does the rest, so the losses
  work in ``model.compile`` and in custom (distributed) train steps, e.g. with
  ``reduction="sum"`` and a division by the global batch size.

Losses compose with ``+`` and ``*``::

    loss = CrossEntropy() + 0.5 * BoundaryLoss(window=15)     # a WeightedSum
    loss = build_loss("ce + 1.0 * boundary(window=15)")         # the same, from recipe text

A :class:`WeightedSum` feeds the *same* ``(y_true, y_pred)`` to each term and adds the
weighted per-example losses; losses on other outputs (PortraitNet's edge head) go in a
per-output ``loss=[...]`` / ``loss={...}`` of ``compile``.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import numbers

import keras
import tensorflow as tf

__all__ = [
    "SegmentationLoss",
    "WeightedSum",
    "CrossEntropy",
    "BoundaryLoss",
    "BoundaryFocalLoss",
    "ConsistencyLoss",
    "LovaszHinge",
    "DiceLoss",
    "KnowledgeDistillation",
    "boundary_band",
    "edge_target",
    "consistency_loss",
    "distillation_per_example",
    "lovasz_hinge_per_example",
    "build_loss",
    "LOSS_NAMES",
]

_PACKAGE = "sinet_tf"


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _labels(y_true) -> tf.Tensor:
    """Integer labels ``[B, H, W]`` (squeezes a trailing channel of 1)."""
    y = tf.convert_to_tensor(y_true)
    if y.shape.rank == 4:
        if y.shape[-1] not in (1, None):
            raise ValueError(f"labels must be [B, H, W] integer maps, got shape {y.shape}")
        y = tf.squeeze(y, axis=-1)
    if y.shape.rank != 3:
        raise ValueError(f"labels must be [B, H, W] integer maps, got shape {y.shape}")
    if y.dtype.is_floating:
        y = tf.round(y)
    return tf.cast(y, tf.int32)


def _logits(y_pred) -> tf.Tensor:
    """Float32 logits ``[B, H, W, C]`` (a ``[B, H, W]`` map is read as ``C == 1``)."""
    z = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
    if z.shape.rank == 3:
        z = z[..., None]
    if z.shape.rank != 4:
        raise ValueError(f"logits must be [B, H, W, C], got shape {z.shape}")
    if z.shape[-1] is None:
        raise ValueError("the number of classes (last axis of the logits) must be static")
    return z


def _check_spatial(y: tf.Tensor, z: tf.Tensor, what: str = "logits") -> list:
    """Raise when labels ``[B, H, W]`` and ``z [B, H, W, C]`` differ in H, W (static or dynamic)."""
    ys, zs = y.shape[1:3], z.shape[1:3]
    if all(d is not None for d in list(ys) + list(zs)) and tuple(ys) != tuple(zs):
        raise ValueError(
            f"spatial shape mismatch: labels are {tuple(ys)} but {what} are {tuple(zs)}; "
            "resize the labels (nearest-neighbour) to the output size before the loss")
    if all(d is not None for d in list(ys) + list(zs)):
        return []
    return [tf.debugging.assert_equal(
        tf.shape(y)[1:3], tf.shape(z)[1:3],
        message=f"spatial shape mismatch between labels and {what}; resize the labels first")]


def _prepare(y_true, y_pred, what: str = "logits"):
    y, z = _labels(y_true), _logits(y_pred)
    deps = _check_spatial(y, z, what)
    if deps:
        with tf.control_dependencies(deps):
            y = tf.identity(y)
    return y, z


def _pixel_ce(y: tf.Tensor, z: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Per-pixel cross-entropy ``[B, H, W]`` (0 on invalid pixels)."""
    if z.shape[-1] == 1:
        target = tf.cast(tf.equal(y, 1), tf.float32)
        ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=z[..., 0])
    else:
        safe = tf.where(valid, y, tf.zeros_like(y))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=z)
    return tf.where(valid, ce, tf.zeros_like(ce))


def _masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` over ``mask`` per example ``[B]``; 0 where the mask is empty."""
    m = tf.cast(mask, tf.float32)
    num = tf.reduce_sum(values * m, axis=[1, 2])
    den = tf.reduce_sum(m, axis=[1, 2])
    return tf.math.divide_no_nan(num, den)


def _person_logit(z: tf.Tensor) -> tf.Tensor:
    """Logit of p(person) ``[B, H, W]``: z for C == 1, z1 - logsumexp(z_c, c != 1) for C >= 2.

    For C == 2 this is exactly ``z1 - z0``.
    """
    c = z.shape[-1]
    if c == 1:
        return z[..., 0]
    if c == 2:
        return z[..., 1] - z[..., 0]
    others = tf.concat([z[..., :1], z[..., 2:]], axis=-1)
    return z[..., 1] - tf.reduce_logsumexp(others, axis=-1)


def _person_prob(z: tf.Tensor) -> tf.Tensor:
    if z.shape[-1] == 1:
        return tf.sigmoid(z[..., 0])
    return tf.nn.softmax(z, axis=-1)[..., 1]


def _box_count(x: tf.Tensor, window: int) -> tf.Tensor:
    """Sum of ``x`` (int32 ``[B, H, W, C]``) over the ``window x window`` square centred on each
    pixel (offsets ``-r .. window - 1 - r``, ``r = (window - 1) // 2``, as a SAME pool places it;
    zeros outside the image), from running sums along each axis: O(1) per pixel whatever the
    window (TensorFlow's CPU max-pool, the direct dilation, costs O(window^2) per pixel)."""
    r = (window - 1) // 2
    for axis in (1, 2):
        pad = [[0, 0]] * 4
        pad[axis] = [r + 1, window - 1 - r]
        c = tf.cumsum(tf.pad(x, pad), axis=axis)
        hi = c[:, window:] if axis == 1 else c[:, :, window:]
        lo = c[:, :-window] if axis == 1 else c[:, :, :-window]
        x = hi - lo
    return x


def boundary_band(y_true, window: int = 15, num_classes: int = 2, ignore_index: int = 255,
                  dtype=tf.float32) -> tf.Tensor:
    """SINet's boundary band ``b = dilation(onehot(y)) - erosion(onehot(y))`` (Park et al. 2020).

    Morphology uses a ``window x window`` square (a stride-1 SAME max-pool; erosion is
    ``-maxpool(-x)``; the image border never creates band pixels), computed here from class
    counts over the window, which gives the same band.  A pixel is in the band when
    ``dilation - erosion > 0`` for some class, i.e. when its window holds more than one
    (non-ignored) class.  Ignored pixels are neutral: 0 for the dilation, 1 for the erosion, so
    an ignore region next to a single class makes no band; ignored pixels are never in the band.

    Args:
        y_true: labels ``[B, H, W]`` (or ``[H, W]``, ``[B, H, W, 1]``).
        window: side of the square structuring element (odd recommended; 15 for SINet's full
            model, 5 at the 1/8 encoder stage).
        num_classes: number of classes for the one-hot encoding.
        ignore_index: label value excluded from the band.
        dtype: ``tf.bool`` for a boolean map, a float dtype for a 0/1 map.

    Returns:
        the band ``[B, H, W]`` (same rank as the input labels when given ``[H, W]``).
    """
    y = tf.convert_to_tensor(y_true)
    squeeze = y.shape.rank == 2
    if squeeze:
        y = y[None]
    y = _labels(y)
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    valid = tf.not_equal(y, ignore_index)
    safe = tf.where(valid, y, tf.zeros_like(y))
    # dilation_c - erosion_c > 0 <=> the window holds class c and a valid pixel of another
    # class (ignored pixels: 0 for the dilation, 1 for the erosion); counted with box sums
    counts = _box_count(tf.one_hot(safe, int(num_classes), dtype=tf.int32) * tf.cast(valid, tf.int32)[..., None],
                        window)
    others = tf.reduce_sum(counts, axis=-1, keepdims=True) - counts
    band = tf.logical_and(tf.reduce_any((counts > 0) & (others > 0), axis=-1), valid)
    if squeeze:
        band = band[0]
    return band if dtype == tf.bool else tf.cast(band, dtype)


def edge_target(y_true, width: int = 4, ignore_index: int = 255, dtype=tf.float32) -> tf.Tensor:
    """PortraitNet's edge target: a ``width``-pixel band along the person contour.

    ``edge = dilation(m) - erosion(m)`` of the person mask ``m = (y == 1)`` with a
    ``(width + 1) x (width + 1)`` square, so the band extends ``width / 2`` px outside and
    ``width / 2`` px inside the contour (Zhang et al., PortraitNet, 2019, Sec. 3.2, where the
    edge is drawn 4 px wide).  Ignored pixels are neutral and never part of the edge.
    """
    y = tf.convert_to_tensor(y_true)
    squeeze = y.shape.rank == 2
    if squeeze:
        y = y[None]
    y = _labels(y)
    binary = tf.where(tf.equal(y, ignore_index), tf.fill(tf.shape(y), ignore_index),
                      tf.cast(tf.equal(y, 1), tf.int32))
    band = boundary_band(binary, int(width) + 1, 2, ignore_index, dtype=dtype)
    return band[0] if squeeze else band


# ----------------------------------------------------------------------------------------------
# composition
# ----------------------------------------------------------------------------------------------
class SegmentationLoss(keras.losses.Loss):
    """Base class: a :class:`keras.losses.Loss` computing in float32 that composes with ``+``/``*``.

    ``a + b`` and ``w * a`` return a :class:`WeightedSum`; ``sum([a, b])`` works too.
    """

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def _terms(self):
        return [(1.0, self)]

    def __add__(self, other):
        if isinstance(other, numbers.Number) and other == 0:
            return self
        if not isinstance(other, keras.losses.Loss):
            return NotImplemented
        other_terms = other._terms() if isinstance(other, SegmentationLoss) else [(1.0, other)]
        return WeightedSum(self._terms() + other_terms)

    def __radd__(self, other):
        if isinstance(other, numbers.Number) and other == 0:   # sum([...]) starts from 0
            return self
        if not isinstance(other, keras.losses.Loss):
            return NotImplemented
        return WeightedSum([(1.0, other)] + self._terms())

    def __mul__(self, weight):
        if not isinstance(weight, numbers.Number) or isinstance(weight, bool):
            return NotImplemented
        return WeightedSum([(float(weight) * w, loss) for w, loss in self._terms()])

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        if not isinstance(divisor, numbers.Number) or isinstance(divisor, bool):
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        if not isinstance(other, keras.losses.Loss):
            return NotImplemented
        neg = other * -1.0 if isinstance(other, SegmentationLoss) else WeightedSum([(-1.0, other)])
        return self + neg

    def _own_config(self) -> dict:
        return {}

    def get_config(self):
        config = super().get_config()
        config.update(self._own_config())
        return config

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._own_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeightedSum(SegmentationLoss):
    """``L = sum_i w_i * L_i(y_true, y_pred)``, per example.

    Each term's ``call`` gives per-example losses (extra axes, if a foreign Keras loss returns
    per-pixel values, are averaged); the sum is then reduced by this loss's ``reduction``
    (the terms' own reductions are not used).

    Args:
        terms: list of ``(weight, loss)`` pairs.
    """

    def __init__(self, terms, name="weighted_sum", reduction="sum_over_batch_size",
                 dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        parsed = []
        for term in terms:
            if isinstance(term, dict):
                weight, loss = term["weight"], term["loss"]
            else:
                weight, loss = term
            if isinstance(loss, dict):
                loss = keras.saving.deserialize_keras_object(loss)
            if not isinstance(loss, keras.losses.Loss):
                raise TypeError(f"WeightedSum terms must be keras Loss objects, got {loss!r}")
            parsed.append((float(weight), loss))
        if not parsed:
            raise ValueError("WeightedSum needs at least one term")
        self.terms = parsed

    def _terms(self):
        return list(self.terms)

    def call(self, y_true, y_pred):
        total = None
        for weight, loss in self.terms:
            value = tf.cast(loss.call(y_true, y_pred), tf.float32)
            if value.shape.rank is not None and value.shape.rank > 1:
                value = tf.reduce_mean(value, axis=list(range(1, value.shape.rank)))
            value = weight * value
            total = value if total is None else total + value
        return total

    def get_config(self):
        config = keras.losses.Loss.get_config(self)
        config["terms"] = [
            {"weight": w, "loss": keras.saving.serialize_keras_object(loss)}
            for w, loss in self.terms
        ]
        return config

    def __repr__(self):
        return " + ".join(f"{w:g} * {loss!r}" for w, loss in self.terms)


# ----------------------------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=_PACKAGE)
class CrossEntropy(SegmentationLoss):
    """Pixel-wise cross-entropy with an ignore label.

    ``L = 1/|V| sum_{i in V} -log softmax(z_i)[y_i]`` (C >= 2) or the binary form
    ``-[g_i log s(z_i) + (1 - g_i) log(1 - s(z_i))]`` with ``g_i = [y_i == 1]`` (C == 1),
    where ``V`` is the set of non-ignored pixels of the example; an example with ``V`` empty
    contributes 0.  (The standard segmentation loss, e.g. Long et al., FCN, CVPR 2015; SINet's
    and PortraitNet's main term.)
    """

    def __init__(self, ignore_index=255, name="cross_entropy", reduction="sum_over_batch_size",
                 dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        y, z = _prepare(y_true, y_pred)
        valid = tf.not_equal(y, self.ignore_index)
        return _masked_mean(_pixel_ce(y, z, valid), valid)

    def _own_config(self):
        return {"ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BoundaryLoss(SegmentationLoss):
    """SINet's boundary loss (Park et al., "SINet: Extreme Lightweight Portrait Segmentation
    Networks with Spatial Squeeze Modules and Information Blocking Decoder", WACV 2020, Sec. 3.3).

    The paper trains with ``L_total = CE(y, z) + lambda * CE(b * y, b * z)`` where
    ``b = dilation(y) - erosion(y)`` is the boundary band obtained with a square structuring
    element.  This class is the second term: the cross-entropy restricted to the band,

        ``L_b = 1/|B| sum_{i in B} CE_i``,  ``B = {i : boundary_band(y, window)_i = 1}``

    (0 when the example has no band pixel).  ``boundary_band`` documents the band (ignored
    pixels neutral).  Recipes: ``window=15`` on the full-resolution output, ``window=5`` on
    the 1/8-scale encoder output; compose with ``CrossEntropy() + lam * BoundaryLoss(...)``.
    For C == 1 the band is that of the binary person mask.
    """

    def __init__(self, window=15, ignore_index=255, name="boundary_loss",
                 reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.window = int(window)
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        y, z = _prepare(y_true, y_pred)
        valid = tf.not_equal(y, self.ignore_index)
        c = z.shape[-1]
        if c == 1:
            band_labels = tf.where(valid, tf.cast(tf.equal(y, 1), tf.int32),
                                   tf.fill(tf.shape(y), self.ignore_index))
            band = boundary_band(band_labels, self.window, 2, self.ignore_index, dtype=tf.bool)
        else:
            band = boundary_band(y, self.window, c, self.ignore_index, dtype=tf.bool)
        return _masked_mean(_pixel_ce(y, z, valid), band)

    def _own_config(self):
        return {"window": self.window, "ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BoundaryFocalLoss(SegmentationLoss):
    """PortraitNet's boundary loss (Zhang et al., "PortraitNet: Real-time portrait segmentation
    network for mobile device", Computers & Graphics 81, 2019, Sec. 3.2).

    A binary focal loss (Lin et al., ICCV 2017) on the boundary head's 1-channel logits ``e``
    against the edge target ``t = edge_target(y, edge_width)``:

        ``L_e = 1/|V| sum_{i in V} -(1 - p_t,i)^gamma log p_t,i``,
        ``p_t = sigmoid(e)`` where ``t = 1`` and ``1 - sigmoid(e)`` where ``t = 0``

    over the non-ignored pixels ``V``.  The paper's weight (0.1) is applied by composition:
    ``0.1 * BoundaryFocalLoss()``.  Use ``call(y_true, edge_logits)`` with edge logits
    ``[B, H, W, 1]`` (or ``[B, H, W]``).
    """

    def __init__(self, gamma=2.0, edge_width=4, ignore_index=255, name="boundary_focal_loss",
                 reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.gamma = float(gamma)
        self.edge_width = int(edge_width)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, edge_logits):
        y, e = _prepare(y_true, edge_logits, what="edge logits")
        if e.shape[-1] != 1:
            raise ValueError(f"BoundaryFocalLoss expects 1-channel edge logits, got {e.shape}")
        e = e[..., 0]
        valid = tf.not_equal(y, self.ignore_index)
        t = edge_target(y, self.edge_width, self.ignore_index)
        s = 2.0 * t - 1.0                                   # +1 on the edge, -1 elsewhere
        log_pt = -tf.nn.softplus(-s * e)                    # log sigmoid(s * e)
        one_minus_pt = tf.sigmoid(-s * e)
        focal = -tf.pow(one_minus_pt, self.gamma) * log_pt
        return _masked_mean(focal, valid)

    def _own_config(self):
        return {"gamma": self.gamma, "edge_width": self.edge_width,
                "ignore_index": self.ignore_index}


def _consistency_per_example(z_tex, z_plain, temperature):
    zt, zp = _logits(z_tex), _logits(z_plain)
    if zt.shape[-1] != zp.shape[-1]:
        raise ValueError(f"consistency: class counts differ ({zp.shape[-1]} vs {zt.shape[-1]})")
    st, sp = zt.shape[1:3], zp.shape[1:3]
    if all(d is not None for d in list(st) + list(sp)) and tuple(st) != tuple(sp):
        raise ValueError(f"consistency: spatial shapes differ, plain view {tuple(sp)} "
                         f"vs texture view {tuple(st)}; the views must share geometry")
    zp = tf.stop_gradient(zp)
    if zt.shape[-1] == 1:       # Bernoulli: softmax over [0, z] == [1 - sigmoid(z), sigmoid(z)]
        zt = tf.concat([tf.zeros_like(zt), zt], axis=-1)
        zp = tf.concat([tf.zeros_like(zp), zp], axis=-1)
    t = float(temperature)
    log_q = tf.nn.log_softmax(zp / t, axis=-1)
    log_r = tf.nn.log_softmax(zt / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_q) * (log_q - log_r), axis=-1)       # [B, H, W]
    return (t * t) * tf.reduce_mean(kl, axis=[1, 2])


def consistency_loss(z_tex, z_plain, temperature: float = 1.0, per_example: bool = False):
    """PortraitNet's consistency constraint (Zhang et al. 2019, Sec. 3.3).

    ``L_c = T^2 * mean_pixels KL(softmax(sg(z_plain) / T) || softmax(z_tex / T))``
    with ``sg`` = stop-gradient: the plain (deformation-only) view is the soft target for the
    texture-augmented view of the same geometry.  For C == 1 the KL is the Bernoulli one
    with ``q = sigmoid(z / T)``.

    Returns the batch mean (a scalar), or the per-example values ``[B]`` with
    ``per_example=True``.
    """
    values = _consistency_per_example(z_tex, z_plain, temperature)
    return values if per_example else tf.reduce_mean(values)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConsistencyLoss(SegmentationLoss):
    """PortraitNet's consistency loss as a Keras loss; see :func:`consistency_loss`.

    Argument order follows Keras' ``(y_true, y_pred)``: **``call(z_plain, z_tex)``**, i.e.
    ``loss(z_plain, z_tex)`` where ``z_plain`` (the target, gradient stopped) are the logits of
    the plain view and ``z_tex`` those of the texture-augmented view.  Per example:
    ``T^2 * mean_pixels KL(softmax(sg(z_plain)/T) || softmax(z_tex/T))``.
    """

    def __init__(self, temperature=1.0, name="consistency_loss",
                 reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

    def call(self, z_plain, z_tex):
        return _consistency_per_example(z_tex, z_plain, self.temperature)

    def _own_config(self):
        return {"temperature": self.temperature}


def _binary_as_two_classes(z: tf.Tensor) -> tf.Tensor:
    """One sigmoid logit ``z`` as the two softmax logits ``[0, z]`` (the same distribution)."""
    return tf.concat([tf.zeros_like(z), z], axis=-1)


def distillation_per_example(z_teacher, z_student, temperature: float = 1.0) -> tf.Tensor:
    """Per-example distillation loss ``[B]`` of :class:`KnowledgeDistillation`."""
    zt, zs = _logits(z_teacher), _logits(z_student)
    ct, cs = zt.shape[-1], zs.shape[-1]
    if ct != cs:
        if sorted((ct, cs)) != [1, 2]:
            raise ValueError(f"kd: the teacher has {ct} output channels and the student {cs}; distillation "
                             "needs the same classes (a one-channel sigmoid counts as two classes)")
        zt = _binary_as_two_classes(zt) if ct == 1 else zt
        zs = _binary_as_two_classes(zs) if cs == 1 else zs
    elif cs == 1:
        zt, zs = _binary_as_two_classes(zt), _binary_as_two_classes(zs)
    st, ss = zt.shape[1:3], zs.shape[1:3]
    if all(d is not None for d in list(st) + list(ss)) and tuple(st) != tuple(ss):
        raise ValueError(f"kd: the teacher's logits are {tuple(st)} but the student's are {tuple(ss)}; "
                         "resize them to the student's output first")
    t = float(temperature)
    log_q = tf.nn.log_softmax(tf.stop_gradient(zt) / t, axis=-1)
    log_p = tf.nn.log_softmax(zs / t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_q) * (log_q - log_p), axis=-1)        # [B, H, W]
    return (t * t) * tf.reduce_mean(kl, axis=[1, 2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KnowledgeDistillation(SegmentationLoss):
    """Knowledge distillation with a temperature (Hinton, Vinyals, Dean, "Distilling the
    Knowledge in a Neural Network", 2015, Sec. 2), per pixel: the student's softened
    distribution is pulled toward the teacher's,

        ``L_kd = T^2 * mean_pixels KL(softmax(z_t / T) || softmax(z_s / T))``

    with ``z_t`` the teacher's logits (gradient stopped) and ``z_s`` the student's. The KL
    differs from the paper's soft-target cross-entropy by the teacher's entropy, a constant,
    so the gradients are the same; the ``T^2`` factor is the paper's, which keeps the soft
    term's gradients at the scale of the hard-label term's as ``T`` changes. A one-channel
    (sigmoid) output is read as the two classes ``[0, z]``, so a sigmoid teacher (MediaPipe's
    selfie model) can teach a two-class student and the other way round.

    Keras' argument order: **``call(teacher_logits, student_logits)``**. In a recipe the term
    is written ``kd(temperature=2)`` next to the label losses
    (``"ce + 1.0 * boundary(window=15) + 0.5 * kd(temperature=2)"``) together with a
    ``teacher``; :mod:`sinet_tf.train.distill` feeds it the teacher's logits while the other
    terms get the labels.
    """

    def __init__(self, temperature=1.0, name="distillation_loss", reduction="sum_over_batch_size",
                 dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

    def call(self, teacher_logits, student_logits):
        return distillation_per_example(teacher_logits, student_logits, self.temperature)

    def _own_config(self):
        return {"temperature": self.temperature}


def _lovasz_flat(errors: tf.Tensor, gt: tf.Tensor) -> tf.Tensor:
    """Rows of ``errors``/``gt`` ``[N, P]`` -> Lovasz hinge per row ``[N]``.

    Ignored entries must carry ``errors <= 0`` and ``gt = 0``: they sort after every positive
    error, so they change neither the positive terms nor the Jaccard gradient before them.
    """
    order = tf.argsort(errors, axis=-1, direction="DESCENDING", stable=True)
    errors_sorted = tf.gather(errors, order, batch_dims=1)
    gt_sorted = tf.gather(gt, order, batch_dims=1)
    gts = tf.reduce_sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - tf.cumsum(gt_sorted, axis=-1)
    union = gts + tf.cumsum(1.0 - gt_sorted, axis=-1)
    jaccard = 1.0 - intersection / tf.maximum(union, 1e-12)
    grad = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=-1)
    return tf.reduce_sum(tf.nn.relu(errors_sorted) * tf.stop_gradient(grad), axis=-1)


def lovasz_hinge_per_example(y_true, y_pred, per_image: bool = True, ignore_index: int = 255):
    """Functional form of :class:`LovaszHinge`; returns ``[B]``."""
    y, z = _prepare(y_true, y_pred)
    logit = _person_logit(z)
    valid = tf.not_equal(y, ignore_index)
    gt = tf.cast(tf.logical_and(tf.equal(y, 1), valid), tf.float32)
    errors = 1.0 - logit * (2.0 * gt - 1.0)
    errors = tf.where(valid, errors, -tf.ones_like(errors))
    b = tf.shape(errors)[0]
    if per_image:
        return _lovasz_flat(tf.reshape(errors, [b, -1]), tf.reshape(gt, [b, -1]))
    loss = _lovasz_flat(tf.reshape(errors, [1, -1]), tf.reshape(gt, [1, -1]))[0]
    return tf.fill([b], loss)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LovaszHinge(SegmentationLoss):
    """Lovasz hinge (Berman, Rannen Triki, Blaschko, "The Lovasz-Softmax loss: A tractable
    surrogate for the optimization of the intersection-over-union measure in neural networks",
    CVPR 2018, Sec. 3.1, Eq. 10), the loss the official ExtremeC3Net checkpoint was trained with.

    With person logit ``z`` (``z1 - z0`` for C == 2; ``z1 - logsumexp_{c != 1} z_c`` for C > 2),
    signs ``s = 2g - 1`` and errors ``m = 1 - z * s`` over the non-ignored pixels, sorted in
    decreasing order (permutation ``pi``):

        ``L = sum_k relu(m_pi(k)) * (J(k) - J(k - 1))``,
        ``J(k) = 1 - (G - sum_{j<=k} g_pi(j)) / (G + sum_{j<=k} (1 - g_pi(j)))``, ``J(0) = 0``

    with ``G`` the number of positive pixels: the Lovasz extension of the Jaccard loss
    evaluated at the hinge errors (for ``G = 0`` it reduces to ``relu(max m)``).
    ``per_image=True`` gives one value per example; ``per_image=False`` computes the loss on
    the flattened batch and returns that value for every example (so the mean reduction gives
    it back).  Ignored pixels and examples without valid pixels (loss 0) are handled.
    """

    def __init__(self, per_image=True, ignore_index=255, name="lovasz_hinge",
                 reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.per_image = bool(per_image)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        return lovasz_hinge_per_example(y_true, y_pred, self.per_image, self.ignore_index)

    def _own_config(self):
        return {"per_image": self.per_image, "ignore_index": self.ignore_index}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class DiceLoss(SegmentationLoss):
    """Soft Dice loss on the person probability (Milletari, Navab, Ahmadi, "V-Net", 3DV 2016,
    linear-sum form), per example:

        ``L = 1 - (2 sum_i p_i g_i + s) / (sum_i p_i + sum_i g_i + s)``

    with ``p`` = sigmoid (C == 1) or softmax class 1 (C >= 2), ``g = [y == 1]``, sums over the
    non-ignored pixels, and smoothing ``s``.
    """

    def __init__(self, smooth=1.0, ignore_index=255, name="dice_loss",
                 reduction="sum_over_batch_size", dtype="float32"):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.smooth = float(smooth)
        self.ignore_index = int(ignore_index)

    def call(self, y_true, y_pred):
        y, z = _prepare(y_true, y_pred)
        valid = tf.cast(tf.not_equal(y, self.ignore_index), tf.float32)
        p = _person_prob(z) * valid
        g = tf.cast(tf.equal(y, 1), tf.float32) * valid
        inter = tf.reduce_sum(p * g, axis=[1, 2])
        denom = tf.reduce_sum(p, axis=[1, 2]) + tf.reduce_sum(g, axis=[1, 2])
        return 1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth)

    def _own_config(self):
        return {"smooth": self.smooth, "ignore_index": self.ignore_index}


# ----------------------------------------------------------------------------------------------
# build_loss
# ----------------------------------------------------------------------------------------------
LOSS_NAMES = {
    "ce": CrossEntropy,
    "boundary": BoundaryLoss,
    "boundary_focal": BoundaryFocalLoss,
    "consistency": ConsistencyLoss,
    "lovasz": LovaszHinge,
    "dice": DiceLoss,
    "kd": KnowledgeDistillation,
}


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} (valid: {', '.join(sorted(options))})"


def _make_loss(name: str, args=(), kwargs=None) -> SegmentationLoss:
    kwargs = dict(kwargs or {})
    key = str(name).strip().lower()
    if key not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}{_suggest(key, LOSS_NAMES)}")
    cls = LOSS_NAMES[key]
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for k in kwargs:
        if k not in params:
            raise ValueError(f"unknown argument {k!r} for loss {key!r}{_suggest(k, params)}")
    try:
        inspect.signature(cls.__init__).bind(None, *args, **kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments for loss {key!r}: {err}") from None
    return cls(*args, **kwargs)


_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


def _eval_node(node, text):
    """Evaluate the restricted recipe grammar: numbers, loss names, calls, + - * /."""
    if isinstance(node, ast.Expression):
        return _eval_node(node.body, text)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval_node(node.operand, text)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name):
        return _make_loss(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_literal(a, text) for a in node.args]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise ValueError(f"'**' is not allowed in a loss spec: {text!r}")
            kwargs[kw.arg] = _literal(kw.value, text)
        return _make_loss(node.func.id, args, kwargs)
    if isinstance(node, ast.BinOp) and isinstance(node.op, _ALLOWED_BINOPS):
        left, right = _eval_node(node.left, text), _eval_node(node.right, text)
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
               ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
        if isinstance(node.op, ast.Mult) and not (isinstance(left, float)
                                                  or isinstance(right, float)):
            raise ValueError(f"a loss can only be multiplied by a number: {text!r}")
        if isinstance(node.op, ast.Div) and not isinstance(right, float):
            raise ValueError(f"a loss can only be divided by a number: {text!r}")
        if isinstance(node.op, (ast.Add, ast.Sub)) and (isinstance(left, float)
                                                        or isinstance(right, float)):
            raise ValueError(f"cannot add a number to a loss: {text!r}")
        return ops[type(node.op)](left, right)
    raise ValueError(f"unsupported syntax in loss spec {text!r}: {ast.dump(node)[:60]}")


def _literal(node, text):
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Name) and node.id.lower() in ("true", "false", "none"):
            return {"true": True, "false": False, "none": None}[node.id.lower()]
        raise ValueError(f"loss arguments must be literals in {text!r}") from None


def _from_dict(spec: dict) -> keras.losses.Loss:
    spec = dict(spec)
    if "name" not in spec:
        raise ValueError(f"a loss dict needs a 'name' key, got {spec!r}")
    name = spec.pop("name")
    weight = float(spec.pop("weight", 1.0))
    loss = _make_loss(name, (), spec)
    return loss if weight == 1.0 else weight * loss


def build_loss(spec) -> keras.losses.Loss:
    """Build a (composite) loss from recipe text, a dict, or a list.

    * ``"ce + 1.0 * boundary(window=15)"``: loss names (``ce``, ``boundary``,
      ``boundary_focal``, ``consistency``, ``lovasz``, ``dice``, ``kd``), call syntax for keyword (or
      positional) arguments, numbers, ``+``, ``-``, ``*`` and ``/`` by numbers.
    * ``{"name": "boundary", "weight": 1.0, "window": 15}``: one term.
    * ``[{"name": "ce"}, {"name": "boundary", "weight": 1.0, "window": 15}]``: their sum.
    * an existing :class:`keras.losses.Loss` is returned as is.

    Unknown names or arguments raise ``ValueError`` naming them, with close matches.
    """
    if isinstance(spec, keras.losses.Loss):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            raise ValueError("empty loss spec")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as err:
            raise ValueError(f"cannot parse loss spec {spec!r}: {err.msg}") from None
        result = _eval_node(tree, spec)
        if isinstance(result, float):
            raise ValueError(f"loss spec {spec!r} names no loss")
        return result
    if isinstance(spec, dict):
        return _from_dict(spec)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError("empty loss list")
        parts = [build_loss(s) for s in spec]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    raise TypeError(f"loss spec must be a str, dict or list, got {type(spec).__name__}")

