"""The fine-tune's reusable pieces besides distillation: more training data (ConcatSource,
copy-paste composites) and WiSE-FT weight interpolation with BatchNorm statistics
re-estimated. Expected values are computed here with NumPy."""

import keras
import numpy as np
import pytest

from sinet_tf.data.base import ArraySource, ConcatSource
from sinet_tf.data.composite import CompositeSource
from sinet_tf.train.wise_ft import interpolate_weights, reestimate_batchnorm


def _arrays(n, size=(64, 80), seed=0, name="a"):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
    labels = []
    for _ in range(n):
        label = np.zeros(size, np.uint8)
        label[16:48, 20:60] = 1
        label[0, 0] = 255
        labels.append(label)
    return ArraySource(images, labels, name=name)


def test_concat_source_reads_each_source_in_order():
    a, b = _arrays(3, name="a"), _arrays(2, seed=1, name="b")
    both = ConcatSource([a, b])
    assert len(both) == 5 and both.name == "a+b"
    for i in range(5):
        src, j = (a, i) if i < 3 else (b, i - 3)
        np.testing.assert_array_equal(both.read(i)[0], src.read(j)[0])
    with pytest.raises(IndexError, match="index 5 out of range"):
        both.read(5)
    with pytest.raises(ValueError, match="cannot concatenate"):
        ConcatSource([a, ArraySource(a.images, a.labels, name="c", ignore_index=0)])


def test_copy_paste_keeps_the_person_and_labels_and_replaces_the_background():
    source = _arrays(2)
    composites = CompositeSource(source, 3, seed=7)
    assert len(composites) == 5
    np.testing.assert_array_equal(composites.read(1)[0], source.read(1)[0])    # the photos first, untouched
    for k in range(3):
        image, label = composites.read(2 + k)
        photo, photo_label = source.read(k % 2)
        np.testing.assert_array_equal(label, photo_label)
        inside = np.zeros(label.shape, bool)
        inside[19:45, 23:57] = True                      # 3 px (3 sigma) inside the person's edge
        assert np.abs(image[inside].astype(int) - photo[inside].astype(int)).max() <= 1
        assert image[0, 0].tolist() == photo[0, 0].tolist()                     # ignore pixels keep the photo
        far = np.ones(label.shape, bool)
        far[13:51, 17:63] = False
        far[0, 0] = False
        assert np.mean(image[far] != photo[far]) > 0.9                          # a new background
        np.testing.assert_array_equal(image, composites.read(2 + k)[0])         # a pure function of (seed, k)
    assert not np.array_equal(composites.read(2)[0], CompositeSource(source, 3, seed=8).read(2)[0])
    with pytest.raises(ValueError, match="copy-paste count"):
        CompositeSource(source, -1)


def _net(seed):
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same")(x)
    y = keras.layers.BatchNormalization(momentum=0.5)(y)
    return keras.Model(x, keras.layers.Conv2D(2, 1)(y))


def test_wise_ft_interpolates_every_weight():
    original, finetuned = _net(0), _net(1)
    w0, w1 = original.get_weights(), finetuned.get_weights()
    mixed = interpolate_weights(original, finetuned, 0.25, into=_net(2))
    for got, a, b in zip(mixed.get_weights(), w0, w1):
        np.testing.assert_allclose(got, 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        interpolate_weights(original, finetuned, 1.5)
    other = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 1)])
    with pytest.raises(ValueError, match="same architecture"):
        interpolate_weights(original, other, 0.5)


def test_batchnorm_statistics_become_the_mean_of_the_batch_statistics():
    model = _net(0)
    rng = np.random.default_rng(0)
    batches = [rng.normal(i, 1.0 + i, (4, 8, 8, 3)).astype(np.float32) for i in range(3)]
    conv, bn = model.layers[1], model.layers[2]
    means, variances = [], []
    for b in batches:
        z = np.asarray(conv(b))
        means.append(z.mean(axis=(0, 1, 2)))
        variances.append(z.var(axis=(0, 1, 2)))
    assert reestimate_batchnorm(model, batches) == 3
    np.testing.assert_allclose(np.asarray(bn.moving_mean), np.mean(means, axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.moving_variance), np.mean(variances, axis=0), rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.5
