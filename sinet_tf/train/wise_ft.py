"""Weight-space ensembling of a fine-tuned network with the network it started from
(WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022, Eq. 1):

    theta(alpha) = (1 - alpha) * theta_0 + alpha * theta_1

with ``theta_0`` the weights before fine-tuning and ``theta_1`` after; ``alpha = 1`` is the
fine-tuned network, ``alpha = 0`` the original. The paper finds the interpolation keeps
most of the fine-tuned accuracy on the new data while recovering much of the original's
robustness to other distributions.

:func:`interpolate_weights` interpolates every variable, BatchNorm's moving statistics
included. Those are not weights: the mean and variance of a layer's input in the interpolated
network are not the interpolated means and variances, so they can be re-estimated afterwards
(:func:`reestimate_batchnorm`): every BatchNormalization layer's moving mean and variance
become the average of its batch statistics over the given batches (the "precise BN"
estimate, Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021, Sec. 3.1), the learned
scale and shift staying interpolated. Whether that helps depends on how well the batches
stand for the photos the network will see: measure both
(``benchmarks/finetune_candidates.py wise --bn interpolate|reestimate``).

:func:`average_weights` is the same operation between fine-tuned networks: the "uniform
soup" of Wortsman et al., "Model soups: averaging weights of multiple fine-tuned models
improves accuracy without increasing inference time", ICML 2022 (Sec. 2, Eq. 1 with equal
coefficients): networks fine-tuned from one starting point tend to lie in one basin of the
loss, where their mean scores at least as well as the members. A recipe gets it from an
``average_of`` stage (``sinet_tf.train.config``).
"""

from __future__ import annotations

import keras
import numpy as np

__all__ = ["average_weights", "batchnorm_layers", "interpolate_weights", "reestimate_batchnorm"]


def batchnorm_layers(model: keras.Model) -> list:
    """Every :class:`keras.layers.BatchNormalization` inside ``model`` (nested models included)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found.extend(batchnorm_layers(layer))
    return found


def interpolate_weights(original: keras.Model, finetuned: keras.Model, alpha: float, into: keras.Model | None = None):
    """Set ``into`` (default: ``finetuned``) to ``(1 - alpha) * original + alpha * finetuned``,
    weight by weight (same architecture: the same variables in the same order and shapes).
    Returns the model set."""
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"WiSE-FT alpha must be in [0, 1], got {alpha}")
    _check_same_architecture([original, finetuned], "WiSE-FT")
    target = finetuned if into is None else into
    mixed = [(1.0 - alpha) * np.asarray(x) + alpha * np.asarray(y) for x, y in zip(original.get_weights(),
                                                                                finetuned.get_weights())]
    target.set_weights([m.astype(np.asarray(w).dtype) for m, w in zip(mixed, target.get_weights())])
    return target


def average_weights(networks: list, into: keras.Model | None = None):
    """Set ``into`` (default: the first network) to the mean of ``networks``, weight by
    weight, BatchNorm's moving statistics included (a uniform model soup; see the module
    docstring). Returns the model set."""
    if len(networks) < 2:
        raise ValueError(f"averaging needs at least two networks, got {len(networks)}")
    _check_same_architecture(networks, "averaging")
    target = networks[0] if into is None else into
    values = [m.get_weights() for m in networks]
    mean = [np.mean([np.asarray(v[i], np.float64) for v in values], axis=0) for i in range(len(values[0]))]
    target.set_weights([m.astype(np.asarray(w).dtype) for m, w in zip(mean, target.get_weights())])
    return target


def _check_same_architecture(networks: list, what: str) -> None:
    first = networks[0].weights
    for other in networks[1:]:
        if len(other.weights) != len(first) or any(tuple(x.shape) != tuple(y.shape)
                                                    for x, y in zip(first, other.weights)):
            raise ValueError(f"{what} needs networks of the same architecture: {networks[0].name} has "
                             f"{len(first)} weights, {other.name} {len(other.weights)} (or their shapes differ)")


def reestimate_batchnorm(model: keras.Model, batches) -> int:
    """Replace every BatchNormalization layer's moving mean and variance with the average of
    its batch statistics over ``batches`` (an iterable of image batches, or of ``(images,
    labels)``), by running the model in training mode with the layers' momentum set to
    ``k / (k + 1)`` at batch ``k``; nothing else changes. Returns the number of batches."""
    layers = batchnorm_layers(model)
    saved = [layer.momentum for layer in layers]
    count = 0
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for layer in layers:
                layer.momentum = count / (count + 1.0)
            model(images, training=True)
            count += 1
    finally:
        for layer, m in zip(layers, saved):
            layer.momentum = m
    return count
