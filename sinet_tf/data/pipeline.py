"""The ``tf.data`` input pipeline: source -> (cache) -> shuffle -> augment -> batch -> prefetch."""

from __future__ import annotations

import tensorflow as tf

from sinet_tf.data.augment import PortraitNetAugmentation, augment_example, resize_example
from sinet_tf.data.base import SegmentationSource

__all__ = ["make_pipeline", "BACKENDS"]

BACKENDS = ("tf", "imgaug")


def make_pipeline(source: SegmentationSource, input_size: tuple[int, int], batch_size: int,
                  augment: PortraitNetAugmentation | bool | None = True, backend: str = "tf",
                  shuffle: bool = True, seed: int = 0, cache: bool | str = True,
                  two_views: bool = False, drop_remainder: bool = False, repeat: bool = False,
                  label_stride: int = 1) -> tf.data.Dataset:
    """Batches of ``(image float32 [B, h, w, 3] RGB in [0, 255], label uint8 [B, h', w'])``.

    * ``augment``: ``True`` for PortraitNet's spec, a :class:`PortraitNetAugmentation`, or
      ``False``/``None`` for the plain resize (validation).
    * ``backend``: ``"tf"`` (pure TensorFlow, default) or ``"imgaug"`` (needs the
      ``imgaug`` extra, numpy<2).
    * deterministic for a given ``seed``: the shuffle order and every augmentation draw
      come from it, and differ from epoch to epoch.
    * ``cache``: keep decoded photos in memory (``True``) or in a cache file (a path).
    * ``two_views``: images become ``{"image": textured, "plain": untextured}`` with the
      same geometry, for PortraitNet's consistency loss.
    * ``label_stride``: also return labels downsampled (nearest) by this factor, e.g. 8 for
      SINet's stage-1 encoder, whose logits are at 1/8 resolution.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown augmentation backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if len(source) == 0:
        raise ValueError(f"{source.name}: the dataset is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if drop_remainder and batch_size > len(source):
        raise ValueError(f"batch_size {batch_size} is larger than the dataset {source.name!r} "
                         f"({len(source)} examples) and drop_remainder is set: no batch would be produced")
    out_hw = (int(input_size[0]), int(input_size[1]))
    if out_hw[0] % label_stride or out_hw[1] % label_stride:
        raise ValueError(f"label_stride {label_stride} does not divide the input size {out_hw}")
    spec = PortraitNetAugmentation() if augment is True else (augment or None)
    if two_views and spec is None:
        raise ValueError("two_views needs augmentation (the views differ by texture changes)")

    ds = source.as_tf_dataset().map(lambda e: (e["image"], e["label"]))
    if cache:
        ds = ds.cache("" if cache is True else str(cache))
    if shuffle:
        ds = ds.shuffle(len(source), seed=seed, reshuffle_each_iteration=True)
    if spec is None:
        ds = ds.map(lambda img, lbl: resize_example(img, lbl, out_hw), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        if backend == "tf":
            def fn(img, lbl, s):
                return augment_example(img, lbl, s, out_hw, spec, two_views)
        else:
            from sinet_tf.data.augment_imgaug import imgaug_map_fn

            fn = imgaug_map_fn(spec, out_hw, two_views)
        # one seed pair per example, deterministic for `seed` and new at every epoch
        rng = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, rng)).map(lambda ex, s: fn(ex[0], ex[1], s),
                                                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def _pack(*parts):
        label = parts[-1]
        if label_stride > 1:
            label = label[label_stride // 2::label_stride, label_stride // 2::label_stride]
        if two_views:
            return {"image": parts[0], "plain": parts[1]}, label
        return parts[0], label

    ds = ds.map(_pack, num_parallel_calls=tf.data.AUTOTUNE)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
