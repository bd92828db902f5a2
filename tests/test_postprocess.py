"""sinet_tf.postprocess: synthetic camera-motion videos and their exact ground truth, the
instability measure, temporal smoothing (NumPy and Keras) and the guided filter (NumPy,
fast upsampling, Keras), each against an independent brute-force computation."""

import math

import numpy as np
import pytest

from sinet_tf.postprocess import (MattePipeline, MattePostprocessor, TemporalSmoother, gated_ema_step,
                                  guided_filter, guided_upsample)
from sinet_tf.postprocess.refine import box_mean, guided_coefficients, luma
from sinet_tf.postprocess.stability import (CameraPath, SyntheticVideo, camera_path, frame_to_frame, instability,
                                            photo_to_video, warp_labels)

# --------------------------------------------------------------------------- synthetic videos


def _blob_photo(h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    labels = (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1).astype(np.uint8)
    labels[0, 0] = 255  # an ignored pixel travels with the warp like any label
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    return image, labels


def _brute_force_truth(labels, path: CameraPath, t: int):
    """Frame t's ground truth pixel by pixel in plain Python: the photo point the camera
    shows there (zoom, rotation, window centre), rounded half up, clamped."""
    h, w = labels.shape
    s, a = float(path.zoom[t]), float(path.angle[t])
    cx, cy = (float(v) for v in path.centre[t])
    out = np.zeros_like(labels)
    for y in range(h):
        for x in range(w):
            dx, dy = x - (w - 1) / 2, y - (h - 1) / 2
            qx = cx + (math.cos(a) * dx - math.sin(a) * dy) / s
            qy = cy + (math.sin(a) * dx + math.cos(a) * dy) / s
            out[y, x] = labels[min(max(math.floor(qy + 0.5), 0), h - 1), min(max(math.floor(qx + 0.5), 0), w - 1)]
    return out


def test_ground_truth_of_every_frame_is_exactly_the_warped_mask():
    image, labels = _blob_photo()
    video = photo_to_video(image, labels, 6, seed=3)
    assert len(video.frames) == len(video.labels) == 6
    for t in range(6):
        np.testing.assert_array_equal(video.labels[t], _brute_force_truth(labels, video.path, t), err_msg=f"frame {t}")
    # the camera really moves, and stays smooth: consecutive frames differ, but by little
    changed = [(video.labels[t] != video.labels[t - 1]).mean() for t in range(1, 6)]
    assert max(changed) < 0.2 and not all(c == 0 for c in changed)


def test_integer_translation_shifts_the_mask():
    image, labels = _blob_photo(h=31, w=41)
    c = np.array([20.0, 15.0])  # the frame's centre: zoom 1 and no rotation show the photo as it is
    path = CameraPath(zoom=np.ones(2), angle=np.zeros(2), centre=np.stack([c, c + [3, -2]]))
    np.testing.assert_array_equal(warp_labels(labels, path.frame_to_photo(0, labels.shape), labels.shape), labels)
    shifted = warp_labels(labels, path.frame_to_photo(1, labels.shape), labels.shape)
    np.testing.assert_array_equal(shifted[2:, :-3], labels[:-2, 3:])


def test_frames_are_the_photo_seen_by_the_camera_and_deterministic():
    image, labels = _blob_photo()
    clean = photo_to_video(image, labels, 3, seed=5, noise_sigma=0.0, exposure_jitter=0.0)
    b = clean.frame_to_photo(2)
    rng = np.random.default_rng(0)
    for y, x in rng.integers([2, 2], [28, 38], (20, 2)):
        qx, qy = b @ [x, y, 1.0]
        x0, y0 = int(math.floor(qx)), int(math.floor(qy))
        fx, fy = qx - x0, qy - y0
        p = image.astype(np.float64)
        want = ((1 - fy) * ((1 - fx) * p[y0, x0] + fx * p[y0, x0 + 1]) + fy * ((1 - fx) * p[y0 + 1, x0]
                                                                                + fx * p[y0 + 1, x0 + 1]))
        assert np.abs(clean.frames[2][y, x] - want).max() <= 1.0, (y, x)
    a, b2 = photo_to_video(image, labels, 3, seed=5), photo_to_video(image, labels, 3, seed=5)
    assert all((f == g).all() for f, g in zip(a.frames, b2.frames))
    assert (a.frames[1] != clean.frames[1]).mean() > 0.5  # noise and exposure jitter are there


def test_camera_path_keeps_the_window_inside_the_photo():
    for seed in range(5):
        path = camera_path(200, (480, 640), seed)
        assert path.zoom.min() >= 1.12 - 1e-9 and path.zoom.max() <= 1.35 + 1e-9
        assert np.abs(np.degrees(path.angle)).max() <= 3.0 + 1e-9
        for t in range(0, 200, 7):
            b = path.frame_to_photo(t, (480, 640))
            corners = b @ np.array([[0, 0, 1], [639, 0, 1], [0, 479, 1], [639, 479, 1]], float).T
            assert corners[0].min() >= -1e-6 and corners[0].max() <= 639 + 1e-6
            assert corners[1].min() >= -1e-6 and corners[1].max() <= 479 + 1e-6


def test_instability_measures_change_beyond_the_known_motion():
    image, labels = _blob_photo(h=61, w=81)
    c = np.array([40.0, 30.0])
    n = 5
    path = CameraPath(zoom=np.ones(n), angle=np.zeros(n), centre=np.stack([c + [2 * t, t] for t in range(n)]))
    truth = [warp_labels(labels, path.frame_to_photo(t, labels.shape), labels.shape) for t in range(n)]
    video = SyntheticVideo([None] * n, truth, path, labels.shape)
    np.testing.assert_allclose(frame_to_frame(video, 3), [[1, 0, 2], [0, 1, 1]], atol=1e-12)
    mattes = [(m == 1).astype(np.float32) for m in truth]
    assert instability(video, mattes) == {"mean_abs_diff": 0.0, "flip_rate": 0.0}  # moves with the camera
    flicker = [m * (0.9 if t % 2 else 1.0) for t, m in enumerate(mattes)]
    # |1 - 0.9| on person pixels that frame t-1 also sees, 0 elsewhere; the masks do not flip
    want = np.mean([0.1 * (truth[t][:-1, :-2] == 1).sum() / truth[t][:-1, :-2].size for t in range(1, n)])
    got = instability(video, flicker)
    assert got["flip_rate"] == 0.0 and got["mean_abs_diff"] == pytest.approx(want, rel=1e-4)
    frozen = [mattes[0]] * n  # a matte that does not follow the camera flips where the edge moved
    assert instability(video, frozen)["flip_rate"] > 0.01


# --------------------------------------------------------------------------- temporal smoothing


def test_gated_ema_step_against_scalar_arithmetic():
    rng = np.random.default_rng(1)
    p, m = rng.uniform(0, 1, (7, 9)).astype(np.float32), rng.uniform(0, 1, (7, 9)).astype(np.float32)
    for s in (0.0, 0.3, 0.7, 0.95):
        out = gated_ema_step(p, m, s)
        for (i, j), v in np.ndenumerate(out):
            d = float(p[i, j]) - float(m[i, j])
            w = min(1.0, max(1.0 - s, abs(d)))
            assert v == pytest.approx(float(m[i, j]) + w * d, abs=1e-6)
    np.testing.assert_array_equal(gated_ema_step(p, None, 0.7), p)
    np.testing.assert_allclose(gated_ema_step(p, np.full_like(p, -1.0), 0.7), p, atol=1e-6)  # NO_HISTORY
    np.testing.assert_allclose(gated_ema_step(p, m, 0.0), p, atol=1e-6)


def test_static_probabilities_converge_geometrically():
    rng = np.random.default_rng(2)
    p, start = rng.uniform(0, 1, (16, 16)).astype(np.float32), rng.uniform(0, 1, (16, 16)).astype(np.float32)
    s = 0.8
    sm = TemporalSmoother("ema", s)
    e0 = np.abs(sm(start) - p)
    for k in range(1, 80):
        e = np.abs(sm(p) - p)
        assert (e <= e0 * s ** k + 1e-6).all()
    assert e.max() < 1e-6


@pytest.fixture(scope="module")
def official(sinet_checkpoint):
    from sinet_tf.inference import Segmenter

    return Segmenter("sinet", weights=sinet_checkpoint, keep_aspect=True)


@pytest.mark.parametrize("mode", ["ema", "flow"])
def test_smoothing_a_static_video_converges_to_the_per_frame_result(official, humanseg, mode):
    import cv2

    from sinet_tf.files import read_rgb

    photo = read_rgb(humanseg / "images" / "1.jpg")
    first = cv2.resize(read_rgb(humanseg / "images" / "2.jpg"), photo.shape[1::-1])
    for refine in ("none", "guided"):
        per_frame = MattePipeline(official, MattePostprocessor("none", 0.0, refine))(photo)
        pipeline = MattePipeline(official, MattePostprocessor(mode, 0.7, refine))
        pipeline(first)  # another picture first: the smoother starts away from the answer
        errors = [float(np.abs(pipeline(photo) - per_frame).max()) for _ in range(30)]
        assert errors[0] > 0.05, "the first frame should still show the previous picture"
        assert errors[-1] < 2e-3 and errors[-1] < errors[5] < errors[0], (refine, errors)


def test_no_smoothing_and_no_refinement_is_exactly_the_segmenter(official, humanseg):
    from sinet_tf.files import read_rgb
    from sinet_tf.postprocess import model_frame

    photo = read_rgb(humanseg / "images" / "1.jpg")
    np.testing.assert_array_equal(MattePipeline(official)(photo), official.person_probability(photo))
    post = MattePostprocessor("ema", 0.0)  # strength 0: the model frame path without smoothing
    np.testing.assert_allclose(post(model_frame(official, photo), photo), official.person_probability(photo),
                               atol=1e-6)


def test_bad_values_are_one_line_errors():
    for kw, text in [({"temporal": "kalman"}, "--temporal 'kalman'"), ({"strength": 1.0}, "--temporal-strength 1.0"),
                     ({"strength": -0.1}, "--temporal-strength -0.1"), ({"refine": "x"}, "--refine 'x'"),
                     ({"radius": 0}, "--refine-radius 0"), ({"eps": 0.0}, "--refine-eps 0.0")]:
        with pytest.raises(ValueError) as e:
            MattePostprocessor(**kw)
        assert text in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- guided filter


def _brute_coefficients(I, p, r, eps):
    """mean(a), mean(b) of He et al. Eq. 5, 6, 8 with explicit windows (clipped to the image)."""
    h, w = I.shape
    I, p = I.astype(np.float64), p.astype(np.float64)
    a, b = np.zeros((h, w)), np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            wi = I[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            wp = p[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            mu = wi.mean()
            a[y, x] = ((wi * wp).mean() - mu * wp.mean()) / (((wi - mu) ** 2).mean() + eps)
            b[y, x] = wp.mean() - a[y, x] * mu
    mean_a, mean_b = np.zeros((h, w)), np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            mean_a[y, x] = a[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].mean()
            mean_b[y, x] = b[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].mean()
    return mean_a, mean_b


def _brute_guided_filter(I, p, r, eps):
    mean_a, mean_b = _brute_coefficients(I, p, r, eps)
    return np.clip(mean_a * I + mean_b, 0, 1)


def test_guided_filter_against_brute_force():
    rng = np.random.default_rng(3)
    I = rng.uniform(0, 1, (19, 23)).astype(np.float32)
    p = np.clip(I + rng.normal(0, 0.3, I.shape), 0, 1).astype(np.float32)
    for r, eps in ((1, 1e-3), (2, 1e-2), (4, 1e-3)):
        np.testing.assert_allclose(guided_filter(I, p, r, eps), _brute_guided_filter(I, p, r, eps), atol=2e-4,
                                   err_msg=f"r={r} eps={eps}")
    # subsampled: coefficients of 2x2 block means (radius 5 // 2), resized back bilinearly
    import cv2

    I, p = I[:18, :22], p[:18, :22]
    blocks = [v.reshape(9, 2, 11, 2).mean(axis=(1, 3)) for v in (I, p)]
    mean_a, mean_b = (cv2.resize(c.astype(np.float32), (22, 18), interpolation=cv2.INTER_LINEAR)
                      for c in _brute_coefficients(*blocks, 2, 1e-3))
    np.testing.assert_allclose(guided_filter(I, p, 5, 1e-3, subsample=2), np.clip(mean_a * I + mean_b, 0, 1),
                               atol=2e-4)
    x = rng.uniform(0, 1, (9, 11)).astype(np.float32)
    np.testing.assert_allclose(box_mean(x, 2)[0, 0], x[:3, :3].mean(), rtol=1e-6)  # window clipped at the corner


def test_guided_upsample_is_the_filter_at_equal_size_and_follows_the_photo_edge():
    rng = np.random.default_rng(4)
    I = rng.uniform(0, 1, (24, 24)).astype(np.float32)
    p = rng.uniform(0, 1, (24, 24)).astype(np.float32)
    np.testing.assert_allclose(guided_upsample(I, p, I, 2, 1e-3), guided_filter(I, p, 2, 1e-3), atol=1e-5)
    # a letterbox box: only the photo's part of the coefficients is used
    a, b = guided_coefficients(I, p, 2, 1e-3)
    np.testing.assert_allclose(guided_upsample(I, p, I[4:20], 2, 1e-3, box=(4, 0, 16, 24)),
                               np.clip(a[4:20] * I[4:20] + b[4:20], 0, 1), atol=1e-5)
    # the model's soft edge one low-resolution pixel off the photo's edge: plain upsampling keeps
    # the error (4 photo pixels wide), the guided filter puts the mask edge on the photo's edge
    import cv2

    hi = np.zeros((96, 96), np.float32)
    hi[:, 48:] = 1.0                                   # the photo: person (bright) from x = 48
    lo = cv2.resize(hi, (24, 24), interpolation=cv2.INTER_AREA)
    step = np.zeros((24, 24), np.float32)
    step[:, 13:] = 1.0
    prob = cv2.GaussianBlur(step, (0, 0), 1.0)
    plain = cv2.resize(prob, (96, 96), interpolation=cv2.INTER_LINEAR)
    refined = guided_upsample(lo, prob, hi, 2, 1e-3)
    assert ((plain > 0.5) != (hi > 0.5)).mean() == pytest.approx(4 / 96)
    assert ((refined > 0.5) != (hi > 0.5)).sum() == 0


def test_keras_guided_filter_equals_numpy():
    import keras

    from sinet_tf.postprocess import GuidedFilter

    rng = np.random.default_rng(5)
    rgb = rng.uniform(0, 255, (1, 20, 28, 3)).astype(np.float32)
    p = rng.uniform(0, 1, (1, 20, 28, 1)).astype(np.float32)
    for subsample in (1, 2):
        layer = GuidedFilter(3, 1e-3, subsample)
        out = np.asarray(layer([keras.ops.convert_to_tensor(rgb), keras.ops.convert_to_tensor(p)]))
        np.testing.assert_allclose(out[0, ..., 0], guided_filter(luma(rgb[0]), p[0, ..., 0], 3, 1e-3, subsample),
                                   atol=1e-4, err_msg=f"subsample {subsample}")
