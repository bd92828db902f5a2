"""PortraitNet augmentation (tf backend) and the tf.data pipeline."""

import contextlib
import zlib

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from sinet_tf.data.augment import (
    MARGIN, RING, TEXTURE_OPS, Draw, PortraitNetAugmentation, TextureOp, augment_batch, augment_example,
    canvas_size, draw_streams, geometric_transform, make_canvas, register_texture_op, sample_params,
    texture_ops, texture_transform, unregister_texture_op)
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
    with pytest.raises(ValueError, match="scale must be positive"):
        PortraitNetAugmentation(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="blur_kernels"):
        PortraitNetAugmentation(blur_kernels=(7,))
    with pytest.raises(ValueError, match="flip_prob"):
        PortraitNetAugmentation(flip_prob=2.0)
    with pytest.raises(ValueError, match="image_fill"):
        PortraitNetAugmentation(image_fill=127.5)
    with pytest.raises(ValueError, match="label_fill"):
        PortraitNetAugmentation(label_fill=256)


# ---- the batched fast path (augment_batch) against the per-example reference forms ----

def _canvases(src, spec, out_hw):
    hw = canvas_size(spec, out_hw)
    return np.stack([make_canvas(*src.read(i), hw, spec.image_fill, spec.label_fill) for i in range(len(src))])


def _unpack(canvas):
    """Packed canvas -> (photo float32 [h, w, 3], label uint8 [h, w]) without the ring."""
    b = canvas.view(np.uint8).reshape(canvas.shape + (4,))[RING:-RING, RING:-RING]
    return b[..., :3].astype(np.float32), b[..., 3].copy()


def test_canvas_packs_photo_label_and_a_ring_of_fill():
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (50, 70, 3)).astype(np.uint8)
    label = rng.integers(0, 2, (50, 70)).astype(np.uint8)
    canvas = make_canvas(image, label, (30, 40), image_fill=100, label_fill=7)
    assert canvas.dtype == np.int32 and canvas.shape == (30 + 2 * RING, 40 + 2 * RING)
    b = canvas.view(np.uint8).reshape(canvas.shape + (4,))
    ring = np.ones(canvas.shape, bool)
    ring[RING:-RING, RING:-RING] = False
    np.testing.assert_array_equal(b[ring], np.tile([100, 100, 100, 7], (ring.sum(), 1)))
    photo, lbl = _unpack(canvas)
    np.testing.assert_array_equal(photo, cv2.resize(image, (40, 30), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(lbl, cv2.resize(label, (40, 30), interpolation=cv2.INTER_NEAREST))
    np.testing.assert_array_equal(canvas[RING:-RING, RING:-RING] & 255, photo[..., 0])  # R: the low byte
    # zooming in up to 1.5x: the canvas keeps 1.5 photo pixels per output pixel
    assert canvas_size(SPEC, (224, 224)) == (336, 336)
    assert canvas_size(PortraitNetAugmentation(scale=(0.5, 1.0)), (64, 96)) == (64, 96)


def test_batched_warp_samples_like_image_projective_transform():
    """augment_batch's gather + bilinear/nearest on the canvases gives what
    ImageProjectiveTransformV3 (geometric_transform) gives on the same canvases: the same
    geometry, pixel-centre convention and constant fill (128 photo, 0 label)."""
    spec = PortraitNetAugmentation(texture_prob=0.0)
    src = _blob_source(4, seed=3)
    canvas = _canvases(src, spec, (64, 64))
    seeds = tf.constant([[21, i] for i in range(4)], tf.int64)
    images, plain, labels = (t.numpy() for t in augment_batch(canvas, seeds, (64, 64), spec, two_views=True))
    params = sample_params(spec, seeds)
    padded = 0
    for i in range(4):
        photo, lbl = _unpack(canvas[i])
        ref_img, ref_lbl = geometric_transform(photo, lbl, {k: v[i] for k, v in params.items()}, (64, 64))
        # (the batched path draws its parameters in XLA: the same numbers to float rounding)
        np.testing.assert_allclose(plain[i], ref_img.numpy(), atol=0.1)
        np.testing.assert_allclose(images[i], plain[i], atol=1e-3)  # no texture op drawn
        assert (labels[i] != ref_lbl.numpy()).mean() < 0.002
        padded += int((ref_img.numpy() == 128).all(-1).sum())
    assert padded > 0  # the fill was exercised


def test_batched_texture_is_texture_transform_of_the_warped_photo():
    """Away from a 3-pixel border (where the batch reads the warped margin and
    texture_transform pads symmetrically), each textured image of a batch is
    texture_transform of its plain view with the example's parameters."""
    src = _blob_source(4, seed=5)
    canvas = _canvases(src, SPEC, (64, 64))
    seeds = tf.constant([[8, i] for i in range(4)], tf.int64)
    images, plain, _ = (t.numpy() for t in augment_batch(canvas, seeds, (64, 64), SPEC, two_views=True))
    params = sample_params(SPEC, seeds)
    applied = set()
    for i in range(4):
        p = {k: v[i] for k, v in params.items()}
        applied |= {op for op in TEXTURE_OPS if bool(p[f"apply_{op}"])}
        ref = texture_transform(plain[i], p, SPEC).numpy()
        inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
        np.testing.assert_allclose(images[i][inner], ref[inner], atol=0.05)
    assert applied == set(TEXTURE_OPS)  # these seeds exercise every op


def test_an_example_depends_on_its_seed_and_photo_only():
    """Not on the batch size, its batch-mates or the padding of a short last batch: batches
    of 4 and 1 (padded to 4) hold the same examples as batches of 2, 2 and 1 (padded to 2),
    and augment_example (a batch of one) gives the same again."""
    src = _blob_source(5, seed=6)

    def examples(batch_size):
        batches = _batches(make_pipeline(src, (64, 64), batch_size, seed=2, shuffle=False))
        return [b.shape[0] for b, _ in batches], np.concatenate([x for x, _ in batches]), \
            np.concatenate([y for _, y in batches])

    sizes4, x4, y4 = examples(4)
    sizes2, x2, y2 = examples(2)
    assert sizes4 == [4, 1] and sizes2 == [2, 2, 1]
    np.testing.assert_allclose(x4, x2, atol=1e-3)
    np.testing.assert_array_equal(y4, y2)
    image, label = src.read(3)
    one = augment_example(image, label, tf.constant([2, 3], tf.int64), (64, 64), SPEC)
    np.testing.assert_allclose(one[0].numpy(), x4[3], atol=1e-3)
    np.testing.assert_array_equal(one[1].numpy(), y4[3])


def test_sample_params_of_a_batch_equal_one_at_a_time():
    seeds = tf.constant([[3, i] for i in range(5)] + [[-7, 2 ** 40]], tf.int64)
    batch = sample_params(SPEC, seeds)
    for i in range(6):
        one = sample_params(SPEC, seeds[i])
        for k, v in one.items():
            np.testing.assert_array_equal(batch[k][i].numpy(), v.numpy(), err_msg=k)
    a = sample_params(SPEC, tf.constant([3, 0], tf.int64))
    b = sample_params(SPEC, tf.constant([4, 0], tf.int64))
    assert float(a["angle_deg"]) != float(b["angle_deg"]) and float(a["scale"]) != float(b["scale"])


def test_noise_is_gaussian_per_pixel_and_channel_and_fresh_per_seed():
    img = np.full((96, 96, 3), 128, np.float32)

    def noise(seed):
        params = {f"apply_{n}": tf.constant(n == "noise") for n in TEXTURE_OPS}
        params["noise_seed"] = tf.constant(seed, tf.int64)
        return texture_transform(tf.constant(img), params, SPEC).numpy() - 128

    a, b = noise([1, 2]), noise([1, 3])
    np.testing.assert_array_equal(a, noise([1, 2]))  # a pure function of the seed
    z = np.concatenate([a.ravel(), b.ravel(), noise([5, 0]).ravel(), noise([6, 1]).ravel()]) / 10.0
    # moments of N(0, 1) within ~5 standard errors (n = 110592)
    assert abs(z.std() - 1) < 0.015 and abs(z.mean()) < 0.015
    assert abs(np.mean(z ** 3)) < 0.06 and abs(np.mean(z ** 4) - 3) < 0.15  # skewness, kurtosis
    assert 0.0455 - 0.005 < np.mean(np.abs(z) > 2) < 0.0455 + 0.005  # the tails: P(|z| > 2)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.02  # another seed: another field
    assert abs(np.corrcoef(a[..., 0].ravel(), a[..., 1].ravel())[0, 1]) < 0.03  # channels independent
    assert abs(np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]) < 0.03  # neighbours independent


def test_two_views_plain_is_the_untextured_augmentation():
    src = _blob_source(4, seed=7)
    views, y = next(iter(make_pipeline(src, (64, 64), 4, two_views=True, seed=9, shuffle=False)))
    untextured = PortraitNetAugmentation(texture_prob=0.0)
    x0, y0 = next(iter(make_pipeline(src, (64, 64), 4, augment=untextured, seed=9, shuffle=False)))
    # same seeds, same geometry: texture_prob only decides the texture coins
    np.testing.assert_allclose(views["plain"].numpy(), x0.numpy(), atol=1e-3)
    np.testing.assert_array_equal(y.numpy(), y0.numpy())


# ---- random draws by name, and texture ops as registry entries ----

# the stream numbers PortraitNet's draws have always had (they decide what a seed gives)
LEGACY_STREAMS = {"flip": (0,), "angle_deg": (1,), "scale": (2,), "tx": (3,), "ty": (4,), "blur_kernel": (5,),
                  "color": (6,), "brightness": (7,), "contrast": (8,), "sharpness": (9,), "apply_noise": (11,),
                  "apply_blur": (12,), "apply_color": (13,), "apply_brightness": (14,), "apply_contrast": (15,),
                  "apply_sharpness": (16,), "noise_keys": (1000, 1001)}
_M32 = np.uint64(0xFFFFFFFF)


def _np_fmix(h):
    """murmur3's 32-bit finaliser on uint64 arrays holding uint32 values."""
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h = h ^ (h >> np.uint64(13))
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    return h ^ (h >> np.uint64(16))


def _np_unit(seeds, stream):
    """NumPy re-derivation of a draw's u in [0, 1) (float32) for int64 seeds [N, 2]: the
    seed's four 32-bit words hashed into two keys, then murmur3 of (key 1 + stream times
    the golden-ratio constant) xor key 2, top 24 bits."""
    s = np.asarray(seeds, np.int64).view(np.uint64)
    w0, w1, w2, w3 = s[:, 0] & _M32, s[:, 0] >> np.uint64(32), s[:, 1] & _M32, s[:, 1] >> np.uint64(32)

    def add(a, b):
        return (a + np.uint64(b)) & _M32

    k1 = _np_fmix(add(_np_fmix(_np_fmix(add(_np_fmix(w0 ^ np.uint64(0x243F6A88)), w1)) ^ w2), w3))
    k2 = _np_fmix(_np_fmix(add(_np_fmix(_np_fmix(add(w0, 0x13198A2E)) ^ w1), w2)) ^ w3)
    bits = _np_fmix(_np_fmix(add(k1, (stream * 0x9E3779B9) & 0xFFFFFFFF)) ^ k2)
    return (bits >> np.uint64(8)).astype(np.float32) * np.float32(2.0 ** -24)


def test_draws_keep_their_stream_numbers_and_no_two_share_one():
    streams = draw_streams()
    assert streams == LEGACY_STREAMS  # geometry + the six texture ops (coins, parameters, noise keys)
    numbers = [s for ss in streams.values() for s in ss]
    assert len(numbers) == len(set(numbers))  # disjoint, the noise streams included


def test_sample_params_are_the_numpy_hash_of_each_draws_stream():
    """Every parameter, recomputed in NumPy from its legacy stream number: the names are
    bound to the numbers that define what a seed gives (float32 arithmetic as in TF)."""
    seeds = np.array([[3, i] for i in range(6)] + [[-7, 2 ** 40], [2 ** 62, -5]], np.int64)
    spec = PortraitNetAugmentation(texture_prob=0.7, flip_prob=0.3, blur_kernels=(5, 3, 3))
    got = {k: v.numpy() for k, v in sample_params(spec, tf.constant(seeds)).items()}
    u = {k: _np_unit(seeds, v[0]) for k, v in LEGACY_STREAMS.items() if k != "noise_keys"}
    f32 = np.float32
    ranges = {"angle_deg": spec.rotation_deg, "scale": spec.scale, "tx": spec.translate, "ty": spec.translate,
              "color": spec.color, "brightness": spec.brightness, "contrast": spec.contrast,
              "sharpness": spec.sharpness}
    for k, (lo, hi) in ranges.items():
        np.testing.assert_array_equal(got[k], f32(lo) + f32(hi - lo) * u[k], err_msg=k)
    np.testing.assert_array_equal(got["flip"], u["flip"] < f32(0.3))
    for op in TEXTURE_OPS:
        np.testing.assert_array_equal(got[f"apply_{op}"], u[f"apply_{op}"] < f32(0.7), err_msg=op)
    index = np.minimum((u["blur_kernel"] * f32(3)).astype(np.int32), 2)
    np.testing.assert_array_equal(got["blur_kernel"], np.array([5, 3, 3])[index])
    np.testing.assert_array_equal(got["noise_seed"], seeds)


def _fingerprint(images):
    """Per image: the three channel means and two fixed random projections (float64)."""
    w = np.random.default_rng(0).standard_normal((2, images[0].size))
    flat = images.reshape(len(images), -1).astype(np.float64)
    return np.concatenate([images.astype(np.float64).mean(axis=(1, 2)), flat @ w.T], axis=1)


def test_augmentation_is_unchanged_by_the_op_registry():
    """Pins augment_batch / augment_example for four seeds against numbers stored from the
    code before the texture ops became registry entries (commit 3765eea), at 12x16 on tiny
    blob photos; seeds chosen so that every texture op is on for some and off for others.

    Labels are compared exactly. Images by fingerprints (channel means and two random
    projections, :func:`_fingerprint`) to 1e-3 and 1e-2: XLA may round the last bits
    differently on another CPU (contraction into fused multiply-adds), while a draw taken
    from another stream moves them by whole units or more."""
    seeds = tf.constant([[1, i] for i in range(4)], tf.int64)
    params = sample_params(SPEC, seeds)
    for op in TEXTURE_OPS:
        assert 0 < int(tf.reduce_sum(tf.cast(params[f"apply_{op}"], tf.int32))) < 4, op
    src = _blob_source(4, seed=1, size_range=(20, 40))
    images, plain, labels = (t.numpy() for t in augment_batch(_canvases(src, SPEC, (12, 16)), seeds, (12, 16), SPEC,
                                                             two_views=True))
    textured_ref = np.array([
        [105.0330102046, 104.4427588185, 105.6499246955, -1712.9883014021, -2310.6324472976],
        [85.4063463137, 86.8933381094, 85.5331866924, -658.5639304262, -1082.2359139434],
        [106.9974303742, 105.6393660208, 105.9646597306, -75.2024041453, -2458.9839607929],
        [104.1790442467, 104.1790442467, 104.1790442467, -29.469769025, -6634.9211223023]])
    plain_ref = np.array([
        [105.9791132112, 105.9791132112, 105.9791132112, -1810.2343051262, -1418.6590063657],
        [100.3123939931, 100.3123939931, 100.3123939931, -736.7888497148, -1451.5789678628],
        [107.5748967926, 107.5748967926, 107.5748967926, 296.6301083146, -1681.3021226068],
        [103.8734618823, 103.8734618823, 103.8734618823, -55.9821113249, -6797.1762231359]])
    label_ref = ("000000000000007000fc01fc01fe03fe03fe03fe03fc01f80000004001f001f801f801f001f000400000000000000000"
                 "00000000000000000000016003f007fc03fe01fe00fe007c00000000000000000e801f803fc03fe03fe01fe01fe01fe0")
    for got, ref in ((images, textured_ref), (plain, plain_ref)):
        np.testing.assert_allclose(_fingerprint(got)[:, :3], ref[:, :3], atol=1e-3)
        np.testing.assert_allclose(_fingerprint(got)[:, 3:], ref[:, 3:], atol=1e-2)
    assert np.packbits(labels).tobytes().hex() == label_ref
    one = augment_example(*src.read(1), seeds[1], (12, 16), SPEC)
    np.testing.assert_allclose(_fingerprint(one[0].numpy()[None])[0], textured_ref[1], atol=1e-2)
    np.testing.assert_array_equal(one[1].numpy(), labels[1])


def _invert(x, f, keys):
    """The toy op: blend towards the negative by a ~ U(0.5, 1) (``a = 0`` when not applied)."""
    return f["invert"] * 255.0 + (1.0 - 2.0 * f["invert"]) * x


INVERT = TextureOp("invert", "pixel", _invert, draws=(Draw("invert", "uniform", (0.5, 1.0), neutral=0.0),))


@contextlib.contextmanager
def _registered(op):
    register_texture_op(op)
    try:
        yield op
    finally:
        unregister_texture_op(op.name)


def test_a_new_texture_op_is_one_definition_and_one_registration():
    """A toy op (one TextureOp, one registration) is drawn by sample_params from streams of
    its own, runs in augment_batch and texture_transform, is a pure function of the seed,
    and leaves every other draw and pixel as it was; unregistered, it is gone."""
    seeds = tf.constant([[5, i] for i in range(6)], tf.int64)
    canvas = _canvases(_blob_source(6, seed=2, size_range=(20, 40)), SPEC, (12, 16))
    streams, params = draw_streams(), {k: v.numpy() for k, v in sample_params(SPEC, seeds).items()}
    images, labels = (t.numpy() for t in augment_batch(canvas, seeds, (12, 16), SPEC))
    with _registered(INVERT):
        new_streams = draw_streams()
        new_params = {k: v.numpy() for k, v in sample_params(SPEC, seeds).items()}
        inverted, new_labels = (t.numpy() for t in augment_batch(canvas, seeds, (12, 16), SPEC))
        again = augment_batch(canvas, seeds, (12, 16), SPEC)[0].numpy()
        flat = np.full((8, 8, 3), 40.0, np.float32)
        negative = texture_transform(flat, {"apply_invert": True, "invert": 1.0}, SPEC).numpy()
    # streams: two new draws, numbered by a hash of their names, apart from all others
    assert set(new_streams) - set(streams) == {"invert", "apply_invert"}
    assert all(new_streams[k] == v for k, v in streams.items())
    for name in ("invert", "apply_invert"):
        assert new_streams[name] == (2 ** 16 + zlib.crc32(f"{name}/0".encode()) % (2 ** 32 - 2 ** 16),)
    numbers = [s for ss in new_streams.values() for s in ss]
    assert len(numbers) == len(set(numbers))
    # draws: the old ones bit-identical, the new ones NumPy's hash of their streams
    for k, v in params.items():
        np.testing.assert_array_equal(new_params[k], v, err_msg=k)
    on = _np_unit(seeds.numpy(), new_streams["apply_invert"][0]) < np.float32(SPEC.texture_prob)
    a = np.float32(0.5) + np.float32(0.5) * _np_unit(seeds.numpy(), new_streams["invert"][0])
    np.testing.assert_array_equal(new_params["apply_invert"], on)
    np.testing.assert_array_equal(new_params["invert"], a)
    assert 0 < on.sum() < len(on)
    # pixels: the blend where the coin says yes, the image as before where it says no
    a = np.where(on, a, 0.0)[:, None, None, None]
    np.testing.assert_allclose(inverted, a * 255.0 + (1.0 - 2.0 * a) * images, atol=2e-3)
    np.testing.assert_array_equal(new_labels, labels)
    np.testing.assert_array_equal(again, inverted)
    np.testing.assert_allclose(negative, 255.0 - flat, atol=1e-4)
    assert [op.name for op in texture_ops()] == list(TEXTURE_OPS)
    assert draw_streams() == streams and "apply_invert" not in sample_params(SPEC, seeds)


def test_texture_op_registration_refuses_conflicts():
    def keep(x, f, keys):
        return x

    def uniform(name):
        return (Draw(name, "uniform", (0.0, 1.0)),)

    refused = [
        (TextureOp("blur", "pixel", keep, draws=uniform("b2")), "registered already"),
        (TextureOp("toy", "pixel", keep, draws=uniform("tx")), "draw name 'tx' is in use"),
        (TextureOp("toy", "warp", keep, draws=uniform("t")), "stage 'warp'"),
        (TextureOp("toy", "filter", keep, draws=uniform("t"), radius=1), "MARGIN=3"),
        (TextureOp("toy", "pixel", keep, draws=uniform("t"), radius=1), "only filter and enhance"),
        (TextureOp("toy", "pixel", keep, factors=lambda p, spec: {"a": 1.0}), "go together"),
        (TextureOp("toy", "pixel", keep), "no factor"),
        (TextureOp("toy", "pixel", keep, draws=(Draw("t", "uniform", (2.0, 1.0)),)), "low > high"),
    ]
    for op, message in refused:
        with pytest.raises(ValueError, match=message):
            register_texture_op(op)
    with pytest.raises(ValueError, match="kind 'gauss'"):
        Draw("t", "gauss", 1.0)
    assert [op.name for op in texture_ops()] == list(TEXTURE_OPS)
    with _registered(TextureOp("toy", "pixel", keep, prob="toy_prob", draws=uniform("t"))):
        with pytest.raises(ValueError, match="reads augmentation field 'toy_prob'"):
            sample_params(SPEC, tf.constant([1, 2], tf.int64))
