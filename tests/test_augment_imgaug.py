"""Backend 'imgaug' of PortraitNet's augmentation.

imgaug 0.4.0 imports only with numpy<2, so the README's test command runs this file a second
time in its own environment (`tests/imgaug_env.sh`: the main environment's packages plus
`pip install ".[imgaug]"`); in the main environment only the install hint is checked.
"""

import numpy as np
import pytest

from sinet_tf.data.augment import (
    TEXTURE_OPS, Draw, PortraitNetAugmentation, TextureOp, register_texture_op, texture_ops, unregister_texture_op)
from sinet_tf.data.pipeline import make_pipeline
from conftest import assert_label_matches_photo, make_blob_source as _blobs

try:
    import imgaug  # noqa: F401

    HAVE_IMGAUG = True
except (ImportError, AttributeError):  # AttributeError: np.sctypes is gone in numpy 2
    HAVE_IMGAUG = False

needs_imgaug = pytest.mark.skipif(not HAVE_IMGAUG, reason="imgaug needs numpy<2: run in the imgaug environment")


@pytest.mark.skipif(HAVE_IMGAUG, reason="imgaug is importable here")
def test_missing_imgaug_gives_an_install_hint():
    with pytest.raises(ImportError, match=r"numpy<2.*\.\[imgaug\]"):
        make_pipeline(_blobs(2), (64, 64), 2, backend="imgaug")


def test_imgaug_backend_refuses_a_texture_op_without_an_imgaug_form():
    """(Checked before imgaug is imported: runs in both environments.)"""
    def brighter(x, f, keys):
        return x + f["brighter"]

    register_texture_op(TextureOp("brighter", "pixel", brighter, draws=(Draw("brighter", "uniform", (5.0, 10.0)),)))
    try:
        with pytest.raises(ValueError, match=r"texture op 'brighter' has no imgaug implementation.*texture_prob=0.5"):
            make_pipeline(_blobs(2), (64, 64), 2, backend="imgaug")
        if HAVE_IMGAUG:  # an op that cannot apply is left out
            from sinet_tf.data.augment_imgaug import build_augmenters

            assert len(build_augmenters(PortraitNetAugmentation(texture_prob=0.0))[1]) == len(TEXTURE_OPS)
    finally:
        unregister_texture_op("brighter")
    assert [op.name for op in texture_ops()] == list(TEXTURE_OPS)


@needs_imgaug
def test_imgaug_texture_augmenters_are_portraitnets_in_order():
    from sinet_tf.data.augment_imgaug import build_augmenters

    spec = PortraitNetAugmentation(texture_prob=0.3, noise_sigma=7.0, blur_kernels=(5,), color=(0.5, 1.5))
    texture = build_augmenters(spec)[1]
    names = [type(s.then_list[0]).__name__ for s in texture]
    assert names == ["AdditiveGaussianNoise", "GaussianBlur", "EnhanceColor", "EnhanceBrightness",
                     "EnhanceContrast", "EnhanceSharpness"]
    assert all(abs(s.p.p.value - 0.3) < 1e-12 for s in texture)  # Sometimes(texture_prob)
    noise, blur, color = (s.then_list[0] for s in list(texture)[:3])
    assert float(noise.value.scale.value) == 7.0
    assert [float(v) for v in blur.sigma.a] == [1.0]  # kernel 5: the binomial's variance, (5 - 1) / 4
    assert (float(color.factor.a.value), float(color.factor.b.value)) == (0.5, 1.5)


@needs_imgaug
def test_imgaug_backend_shapes_and_value_ranges():
    x, y = next(iter(make_pipeline(_blobs(4), (96, 80), 4, backend="imgaug", seed=0)))
    assert x.shape == (4, 96, 80, 3) and y.shape == (4, 96, 80)
    assert 0 <= float(np.min(x)) and float(np.max(x)) <= 255
    assert set(np.unique(y.numpy())) <= {0, 1}


@needs_imgaug
def test_imgaug_backend_keeps_mask_and_image_aligned():
    spec = PortraitNetAugmentation(texture_prob=0.0)
    for x, y in make_pipeline(_blobs(6), (128, 128), 3, augment=spec, backend="imgaug", seed=4, shuffle=False):
        for img, lbl in zip(x.numpy(), y.numpy()):
            # imgaug blends photo, background and its 128 fill over up to 2 px where the person
            # meets the photo's frame, hence 2 px (the tf backend's test allows 1)
            assert_label_matches_photo(img, lbl, edge_px=2, max_fraction=0.02)


@needs_imgaug
def test_imgaug_backend_is_deterministic_per_seed():
    def run(seed):
        return [x.numpy() for x, _ in make_pipeline(_blobs(4), (64, 64), 2, backend="imgaug", seed=seed)]

    a, b, c = run(1), run(1), run(2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


@needs_imgaug
def test_imgaug_geometry_draws_stay_in_range():
    """Scale: the area of a centred disc after augmentation stays within scale^2 bounds."""
    import cv2

    from sinet_tf.data.base import ArraySource

    label = np.zeros((100, 100), np.uint8)
    cv2.circle(label, (50, 50), 20, 1, -1)
    image = np.repeat((label * 200 + 20)[..., None], 3, -1).astype(np.uint8)
    src = ArraySource([image] * 40, [label] * 40)
    spec = PortraitNetAugmentation(texture_prob=0.0, translate=(0.0, 0.0))
    areas = np.concatenate([y.numpy().reshape(len(y), -1).sum(1) for _, y in
                            make_pipeline(src, (100, 100), 40, augment=spec, backend="imgaug", seed=0)])
    base = label.sum()
    assert areas.min() >= base * 0.5 ** 2 * 0.9 and areas.max() <= base * 1.5 ** 2 * 1.1
    assert areas.min() < base * 0.5 and areas.max() > base * 1.5  # the range is used, not a constant


@needs_imgaug
def test_imgaug_two_views_share_geometry():
    views, y = next(iter(make_pipeline(_blobs(3), (64, 64), 3, backend="imgaug", two_views=True, seed=2)))
    plain = views["plain"].numpy()[..., 0]
    lbl = y.numpy()
    photo = np.abs(plain - 128) > 1e-3  # not padding
    assert ((plain > 120) == (lbl == 1))[photo].mean() > 0.97
