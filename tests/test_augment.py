"""PortraitNet augmentation (tf backend) and the tf.data pipeline."""

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from sinet_tf.data.augment import (
    PortraitNetAugmentation, geometric_transform, sample_params, texture_transform)
from sinet_tf.data.base import ArraySource
from sinet_tf.data.pipeline import make_pipeline
from conftest import assert_label_matches_photo, make_blob_source as _blob_source

SPEC = PortraitNetAugmentation()


def _params(**kw):
    base = {"flip": tf.constant(False), "angle_deg": tf.constant(0.0), "scale": tf.constant(1.0),
            "tx": tf.constant(0.0), "ty": tf.constant(0.0)}
    base.update({k: tf.constant(v) for k, v in kw.items()})
    return base


def test_every_parameter_covers_its_range_and_nothing_outside():
    draw = tf.function(lambda seed: sample_params(SPEC, seed))
    draws = [draw(tf.constant([7, i], tf.int64)) for i in range(1500)]
    get = lambda k: np.array([float(d[k]) for d in draws])  # noqa: E731
    for key, (lo, hi) in [("angle_deg", SPEC.rotation_deg), ("scale", SPEC.scale), ("tx", SPEC.translate),
                          ("ty", SPEC.translate), ("color", SPEC.color), ("brightness", SPEC.brightness),
                          ("contrast", SPEC.contrast), ("sharpness", SPEC.sharpness)]:
        v = get(key)
        assert v.min() >= lo and v.max() <= hi, key
        span = hi - lo
        assert v.min() < lo + 0.02 * span and v.max() > hi - 0.02 * span, f"{key} does not cover its range"
        # uniform: each tenth of the range gets roughly a tenth of the draws
        counts = np.histogram(v, bins=10, range=(lo, hi))[0]
        assert counts.min() > 0.06 * len(v), f"{key} is not uniform: {counts}"
    assert 0.45 < get("flip").mean() < 0.55
    assert set(get("blur_kernel").astype(int)) == {3, 5}
    for op in ("noise", "blur", "color", "brightness", "contrast", "sharpness"):
        assert 0.45 < get(f"apply_{op}").mean() < 0.55, op


def test_flip_and_rotation_match_numpy():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, (32, 32)).astype(np.uint8)
    image = np.repeat(label[..., None] * 255.0, 3, -1).astype(np.float32)
    _, flipped = geometric_transform(image, label, _params(flip=True), (32, 32))
    np.testing.assert_array_equal(flipped.numpy(), np.fliplr(label))
    _, rotated = geometric_transform(image, label, _params(angle_deg=90.0), (32, 32))
    # +90 degrees turns the picture clockwise in image coordinates (y down): numpy's rot90 with k=-1
    np.testing.assert_array_equal(rotated.numpy(), np.rot90(label, k=-1))
    img, _ = geometric_transform(image, label, _params(), (32, 32))
    np.testing.assert_allclose(img.numpy(), image, atol=1e-4)  # identity


def test_scale_and_translation_move_content_as_specified():
    label = np.zeros((101, 101), np.uint8)
    label[40:61, 40:61] = 1  # a 21x21 square at the centre
    image = np.repeat(label[..., None] * 255.0, 3, -1).astype(np.float32)
    _, small = geometric_transform(image, label, _params(scale=0.5), (101, 101))
    ys, xs = np.nonzero(small.numpy())
    assert abs(len(ys) - 121) <= 25 and abs(ys.mean() - 50) < 1 and abs(xs.mean() - 50) < 1
    _, moved = geometric_transform(image, label, _params(tx=0.2, ty=-0.1), (101, 101))
    ys, xs = np.nonzero(moved.numpy())
    assert abs(xs.mean() - (50 + 0.2 * 101)) < 1 and abs(ys.mean() - (50 - 0.1 * 101)) < 1
    # padding: photo 128, label 0
    img, lbl = geometric_transform(image, label, _params(tx=0.25, scale=0.5), (101, 101))
    assert np.all(img.numpy()[:, :5] == 128) and np.all(lbl.numpy()[:, :5] == 0)


def test_mask_and_image_stay_aligned_after_any_geometric_augmentation():
    """Photo built from the mask; after augmentation, thresholding the photo gives the label
    back except at interpolated edges (pixels next to a label boundary)."""
    src = _blob_source(8)
    spec = PortraitNetAugmentation(texture_prob=0.0)
    checked = 0
    for x, y in make_pipeline(src, (160, 160), 4, augment=spec, seed=3, shuffle=False):
        for img, lbl in zip(x.numpy(), y.numpy()):
            assert_label_matches_photo(img, lbl, edge_px=1, max_fraction=0.01)
            checked += 1
    assert checked == 8


def _pil(img, enhancer, factor):
    out = getattr(ImageEnhance, enhancer)(Image.fromarray(img)).enhance(factor)
    return np.asarray(out, np.float32)


@pytest.mark.parametrize("op,enhancer,factor", [("color", "Color", 0.4), ("color", "Color", 1.7),
                                                ("brightness", "Brightness", 0.6),
                                                ("contrast", "Contrast", 1.5), ("contrast", "Contrast", 0.6),
                                                ("sharpness", "Sharpness", 1.3), ("sharpness", "Sharpness", 0.8)])
def test_texture_enhancements_match_pil(op, enhancer, factor):
    rng = np.random.default_rng(2)
    img = cv2.GaussianBlur(rng.integers(0, 256, (40, 48, 3)).astype(np.uint8), (5, 5), 0)
    params = {f"apply_{k}": tf.constant(k == op) for k in
              ("noise", "blur", "color", "brightness", "contrast", "sharpness")}
    params[op] = tf.constant(factor, tf.float32)
    ours = texture_transform(tf.constant(img, tf.float32), params, SPEC).numpy()
    ref = _pil(img, enhancer, factor)
    inner = (slice(1, -1), slice(1, -1))  # PIL's sharpness leaves the 1-pixel border untouched
    assert np.abs(ours[inner] - ref[inner]).max() <= 2.0, np.abs(ours[inner] - ref[inner]).max()


@pytest.mark.parametrize("k", [3, 5])
def test_blur_matches_opencv_gaussian(k):
    img = np.random.default_rng(3).integers(0, 256, (30, 30, 3)).astype(np.float32)
    params = {f"apply_{n}": tf.constant(n == "blur") for n in
              ("noise", "blur", "color", "brightness", "contrast", "sharpness")}
    params["blur_kernel"] = tf.constant(k)
    ours = texture_transform(tf.constant(img), params, SPEC).numpy()
    ref = cv2.GaussianBlur(img, (k, k), 0)
    np.testing.assert_allclose(ours[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-3)


def test_noise_has_sigma_10():
    img = np.full((64, 64, 3), 128, np.float32)
    params = {f"apply_{n}": tf.constant(n == "noise") for n in
              ("noise", "blur", "color", "brightness", "contrast", "sharpness")}
    params["noise_seed"] = tf.constant([1, 2], tf.int64)
    diff = texture_transform(tf.constant(img), params, SPEC).numpy() - 128
    assert abs(diff.std() - 10) < 0.5 and abs(diff.mean()) < 0.5


def _batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_same_seed_same_batches_different_seed_different_batches():
    src = _blob_source(6)
    a = _batches(make_pipeline(src, (96, 96), 3, seed=11))
    b = _batches(make_pipeline(src, (96, 96), 3, seed=11))
    c = _batches(make_pipeline(src, (96, 96), 3, seed=12))
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(np.array_equal(p[0], q[0]) for p, q in zip(a, c))


def test_each_epoch_draws_new_augmentations_and_resuming_repeats_them():
    src = _blob_source(4)
    three = _batches(make_pipeline(src, (64, 64), 2, seed=5, epochs=3))
    assert len(three) == 6  # 2 batches per epoch, none straddles two epochs
    assert not np.array_equal(three[0][0], three[2][0])  # epoch 1 differs from epoch 0
    resumed = _batches(make_pipeline(src, (64, 64), 2, seed=5, epochs=3, initial_epoch=2))
    for (x, y), (rx, ry) in zip(three[4:], resumed):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    again = _batches(make_pipeline(src, (64, 64), 2, seed=5, epochs=3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(three, again))


def test_pipeline_shapes_two_views_and_label_stride():
    src = _blob_source(5)
    x, y = next(iter(make_pipeline(src, (64, 96), 5)))
    assert x.shape == (5, 64, 96, 3) and x.dtype == tf.float32 and y.shape == (5, 64, 96) and y.dtype == tf.uint8
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255
    views, y = next(iter(make_pipeline(src, (64, 64), 5, two_views=True, seed=1)))
    assert set(views) == {"image", "plain"}
    assert views["image"].shape == views["plain"].shape == (5, 64, 64, 3)
    plain = views["plain"].numpy()[..., 0]
    photo = np.abs(plain - 128) > 1e-3  # not padding
    assert ((plain > 120) == (y.numpy() == 1))[photo].mean() > 0.97  # the plain view has the label's geometry
    assert not np.array_equal(views["image"].numpy(), views["plain"].numpy())
    _, y8 = next(iter(make_pipeline(src, (64, 64), 5, label_stride=8, augment=False, shuffle=False)))
    _, y1 = next(iter(make_pipeline(src, (64, 64), 5, augment=False, shuffle=False)))
    np.testing.assert_array_equal(y8.numpy(), y1.numpy()[:, 4::8, 4::8])


def test_validation_pipeline_is_a_plain_resize():
    src = _blob_source(3)
    x, y = next(iter(make_pipeline(src, (80, 80), 3, augment=False, shuffle=False)))
    for i in range(3):
        image, label = src.read(i)
        ref = cv2.resize(image, (80, 80), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        assert np.abs(x.numpy()[i] - ref).mean() < 1.0
        assert (y.numpy()[i] == cv2.resize(label, (80, 80), interpolation=cv2.INTER_NEAREST)).mean() > 0.98


def test_pipeline_errors():
    src = _blob_source(2)
    with pytest.raises(ValueError, match="unknown augmentation backend 'albumentations'"):
        make_pipeline(src, (64, 64), 2, backend="albumentations")
    with pytest.raises(ValueError, match="larger than the dataset"):
        make_pipeline(src, (64, 64), 3, drop_remainder=True)
    with pytest.raises(ValueError, match="empty"):
        make_pipeline(ArraySource([], [], name="nothing"), (64, 64), 1)


def test_spec_validation():
    with pytest.raises(ValueError, match="scale"):
        PortraitNetAugmentation(scale=(1.5, 0.5))
    with pytest.raises(ValueError, match="blur_kernels"):
        PortraitNetAugmentation(blur_kernels=(7,))
    with pytest.raises(ValueError, match="flip_prob"):
        PortraitNetAugmentation(flip_prob=2.0)
