"""sinet-tf: mobile portrait segmentation with Keras 3 / TensorFlow, from architecture to phone.

``build_model``, ``list_models`` and the rest of the registry, ``list_presets`` and
``from_preset`` are imported on first use (the registry registers every architecture on
its first lookup), so ``import sinet_tf`` alone, and with it the ``sinet`` command's
start-up, does not load TensorFlow.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY_NAMES = {
    **{name: "sinet_tf.registry"
       for name in ("UnknownModelError", "build_model", "get_model_info", "list_models", "register_model")},
    "list_presets": "sinet_tf.presets",   # reads the bundled presets' folders, no TensorFlow
    "from_preset": "sinet_tf.loading",
}

__all__ = list(_LAZY_NAMES)


def __getattr__(name: str):
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_NAMES))
