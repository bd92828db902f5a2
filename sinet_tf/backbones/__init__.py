"""Encoders shared by several architectures, with the layer names of their
``keras.applications`` counterparts so ImageNet weights from a local file copy by name."""

from __future__ import annotations

import logging
import os

__all__ = ["copy_weights_by_name", "require_weights_file"]

log = logging.getLogger("sinet_tf.backbones")


def require_weights_file(model_name, path):
    """Return ``path`` as a string if it is an existing file, else raise naming the model."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{model_name}: backbone_weights file not found: {path}")
    return path


def copy_weights_by_name(model, reference, model_name, source):
    """Copy the weights of every layer of ``reference`` into the same-named layer of
    ``model``; shapes must agree. Returns the number of layers copied (raises on 0)."""
    copied = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            src = reference.get_layer(layer.name)
        except ValueError:
            continue
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in src.weights]
        if ours != theirs:
            raise ValueError(f"{model_name}: backbone layer {layer.name!r} has weights {ours} but "
                             f"{source} has {theirs}")
        layer.set_weights(src.get_weights())
        copied += 1
    if not copied:
        raise ValueError(f"{model_name}: no layer of {source} matches a layer of the model by name")
    log.info("%s: loaded backbone weights into %d layers from %s", model_name, copied, source)
    return copied
