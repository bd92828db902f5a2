"""Losses vs. independent NumPy/SciPy computations on small hand-made label maps."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from sinet_tf import losses as L

IGN = 255


# ------------------------------------------------------------------------------------ fixtures
def _labels():
    """3 x 12 x 12: a square person, a diagonal person, no person; some ignore pixels."""
    y = np.zeros((3, 12, 12), np.uint8)
    y[0, 3:9, 4:10] = 1
    y[0, 0, :5] = IGN          # ignore strip touching nothing but background
    y[0, 5:7, 9:11] = IGN      # ignore pixels on the person contour
    ii, jj = np.mgrid[:12, :12]
    y[1][ii > jj] = 1
    y[1, 11, :3] = IGN
    y[2, 6:, 6:] = IGN         # no person at all
    return y


def _logits(c, seed=0, shape=(3, 12, 12)):
    return np.random.default_rng(seed).normal(0, 2, size=shape + (c,)).astype(np.float32)


def _np_log_softmax(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _np_pixel_ce(y, z):
    """Per-pixel CE [B, H, W] (NaN-free, garbage on ignored pixels, masked by callers)."""
    y = y.astype(np.int64)
    if z.shape[-1] == 1:
        p = 1 / (1 + np.exp(-z[..., 0].astype(np.float64)))
        g = (y == 1).astype(np.float64)
        return -(g * np.log(p) + (1 - g) * np.log(1 - p))
    ls = _np_log_softmax(z.astype(np.float64))
    safe = np.where(y == IGN, 0, y)
    return -np.take_along_axis(ls, safe[..., None], -1)[..., 0]


def _np_masked_mean(v, mask):
    out = []
    for vi, mi in zip(v, mask):
        out.append(vi[mi].mean() if mi.any() else 0.0)
    return np.array(out)


def _band_bruteforce(y, window, ignore=IGN):
    """Pixels whose (clipped) window holds more than one non-ignored class; never ignored pixels."""
    r0 = (window - 1) // 2
    r1 = window - 1 - r0
    b, h, w = y.shape
    band = np.zeros(y.shape, bool)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                if y[n, i, j] == ignore:
                    continue
                win = y[n, max(0, i - r0):i + r1 + 1, max(0, j - r0):j + r1 + 1]
                band[n, i, j] = len(set(win[win != ignore].tolist())) > 1
    return band


def _band_scipy(y, window, num_classes, ignore=IGN):
    """dilation(onehot) - erosion(onehot) with scipy grey morphology, ignore neutral."""
    valid = y != ignore
    band = np.zeros(y.shape, bool)
    for n in range(y.shape[0]):
        for c in range(num_classes):
            oh = ((y[n] == c) & valid[n]).astype(np.float64)
            dil = ndimage.grey_dilation(oh, size=(window, window), mode="nearest")
            ero_in = np.where(valid[n], oh, 1.0)
            ero = ndimage.grey_erosion(ero_in, size=(window, window), mode="nearest")
            band[n] |= (dil - ero) > 0
    return band & valid


# ------------------------------------------------------------------------------------ CE
@pytest.mark.parametrize("c", [1, 2, 3])
def test_cross_entropy_matches_numpy(c):
    y = _labels()
    if c == 3:
        y = y.copy()
        y[0, 10:, 8:] = 2
    z = _logits(c)
    valid = y != IGN
    ref = _np_masked_mean(_np_pixel_ce(y, z), valid)
    got = L.CrossEntropy().call(y, z).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(L.CrossEntropy()(y, z)), ref.mean(), rtol=1e-5)


def test_cross_entropy_all_ignored_example_contributes_zero_and_float16():
    y = _labels()
    y[2] = IGN
    z = _logits(2)
    per = L.CrossEntropy().call(y, z).numpy()
    assert per[2] == 0.0
    out = L.CrossEntropy()(y, z.astype(np.float16))
    assert out.dtype == tf.float32
    ref = _np_masked_mean(_np_pixel_ce(y, z.astype(np.float16).astype(np.float32)), y != IGN)
    np.testing.assert_allclose(float(out), ref.mean(), rtol=1e-5)


def test_spatial_mismatch_raises():
    with pytest.raises(ValueError, match="spatial shape mismatch"):
        L.CrossEntropy()(np.zeros((1, 8, 8), np.uint8), np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(ValueError, match="spatial shape mismatch"):
        L.BoundaryLoss(3)(np.zeros((1, 8, 8), np.uint8), np.zeros((1, 8, 6, 2), np.float32))


# ------------------------------------------------------------------------------------ band
@pytest.mark.parametrize("window", [3, 5, 15])
def test_boundary_band_matches_morphology(window):
    y = _labels()
    band = L.boundary_band(y, window, 2, IGN).numpy().astype(bool)
    np.testing.assert_array_equal(band, _band_bruteforce(y, window))
    np.testing.assert_array_equal(band, _band_scipy(y, window, 2))
    # without ignore pixels it is exactly dilation - erosion of the one-hot map
    y_clean = np.where(y == IGN, 0, y).astype(np.uint8)
    plain = np.zeros(y.shape, bool)
    for n in range(3):
        for c in range(2):
            oh = (y_clean[n] == c).astype(np.uint8)
            d = ndimage.grey_dilation(oh, size=(window, window), mode="nearest")
            e = ndimage.grey_erosion(oh, size=(window, window), mode="nearest")
            plain[n] |= (d.astype(int) - e) > 0
    np.testing.assert_array_equal(L.boundary_band(y_clean, window).numpy() > 0, plain)
    assert not band[2].any()          # no person, ignore region: no band


@pytest.mark.parametrize("window", [1, 2, 4, 6])
def test_boundary_band_even_windows_and_three_classes(window):
    """Even windows sit like a SAME pool (one more pixel after than before the centre)."""
    rng = np.random.default_rng(window)
    y = np.kron(rng.integers(0, 3, (2, 4, 5)), np.ones((6, 5), np.int64)).astype(np.uint8)
    y[rng.uniform(size=y.shape) < 0.05] = IGN
    band = L.boundary_band(y, window, 3, IGN).numpy().astype(bool)
    np.testing.assert_array_equal(band, _band_bruteforce(y, window))
    assert band.any() or window == 1


def test_boundary_band_width_and_dtype():
    y = np.zeros((1, 12, 12), np.uint8)
    y[0, :, 6:] = 1
    band = L.boundary_band(y, 5, dtype=tf.bool).numpy()
    assert band.dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(band[0].any(0)), [4, 5, 6, 7])
    assert L.boundary_band(y[0], 3).shape == (12, 12)      # [H, W] accepted


@pytest.mark.parametrize("c", [1, 2])
def test_boundary_loss_is_ce_on_band(c):
    y, z = _labels(), _logits(c, seed=1)
    for window in (3, 15):
        band = _band_bruteforce(y, window)
        ref = _np_masked_mean(_np_pixel_ce(y, z), band)
        got = L.BoundaryLoss(window=window).call(y, z).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert got[2] == 0.0              # no band -> 0


# ------------------------------------------------------------------------------------ edge / focal
def test_edge_target_width():
    y = np.zeros((1, 12, 12), np.uint8)
    y[0, :, 6:] = 1
    for width, cols in [(4, [4, 5, 6, 7]), (2, [5, 6])]:
        e = L.edge_target(y, width).numpy()[0]
        np.testing.assert_array_equal(np.flatnonzero(e.any(0)), cols)   # half out, half in
        assert e[:, cols].all()
    # square person: dilation - erosion with a 5x5 square (scipy)
    y = _labels()[:1]
    m = (y[0] == 1)
    valid = y[0] != IGN
    ref = _band_scipy(np.where(valid, m, IGN).astype(np.uint8)[None], 5, 2)[0]
    np.testing.assert_array_equal(L.edge_target(y, 4).numpy()[0] > 0, ref)


def test_boundary_focal_matches_numpy():
    y = _labels()
    e = _logits(1, seed=2)
    valid = y != IGN
    t = np.stack([_band_scipy(np.where(valid[n], y[n] == 1, IGN).astype(np.uint8)[None], 5, 2)[0]
                  for n in range(3)]).astype(np.float64)
    p = 1 / (1 + np.exp(-e[..., 0].astype(np.float64)))
    pt = np.where(t > 0, p, 1 - p)
    for gamma in (0.0, 2.0):
        focal = -((1 - pt) ** gamma) * np.log(pt)
        ref = _np_masked_mean(focal, valid)
        got = L.BoundaryFocalLoss(gamma=gamma, edge_width=4).call(y, e).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # [B, H, W] edge logits accepted; composition applies the recipe weight
    np.testing.assert_allclose(float((0.1 * L.BoundaryFocalLoss())(y, e[..., 0])),
                               0.1 * float(L.BoundaryFocalLoss()(y, e)), rtol=1e-5)


# ------------------------------------------------------------------------------------ consistency
@pytest.mark.parametrize("c,temperature", [(2, 1.0), (3, 2.0), (1, 1.0), (1, 3.0)])
def test_consistency_kl_matches_numpy(c, temperature):
    zp, zt = _logits(c, seed=3), _logits(c, seed=4)
    if c == 1:
        q = 1 / (1 + np.exp(-zp[..., 0] / temperature))
        r = 1 / (1 + np.exp(-zt[..., 0] / temperature))
        kl = q * np.log(q / r) + (1 - q) * np.log((1 - q) / (1 - r))
    else:
        lq = _np_log_softmax(zp.astype(np.float64) / temperature)
        lr = _np_log_softmax(zt.astype(np.float64) / temperature)
        kl = (np.exp(lq) * (lq - lr)).sum(-1)
    ref = temperature ** 2 * kl.mean(axis=(1, 2))
    got = L.ConsistencyLoss(temperature).call(zp, zt).numpy()         # call(z_plain, z_tex)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(L.consistency_loss(zt, zp, temperature)), ref.mean(),
                               rtol=1e-4)
    np.testing.assert_allclose(L.consistency_loss(zt, zp, temperature, per_example=True).numpy(),
                               ref, rtol=1e-4, atol=1e-6)
    assert abs(float(L.ConsistencyLoss(temperature)(zp, zp))) < 1e-5     # KL(q || q) = 0


def test_consistency_gradient_stops_at_plain_view():
    zp = tf.Variable(_logits(2, seed=5))
    zt = tf.Variable(_logits(2, seed=6))
    with tf.GradientTape() as tape:
        loss = L.ConsistencyLoss()(zp, zt)
    g_plain, g_tex = tape.gradient(loss, [zp, zt])
    assert g_plain is None or not np.any(g_plain.numpy())
    assert np.abs(g_tex.numpy()).sum() > 0
    with tf.GradientTape() as tape:
        loss = L.consistency_loss(zt, zp)
    assert tape.gradient(loss, zp) is None


# ------------------------------------------------------------------------------------ lovasz
def _np_lovasz_flat(logit, gt):
    if logit.size == 0:
        return 0.0
    signs = 2.0 * gt - 1.0
    errors = 1.0 - logit * signs
    order = np.argsort(-errors, kind="stable")
    e, g = errors[order], gt[order]
    gts = g.sum()
    inter = gts - np.cumsum(g)
    union = gts + np.cumsum(1 - g)
    jac = 1.0 - inter / union
    jac[1:] = jac[1:] - jac[:-1]
    return float(np.dot(np.maximum(e, 0), jac))


def _np_lovasz(y, logit, per_image):
    valid = y != IGN
    gt = (y == 1).astype(np.float64)
    if per_image:
        return np.array([_np_lovasz_flat(logit[n][valid[n]].astype(np.float64), gt[n][valid[n]])
                         for n in range(y.shape[0])])
    return _np_lovasz_flat(logit[valid].astype(np.float64), gt[valid])


def test_lovasz_hinge_matches_numpy():
    y = _labels()
    z2 = _logits(2, seed=7)
    z1 = z2[..., 1:] - z2[..., :1]
    ref_img = _np_lovasz(y, z1[..., 0], per_image=True)
    assert ref_img[2] > 0                      # no positive pixels: still defined (gts = 0)
    for z in (z1, z2):
        got = L.LovaszHinge(per_image=True).call(y, z).numpy()
        np.testing.assert_allclose(got, ref_img, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(L.LovaszHinge()(y, z)), ref_img.mean(), rtol=1e-5)
        ref_batch = _np_lovasz(y, z1[..., 0], per_image=False)
        np.testing.assert_allclose(float(L.LovaszHinge(per_image=False)(y, z)), ref_batch,
                                   rtol=1e-5)
    # an example with no valid pixel gives 0
    y0 = np.full((1, 12, 12), IGN, np.uint8)
    assert float(L.LovaszHinge()(y0, z1[:1])) == 0.0


def test_lovasz_gradient_is_finite():
    y = _labels()
    z = tf.Variable(_logits(1, seed=8))
    with tf.GradientTape() as tape:
        loss = L.LovaszHinge()(y, z)
    g = tape.gradient(loss, z).numpy()
    assert np.isfinite(g).all() and np.abs(g).sum() > 0
    assert not np.any(g[..., 0][y == IGN])     # ignored pixels get no gradient


# ------------------------------------------------------------------------------------ dice
@pytest.mark.parametrize("c", [1, 2])
def test_dice_matches_numpy(c):
    y, z = _labels(), _logits(c, seed=9)
    valid = (y != IGN).astype(np.float64)
    if c == 1:
        p = 1 / (1 + np.exp(-z[..., 0].astype(np.float64)))
    else:
        p = np.exp(_np_log_softmax(z.astype(np.float64)))[..., 1]
    p = p * valid
    g = (y == 1) * valid
    for s in (1.0, 0.1):
        ref = 1 - (2 * (p * g).sum((1, 2)) + s) / (p.sum((1, 2)) + g.sum((1, 2)) + s)
        np.testing.assert_allclose(L.DiceLoss(smooth=s).call(y, z).numpy(), ref, rtol=1e-5)


# ------------------------------------------------------------------------------------ composition
def test_composition_is_weighted_sum():
    y, z = _labels(), _logits(2, seed=10)
    ce, bd = L.CrossEntropy(), L.BoundaryLoss(window=5)
    combo = ce + 0.5 * bd
    assert isinstance(combo, L.WeightedSum)
    assert [w for w, _ in combo.terms] == [1.0, 0.5]
    np.testing.assert_allclose(float(combo(y, z)), float(ce(y, z)) + 0.5 * float(bd(y, z)),
                               rtol=1e-6)
    np.testing.assert_allclose(combo.call(y, z).numpy(),
                               ce.call(y, z).numpy() + 0.5 * bd.call(y, z).numpy(), rtol=1e-6)
    # nesting flattens, scalars distribute, sum() works
    nested = 2 * (ce + bd * 0.25) + L.DiceLoss()
    assert [w for w, _ in nested.terms] == [2.0, 0.5, 1.0]
    assert sum([ce, bd]).terms[1][1] is bd
    np.testing.assert_allclose(float((ce / 2)(y, z)), 0.5 * float(ce(y, z)), rtol=1e-6)
    # sample weights and reductions go through the Keras machinery
    sw = np.array([1.0, 0.0, 2.0])
    per = combo.call(y, z).numpy()
    np.testing.assert_allclose(float(combo(y, z, sample_weight=sw)), (per * sw).sum() / 3,
                               rtol=1e-5)


def test_serialization_round_trip():
    combo = L.CrossEntropy(ignore_index=254) + 0.5 * L.BoundaryLoss(window=5) \
        + 0.1 * L.LovaszHinge(per_image=False)
    cfg = keras.saving.serialize_keras_object(combo)
    back = keras.saving.deserialize_keras_object(cfg)
    assert isinstance(back, L.WeightedSum)
    assert [w for w, _ in back.terms] == [1.0, 0.5, 0.1]
    assert back.terms[0][1].ignore_index == 254 and back.terms[1][1].window == 5
    assert back.terms[2][1].per_image is False
    for cls in (L.BoundaryFocalLoss, L.ConsistencyLoss, L.DiceLoss):
        obj = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(cls()))
        assert type(obj) is cls and obj.get_config() == cls().get_config()


# ------------------------------------------------------------------------------------ build_loss
def test_build_loss_parsing():
    y, z = _labels(), _logits(2, seed=11)
    ref = float(L.CrossEntropy()(y, z)) + 1.0 * float(L.BoundaryLoss(window=15)(y, z))
    a = L.build_loss("ce + 1.0 * boundary(window=15)")
    b = L.build_loss([{"name": "ce"}, {"name": "boundary", "weight": 1.0, "window": 15}])
    for loss in (a, b):
        assert isinstance(loss, L.WeightedSum)
        assert loss.terms[1][1].window == 15
        np.testing.assert_allclose(float(loss(y, z)), ref, rtol=1e-6)
    assert type(L.build_loss("ce")) is L.CrossEntropy
    assert type(L.build_loss({"name": "dice", "smooth": 0.5})) is L.DiceLoss
    c = L.build_loss("lovasz(per_image=False) * 0.5 + 0.1*boundary_focal(gamma=1.5) "
                     "+ consistency(temperature=2)")
    assert [w for w, _ in c.terms] == [0.5, 0.1, 1.0]
    assert c.terms[1][1].gamma == 1.5 and c.terms[2][1].temperature == 2.0
    assert c.terms[0][1].per_image is False
    assert L.build_loss("boundary(5)").window == 5


@pytest.mark.parametrize("spec,needle,hint", [
    ("ce + 0.5 * boundry(window=15)", "'boundry'", "'boundary'"),
    ("lovaz", "'lovaz'", "'lovasz'"),
    ([{"name": "dise"}], "'dise'", "'dice'"),
    ("boundary(windw=15)", "'windw'", "'window'"),
    ({"name": "boundary_focal", "gama": 2}, "'gama'", "'gamma'"),
])
def test_build_loss_errors_name_and_suggest(spec, needle, hint):
    with pytest.raises(ValueError) as err:
        L.build_loss(spec)
    assert needle in str(err.value) and hint in str(err.value)


def test_build_loss_rejects_bad_syntax():
    for spec in ["ce +", "ce * dice", "__import__('os')", "ce + 1", "", "2 * 3"]:
        with pytest.raises(ValueError):
            L.build_loss(spec)


# ------------------------------------------------------------------------------------ fit
def test_compile_and_fit_one_step():
    from sinet_tf.metrics import PersonIoU

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    outputs = keras.layers.Conv2D(2, 1)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=L.build_loss("ce + 1.0 * boundary(window=3) + 0.5 * lovasz"),
                  metrics=[PersonIoU()])
    y = _labels()
    x = np.random.default_rng(0).normal(size=(3, 12, 12, 3)).astype(np.float32)
    before = float(model.compute_loss(x, y, model(x)))
    hist = model.fit(x, y, batch_size=3, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    np.testing.assert_allclose(hist.history["loss"][0], before, rtol=1e-4)
    assert 0.0 <= hist.history["person_iou"][0] <= 1.0
    after = float(model.compute_loss(x, y, model(x)))
    assert after < before
