"""Module attributes imported on first use (PEP 562 module ``__getattr__``), so that a
package can list its public names without importing what defines them:
``sinet_tf.export`` and ``sinet_tf.postprocess`` keep TensorFlow out of the ``sinet``
command's start-up this way. (The package root ``sinet_tf`` does the same in its own six
lines: on floor 0 it imports no module of the package.)"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_attributes"]


def lazy_attributes(module_name: str, names: Mapping[str, str]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for the module ``module_name``: ``names`` maps each public
    name to the module (absolute name) that defines it; the value is imported on first access
    and stored in the module, so later accesses are plain lookups. Any other name raises
    AttributeError as a module without it would."""
    names = dict(names)

    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        setattr(sys.modules[module_name], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[module_name])) | set(names))

    return __getattr__, __dir__
