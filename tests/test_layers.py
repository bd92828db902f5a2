"""Custom layers against independent NumPy computations."""

import numpy as np
import pytest

from sinet_tf.layers import (
    BilinearResize,
    GroupedPointwiseConv,
    InformationBlockingGate,
    InputNormalization,
)
from sinet_tf.layers.normalization_presets import PRESETS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_input_normalization_follows_the_preset_table(preset):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 7, 3)).astype(np.float32)
    y = np.asarray(InputNormalization(preset)(x))
    p = PRESETS[preset]
    bgr = x[..., ::-1] if p.bgr else x
    expected = (bgr - np.array(p.mean)) * np.array(p.scale)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_official_sinet_preset_is_the_reference_formula():
    p = PRESETS["official_sinet"]
    bgr = np.array([[10.0, 200.0, 30.0]])
    mean = np.array([107.304565, 115.69884, 132.35703])
    std = np.array([63.97182, 65.1337, 68.29726])
    np.testing.assert_allclose(p.apply_numpy(bgr[..., ::-1]), (bgr - mean) / std / 255, rtol=1e-12)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown normalization preset 'bgr'"):
        InputNormalization("bgr")


def _grouped_conv_numpy(x, kernel, groups):
    cin_g = kernel.shape[2]
    cout_g = kernel.shape[3] // groups
    outs = [x[..., g * cin_g:(g + 1) * cin_g] @ kernel[0, 0, :, g * cout_g:(g + 1) * cout_g] for g in range(groups)]
    return np.concatenate(outs, -1)


def _shuffle_numpy(y, groups):
    n, h, w, c = y.shape
    return y.reshape(n, h, w, groups, c // groups).transpose(0, 1, 2, 4, 3).reshape(n, h, w, c)


@pytest.mark.parametrize("groups,cin,cout", [(2, 16, 24), (2, 48, 24), (4, 8, 12), (1, 6, 4)])
def test_grouped_pointwise_conv_with_folded_shuffle(groups, cin, cout):
    x = np.random.default_rng(1).normal(size=(2, 3, 4, cin)).astype(np.float32)
    layer = GroupedPointwiseConv(cout, groups=groups, shuffle_groups=groups if groups > 1 else None)
    y = np.asarray(layer(x))
    kernel = layer.kernel.numpy()
    assert kernel.shape == (1, 1, cin // groups, cout)
    expected = _grouped_conv_numpy(x.astype(np.float64), kernel, groups)
    if groups > 1:
        expected = _shuffle_numpy(expected, groups)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _resize_align_corners_numpy(x, out_h, out_w):
    n, h, w, c = x.shape
    ys = np.arange(out_h) * (h - 1) / max(out_h - 1, 1)
    xs = np.arange(out_w) * (w - 1) / max(out_w - 1, 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[None, :, None, None], (xs - x0)[None, None, :, None]
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


@pytest.mark.parametrize("scale", [2, 4])
def test_bilinear_resize_is_pytorch_align_corners(scale):
    x = np.random.default_rng(2).normal(size=(1, 7, 5, 3)).astype(np.float32)
    y = np.asarray(BilinearResize(scale=scale)(x))
    assert y.shape == (1, 7 * scale, 5 * scale, 3)
    np.testing.assert_allclose(y, _resize_align_corners_numpy(x.astype(np.float64), 7 * scale, 5 * scale),
                               atol=1e-5)
    # corners map onto corners
    np.testing.assert_allclose(y[0, [0, -1]][:, [0, -1]], x[0, [0, -1]][:, [0, -1]], atol=1e-6)


def test_information_blocking_gate():
    logits = np.random.default_rng(3).normal(size=(1, 4, 4, 2)).astype(np.float32) * 3
    e = np.exp(logits - logits.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    gate = np.asarray(InformationBlockingGate()(logits))
    np.testing.assert_allclose(gate, 1 - p.max(-1, keepdims=True), atol=1e-6)
    one = logits[..., :1]
    s = 1 / (1 + np.exp(-one))
    np.testing.assert_allclose(np.asarray(InformationBlockingGate()(one)), 1 - np.maximum(s, 1 - s), atol=1e-6)
