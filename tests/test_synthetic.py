"""The embedded synthetic portrait dataset: determinism, variety, mask alignment, writer."""

import cv2
import numpy as np
import pytest

from sinet_tf.data.synthetic import SyntheticPortraits, write_synthetic_dataset

SIZE = (128, 128)   # small for speed; the generator is size-agnostic


@pytest.fixture(scope="module")
def samples():
    ds = SyntheticPortraits(num_samples=100, size=SIZE, seed=0)
    return [ds.read(i) for i in range(len(ds))]


def test_shapes_dtypes_and_values(samples):
    ds = SyntheticPortraits(num_samples=5, size=(96, 80), seed=3)
    assert len(ds) == 5 and ds.classes == ("background", "person") and ds.ignore_index == 255
    image, label = ds.read(4)
    assert image.shape == (96, 80, 3) and image.dtype == np.uint8
    assert label.shape == (96, 80) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1}
    assert ds.describe(4) == "synthetic(seed=3)[4]"
    for image, label in samples[:10]:
        assert image.shape == SIZE + (3,) and label.shape == SIZE
        assert set(np.unique(label)) == {0, 1}


def test_deterministic_regardless_of_order():
    a = SyntheticPortraits(10, SIZE, seed=7)
    b = SyntheticPortraits(10, SIZE, seed=7)
    forward = [a.read(i) for i in (0, 3, 9)]
    backward = [b.read(i) for i in (9, 3, 0)][::-1]
    for (i1, m1), (i2, m2) in zip(forward, backward):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(m1, m2)
    i1, m1 = a.read(3)
    np.testing.assert_array_equal(i1, forward[1][0])
    np.testing.assert_array_equal(m1, forward[1][1])


def test_seeds_and_indices_differ():
    a, b = SyntheticPortraits(4, SIZE, seed=0), SyntheticPortraits(4, SIZE, seed=1)
    assert not np.array_equal(a.read(0)[0], b.read(0)[0])
    assert not np.array_equal(a.read(0)[1], b.read(0)[1])
    assert not np.array_equal(a.read(0)[0], a.read(1)[0])


def test_variety(samples):
    area = np.array([m.mean() for _, m in samples])
    assert area.min() < 0.15 and area.max() > 0.45, (area.min(), area.max())
    assert np.all(area > 0.01)
    bottom = np.mean([m[-1].any() for _, m in samples])
    assert bottom > 0.8
    side = np.mean([m[:, 0].any() or m[:, -1].any() for _, m in samples])
    assert side > 0.1
    person_mean = np.array([im[m == 1].mean(0) for im, m in samples])
    assert np.ptp(person_mean.mean(1)) > 80          # dark and light persons
    assert np.linalg.norm(person_mean.std(0)) > 30   # colours vary
    bg_std = np.array([im[m == 0].std(0).mean() for im, m in samples])
    assert np.mean(bg_std > 6) > 0.8                  # backgrounds are not flat
    bg_mean = np.array([im[m == 0].mean(0) for im, m in samples])
    assert np.linalg.norm(bg_mean.std(0)) > 30


def _alignment_score(image, mask):
    """Fraction of 1-px inner-boundary pixels closer to the local person colour than to the
    local background colour, plus the same for the 1-px outer ring (the other way round)."""
    k = np.ones((3, 3), np.uint8)
    img = image.astype(np.float32)
    inner = mask - cv2.erode(mask, k)
    outer = cv2.dilate(mask, k) - mask
    core_in = cv2.erode(mask, k, iterations=3).astype(np.float32)
    core_out = (1 - cv2.dilate(mask, k, iterations=3)).astype(np.float32)

    def local_mean(core):
        num = cv2.GaussianBlur(img * core[..., None], (0, 0), 3)
        den = cv2.GaussianBlur(core, (0, 0), 3)[..., None]
        return num / np.maximum(den, 1e-3), den[..., 0] > 0.05

    mi, vi = local_mean(core_in)
    mo, vo = local_mean(core_out)
    valid = vi & vo
    d_in = np.linalg.norm(img - mi, axis=-1)
    d_out = np.linalg.norm(img - mo, axis=-1)
    contrast = np.linalg.norm(mi - mo, axis=-1) > 30
    sel_i = (inner == 1) & valid & contrast
    sel_o = (outer == 1) & valid & contrast
    if sel_i.sum() < 20 or sel_o.sum() < 20:
        return None
    return (d_in[sel_i] < d_out[sel_i]).mean(), (d_out[sel_o] < d_in[sel_o]).mean()


def test_mask_aligned_with_drawing(samples):
    scores = [s for s in (_alignment_score(im, m) for im, m in samples[:40]) if s is not None]
    assert len(scores) > 20
    inner, outer = np.mean(scores, axis=0)
    assert inner > 0.7 and outer > 0.7, (inner, outer)
    # a mask shifted by 2 px scores clearly worse: the true one is not offset
    shifted = []
    for im, m in samples[:40]:
        for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2)):
            s = _alignment_score(im, np.roll(m, (dy, dx), axis=(0, 1)))
            if s is not None:
                shifted.append(min(s))
    assert np.mean(shifted) < min(inner, outer) - 0.1


def test_write_dataset(tmp_path):
    out = tmp_path / "synth"
    (out / "images").mkdir(parents=True)
    (out / "images" / "0.jpg").write_bytes(b"stale")
    assert write_synthetic_dataset(out, 5, size=(64, 80), seed=2, val_fraction=0.4) == out
    train = (out / "train.txt").read_text().splitlines()
    val = (out / "val.txt").read_text().splitlines()
    assert len(train) == 3 and len(val) == 2
    for line in train + val:
        img_rel, mask_rel = line.split()
        assert img_rel.startswith("images/") and mask_rel.startswith("masks/")
        image = cv2.imread(str(out / img_rel))
        mask = cv2.imread(str(out / mask_rel), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 80, 3) and mask.shape == (64, 80)
        assert set(np.unique(mask)) <= {0, 255}
    expected = SyntheticPortraits(5, (64, 80), seed=2).read(0)[1] * 255
    np.testing.assert_array_equal(cv2.imread(str(out / "masks/0.png"), cv2.IMREAD_UNCHANGED),
                                  expected)
    # rewriting replaces the files; no temp files are left behind
    write_synthetic_dataset(out, 5, size=(64, 80), seed=2, val_fraction=0.4)
    leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.startswith(".")]
    assert not leftovers
    assert len(list((out / "images").iterdir())) == 5


@pytest.mark.parametrize("kwargs, match", [
    (dict(size=(63, 128)), "size"), (dict(size=(128, 10)), "size"), (dict(size=(128,)), "size"),
    (dict(size="big"), "size"), (dict(num_samples=0), "num_samples"),
    (dict(seed=-1), "seed"), (dict(size=(128.0, 128)), "size"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SyntheticPortraits(**kwargs)


def test_index_out_of_range():
    ds = SyntheticPortraits(3, SIZE)
    with pytest.raises(IndexError, match="3"):
        ds.read(3)
    with pytest.raises(IndexError):
        ds.read(-1)
    with pytest.raises(ValueError, match="val_fraction"):
        write_synthetic_dataset("/nonexistent-unused", 3, val_fraction=1.5)
