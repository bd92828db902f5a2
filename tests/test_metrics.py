"""Metrics vs. hand-computed values and brute-force NumPy references."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sinet_tf.metrics import (
    PersonIoU,
    SegmentationMetrics,
    boundary_f_score,
    mask_boundary,
)

IGN = 255
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ hand-made
TRUE_A = np.array([[0, 0, 0, 0],
                   [0, 1, 1, 0],
                   [0, 1, 1, 0],
                   [0, 0, 0, IGN]], np.uint8)
PRED_A = np.array([[0, 0, 0, 0],
                   [0, 1, 1, 1],
                   [0, 0, 1, 0],
                   [0, 0, 0, 1]], np.uint8)      # (3, 3) predicted person, but ignored


def test_hand_computed_iou_miou_accuracy():
    m = SegmentationMetrics(num_classes=2)
    m.update(PRED_A, TRUE_A)
    r = m.result()
    # 15 valid pixels; person: TP 3, FP 1 (1,3), FN 1 (2,1); background TP 10
    assert r["n_images"] == 1
    assert r["person_iou"] == pytest.approx(3 / 5)
    assert r["per_class_iou"] == pytest.approx([10 / 12, 3 / 5])
    assert r["miou"] == pytest.approx((10 / 12 + 3 / 5) / 2)
    assert r["pixel_accuracy"] == pytest.approx(13 / 15)

    # an image of another size where both are empty (IoU 1) and one with a missed person (IoU 0)
    empty = np.zeros((3, 5), np.uint8)
    missed_t = np.zeros((2, 2), np.uint8)
    missed_t[0, 0] = 1
    m.update(empty, empty)
    m.update(np.zeros((1, 2, 2), np.uint8), missed_t[None])
    r = m.result()
    assert r["n_images"] == 3
    assert r["per_image_iou"] == pytest.approx([0.6, 1.0, 0.0])
    assert r["person_iou"] == pytest.approx(1.6 / 3)
    # confusion: bg TP 10 + 15 + 3 = 28, bg FP (true person predicted bg) 1 + 1, bg FN 1
    assert r["per_class_iou"] == pytest.approx([28 / 31, 3 / 6])
    assert r["pixel_accuracy"] == pytest.approx((13 + 15 + 3) / (15 + 15 + 4))
    m.reset()
    assert m.result()["n_images"] == 0 and m.confusion.sum() == 0


def test_miou_leaves_out_absent_classes_and_checks_inputs():
    m = SegmentationMetrics(num_classes=3)
    m.update(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8))
    r = m.result()
    assert r["miou"] == 1.0 and np.isnan(r["per_class_iou"][2])
    with pytest.raises(ValueError):
        m.update(np.full((4, 4), 3, np.uint8), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        m.update(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))


def test_all_ignored_image_counts_as_empty():
    m = SegmentationMetrics()
    m.update(np.ones((4, 4), np.uint8), np.full((4, 4), IGN, np.uint8))
    r = m.result()
    assert r["per_image_iou"] == [1.0] and r["boundary_f"] == 1.0 and np.isnan(r["pixel_accuracy"])


# ------------------------------------------------------------------------------------ boundary F
def test_boundary_f_hand_computed():
    t = np.zeros((8, 8), bool)
    t[2:6, 2:6] = True
    p = np.zeros((8, 8), bool)
    p[2:6, 3:7] = True
    assert mask_boundary(t).sum() == 12             # the 4x4 ring; inner 2x2 is interior
    # exact matching: 6 of 12 boundary pixels coincide on either side -> P = R = 0.5
    assert boundary_f_score(p, t, width=0) == pytest.approx(0.5)
    assert boundary_f_score(p, t, width=1) == pytest.approx(1.0)
    assert boundary_f_score(t, t, width=0) == 1.0
    assert boundary_f_score(np.zeros_like(t), np.zeros_like(t)) == 1.0   # both empty
    assert boundary_f_score(np.zeros_like(t), t) == 0.0
    # a full-image person touches only the image border: no boundary at all
    assert mask_boundary(np.ones((5, 5), bool)).sum() == 0

    m = SegmentationMetrics(boundary_width=0)
    m.update(np.stack([p, t]).astype(np.uint8), np.stack([t, t]).astype(np.uint8))
    assert m.result()["per_image_boundary_f"] == pytest.approx([0.5, 1.0])
    assert m.result()["boundary_f"] == pytest.approx(0.75)


def test_boundary_f_ignore_pixels():
    t = np.zeros((8, 8), np.uint8)
    t[2:6, 2:6] = 1
    t[:, 6:] = IGN                     # ignore region next to the person's right side
    p = (t == 1).astype(np.uint8)
    p[:, 6:] = 1                       # whatever is predicted under the ignore region
    m = SegmentationMetrics(boundary_width=0)
    m.update(p, t)
    # truth boundary: person pixels next to *valid* background only
    valid = t != IGN
    bt = mask_boundary((t == 1) & valid, valid & (t != 1))
    assert not bt[3:5, 5].any() and bt[2, 2]
    assert m.result()["per_image_iou"] == [1.0]
    assert m.result()["boundary_f"] == pytest.approx(_bf_bruteforce(p == 1, t == 1, 0, valid))


def _bf_bruteforce(pm, tm, width, valid):
    """Boundary F with explicit neighbourhood loops and Chebyshev distances."""
    h, w = pm.shape

    def boundary(mask, other):
        out = np.zeros_like(mask)
        for i in range(h):
            for j in range(w):
                if mask[i, j]:
                    out[i, j] = other[max(0, i - 1):i + 2, max(0, j - 1):j + 2].any()
        return out

    bp = boundary(pm, ~pm) & valid
    bt = boundary(tm & valid, valid & ~tm)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    P, T = np.argwhere(bp), np.argwhere(bt)
    d = np.abs(P[:, None, :] - T[None, :, :]).max(-1)
    prec = (d.min(1) <= width).mean()
    rec = (d.min(0) <= width).mean()
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def test_boundary_f_random_masks_vs_bruteforce():
    rng = np.random.default_rng(0)
    from scipy import ndimage
    for k in range(6):
        tm = ndimage.binary_opening(rng.random((12, 12)) > 0.5)
        pm = ndimage.binary_opening(rng.random((12, 12)) > 0.5)
        valid = rng.random((12, 12)) > 0.1
        for width in (0, 1, 3):
            got = boundary_f_score(pm, tm, width, valid)
            assert got == pytest.approx(_bf_bruteforce(pm, tm, width, valid)), (k, width)


# ------------------------------------------------------------------------------------ PersonIoU
def _batch(c, seed=0):
    rng = np.random.default_rng(seed)
    y = np.zeros((8, 8, 8), np.uint8)
    y[0, 2:6, 2:6] = 1
    y[1, :, 4:] = 1
    y[2, 1:3, :] = IGN                 # no person, some ignore
    y[3, 4:, :4] = 1
    y[3, 0, :] = IGN
    y[5] = IGN                         # all ignored
    y[6, 3:5, 3:5] = 1
    y[7, :, :] = 1
    z = rng.normal(0, 1.5, size=(8, 8, 8, c)).astype(np.float32)
    z[4] = -5.0 if c == 1 else np.array([5.0, -5.0] + [0.0] * (c - 2))   # predicts empty
    return y, z


def _pred_labels(z):
    return (z[..., 0] > 0).astype(np.uint8) if z.shape[-1] == 1 else z.argmax(-1).astype(np.uint8)


@pytest.mark.parametrize("c", [1, 2])
def test_person_iou_equals_segmentation_metrics(c):
    y, z = _batch(c)
    m = SegmentationMetrics()
    m.update(_pred_labels(z), y)
    ref = m.result()
    k = PersonIoU()
    k.update_state(y[:3], z[:3])
    k.update_state(y[3:], z[3:].astype(np.float16))
    assert float(k.result()) == pytest.approx(ref["person_iou"], abs=1e-6)
    assert ref["per_image_iou"][4] == 1.0 and ref["per_image_iou"][5] == 1.0
    k.reset_state()
    assert float(k.result()) == 0.0
    w = np.array([1, 0, 0, 0, 0, 0, 0, 2], np.float32)
    k.update_state(y, z, sample_weight=w)
    iou = np.array(ref["per_image_iou"])
    assert float(k.result()) == pytest.approx((iou[0] + 2 * iou[7]) / 3, abs=1e-6)


def test_person_iou_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="spatial shape mismatch"):
        PersonIoU().update_state(np.zeros((1, 8, 8), np.uint8), np.zeros((1, 4, 4, 2)))


_MIRRORED = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras
    from sinet_tf.losses import CrossEntropy, BoundaryLoss
    from sinet_tf.metrics import PersonIoU
    data = np.load(sys.argv[2])
    y, z = data["y"], data["z"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}
    with strategy.scope():
        inp = keras.Input(z.shape[1:])
        model = keras.Model(inp, keras.layers.Identity()(inp))
        model.compile(loss=CrossEntropy() + 0.5 * BoundaryLoss(window=3),
                      metrics=[PersonIoU()])
        metric = PersonIoU()
    # 1) model.evaluate (the model.fit validation path), two batches of 4 split over replicas
    res = model.evaluate(z, y, batch_size=4, verbose=0, return_dict=True)
    out["evaluate"] = float(res["person_iou"])
    out["loss"] = float(res["loss"])
    # 2) update_state inside strategy.run on per-replica batches
    ds = tf.data.Dataset.from_tensor_slices((y, z)).batch(4)
    @tf.function
    def step(yb, zb):
        strategy.run(metric.update_state, args=(yb, zb))
    for yb, zb in strategy.experimental_distribute_dataset(ds):
        step(yb, zb)
    out["run"] = float(metric.result())
    out["count"] = float(tf.convert_to_tensor(metric.count))
    print("RESULT" + json.dumps(out))
""")


def test_person_iou_under_mirrored_strategy(tmp_path):
    y, z = _batch(2, seed=3)
    np.savez(tmp_path / "batch.npz", y=y, z=z)
    m = SegmentationMetrics()
    m.update(_pred_labels(z), y)
    ref = m.result()["person_iou"]
    from sinet_tf.losses import BoundaryLoss, CrossEntropy
    ref_loss = float((CrossEntropy() + 0.5 * BoundaryLoss(window=3))(y, z))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", _MIRRORED, str(REPO), str(tmp_path / "batch.npz")],
                          capture_output=True, text=True, env=env, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT"):])
    assert out["replicas"] == 2
    assert out["count"] == 8.0
    assert out["run"] == pytest.approx(ref, abs=1e-6)
    assert out["evaluate"] == pytest.approx(ref, abs=1e-6)
    assert out["loss"] == pytest.approx(ref_loss, rel=1e-5)   # losses reduce right across replicas
