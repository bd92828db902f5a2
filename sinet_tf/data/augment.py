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

Backend ``tf`` (here) is pure TensorFlow: the resize to the model input and the affine
transform are one ``ImageProjectiveTransformV3`` per tensor (so photo and label share the
exact same sampling grid), and every random draw is a stateless op seeded per example,
so a pipeline is deterministic for a given seed. Backend ``imgaug`` lives in
:mod:`sinet_tf.data.augment_imgaug`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import tensorflow as tf

__all__ = ["PortraitNetAugmentation", "sample_params", "augment_example", "geometric_transform",
           "texture_transform", "resize_example"]


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
        for name in ("flip_prob", "texture_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augmentation {name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("rotation_deg", "scale", "translate", "color", "brightness", "contrast", "sharpness"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"augmentation range {name}={getattr(self, name)} has low > high")
        if not self.blur_kernels or set(self.blur_kernels) - {3, 5}:
            raise ValueError(f"augmentation blur_kernels must be drawn from (3, 5), got {self.blur_kernels}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def none(cls) -> "PortraitNetAugmentation":
        """No augmentation at all (identity geometry, no texture changes)."""
        return cls(flip_prob=0.0, rotation_deg=(0.0, 0.0), scale=(1.0, 1.0), translate=(0.0, 0.0),
                   texture_prob=0.0)


TEXTURE_OPS = ("noise", "blur", "color", "brightness", "contrast", "sharpness")


def _uniform(seed, low_high, shape=()):
    lo, hi = low_high
    return tf.random.stateless_uniform(shape, seed, minval=lo, maxval=hi, dtype=tf.float32)


def sample_params(spec: PortraitNetAugmentation, seed) -> dict[str, tf.Tensor]:
    """Draw every random parameter of one example from a stateless ``seed`` (shape [2]).

    Returned so that tests can check ranges, and so that two views can share geometry.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=16)
    p = {
        "flip": tf.random.stateless_uniform((), seeds[0]) < spec.flip_prob,
        "angle_deg": _uniform(seeds[1], spec.rotation_deg),
        "scale": _uniform(seeds[2], spec.scale),
        "tx": _uniform(seeds[3], spec.translate),
        "ty": _uniform(seeds[4], spec.translate),
        "blur_kernel": tf.gather(tf.constant(spec.blur_kernels, tf.int32),
                                 tf.random.stateless_uniform((), seeds[5], 0, len(spec.blur_kernels), tf.int32)),
        "color": _uniform(seeds[6], spec.color),
        "brightness": _uniform(seeds[7], spec.brightness),
        "contrast": _uniform(seeds[8], spec.contrast),
        "sharpness": _uniform(seeds[9], spec.sharpness),
        "noise_seed": seeds[10],
    }
    apply = tf.random.stateless_uniform((len(TEXTURE_OPS),), seeds[11]) < spec.texture_prob
    for i, name in enumerate(TEXTURE_OPS):
        p[f"apply_{name}"] = apply[i]
    return p


def _affine_to_input(params, in_hw, out_hw):
    """The 8 projective coefficients mapping an output pixel to the input pixel it samples.

    Output coordinates are those of the photo stretched to the output size (the plain
    resize of the official SINet pipeline); in them the augmentation flips, rotates and
    scales about the centre and translates by a fraction of the size. Pixel centres are
    mapped consistently (``in = (q + 0.5) * in_size / out_size - 0.5``).
    """
    in_h, in_w = tf.cast(in_hw[0], tf.float32), tf.cast(in_hw[1], tf.float32)
    out_h, out_w = float(out_hw[0]), float(out_hw[1])
    cx, cy = (out_w - 1) / 2.0, (out_h - 1) / 2.0
    theta = params["angle_deg"] * (math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    s = params["scale"]
    tx, ty = params["tx"] * out_w, params["ty"] * out_h
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
    return tf.stack([*row_x, *row_y, 0.0, 0.0])


def _project(x, transform, out_hw, interpolation, fill):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform[None], output_shape=tf.constant(out_hw, tf.int32),
        fill_value=tf.cast(fill, tf.float32), interpolation=interpolation, fill_mode="CONSTANT")[0]


def geometric_transform(image, label, params, out_hw):
    """Resize to ``out_hw`` and apply flip/rotation/scale/translation to photo and label.

    ``image`` float32 ``[H, W, 3]``, ``label`` uint8/int ``[H, W]``; returns float32
    ``[h, w, 3]`` (bilinear, padded with ``image_fill``) and uint8 ``[h, w]`` (nearest,
    padded with ``label_fill``).
    """
    spec_fill_img, spec_fill_lbl = params.get("image_fill", 128.0), params.get("label_fill", 0)
    transform = _affine_to_input(params, tf.shape(image)[:2], out_hw)
    # float32 in: TF's float kernel is faster than its uint8 one, even counting the cast
    img = _project(tf.cast(image, tf.float32), transform, out_hw, "BILINEAR", spec_fill_img)
    lbl = _project(tf.cast(label[..., None], tf.float32), transform, out_hw, "NEAREST", spec_fill_lbl)
    return img, tf.cast(lbl[..., 0], tf.uint8)


def _grey(x):
    # ITU-R 601-2 luma, as PIL's convert("L") used by ImageEnhance
    return tf.reduce_sum(x * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)


# OpenCV's GaussianBlur with sigma 0 uses these fixed (binomial) kernels for k <= 5; padded to 5 taps.
_BINOMIAL_5TAP = {3: [0.0, 0.25, 0.5, 0.25, 0.0], 5: [0.0625, 0.25, 0.375, 0.25, 0.0625]}


def _gaussian_kernel(k):
    table = tf.constant([_BINOMIAL_5TAP[3], _BINOMIAL_5TAP[5]], tf.float32)
    return tf.gather(table, tf.cast(k > 3, tf.int32))


def _shift_sum(x, taps_1d, axis):
    """``sum_k taps[k] * x shifted by k - 2`` along ``axis`` with symmetric edges (5 taps):
    a few element-wise ops, much faster on CPU than a 1x5 depthwise convolution."""
    pad = [[0, 0]] * 3
    pad[axis] = [2, 2]
    y = tf.pad(x, pad, mode="SYMMETRIC")
    size = tf.shape(x)[axis]
    out = 0.0
    for k in range(5):
        out += taps_1d[k] * (y[k:k + size] if axis == 0 else y[:, k:k + size])
    return out


def _separable_blur(x, taps_1d):
    return _shift_sum(_shift_sum(x, taps_1d, 0), taps_1d, 1)


# PIL's ImageFilter.SMOOTH, the degenerate image of ImageEnhance.Sharpness: (3x3 box sum + 4 * centre) / 13
def _smooth(x):
    ones = tf.constant([0.0, 1.0, 1.0, 1.0, 0.0])
    return (_shift_sum(_shift_sum(x, ones, 0), ones, 1) + 4.0 * x) / 13.0


def texture_transform(image, params, spec: PortraitNetAugmentation):
    """PortraitNet's texture changes on a float32 photo in [0, 255] (order: noise, blur,
    colour, brightness, contrast, sharpness; each gated by its own coin)."""
    x = image

    def when(flag, fn, x):
        return tf.cond(flag, lambda: fn(x), lambda: x)

    x = when(params["apply_noise"],
             lambda x: x + tf.random.stateless_normal(tf.shape(x), params["noise_seed"], stddev=spec.noise_sigma), x)
    x = when(params["apply_blur"], lambda x: _separable_blur(x, _gaussian_kernel(params["blur_kernel"])), x)
    x = tf.clip_by_value(x, 0.0, 255.0)
    # PIL ImageEnhance: out = degenerate + factor * (image - degenerate)
    x = when(params["apply_color"], lambda x: _grey(x) + params["color"] * (x - _grey(x)), x)
    x = when(params["apply_brightness"], lambda x: params["brightness"] * x, x)
    x = when(params["apply_contrast"],
             lambda x: (lambda m: m + params["contrast"] * (x - m))(tf.reduce_mean(_grey(x))), x)
    x = when(params["apply_sharpness"], lambda x: _smooth(x) + params["sharpness"] * (x - _smooth(x)), x)
    return tf.clip_by_value(x, 0.0, 255.0)


def augment_example(image, label, seed, out_hw, spec: PortraitNetAugmentation, two_views: bool = False):
    """Augment one example: returns ``(image, label)`` or, with ``two_views``,
    ``(textured, plain, label)`` sharing the same geometry (PortraitNet's consistency loss)."""
    params = sample_params(spec, seed)
    params["image_fill"], params["label_fill"] = spec.image_fill, spec.label_fill
    plain, lbl = geometric_transform(image, label, params, out_hw)
    textured = texture_transform(plain, params, spec)
    if two_views:
        return textured, plain, lbl
    return textured, lbl


def resize_example(image, label, out_hw):
    """No augmentation: the plain resize used for validation and calibration (bilinear
    photo with half-pixel centres, like ``cv2.resize(..., INTER_LINEAR)``; nearest label)."""
    img = tf.image.resize(tf.cast(image, tf.float32), out_hw, method="bilinear")
    lbl = tf.image.resize(label[..., None], out_hw, method="nearest")[..., 0]
    return img, tf.cast(lbl, tf.uint8)
