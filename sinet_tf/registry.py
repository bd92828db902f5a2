"""Model registry: one builder function per variant, looked up by name.

Builders are plain functions decorated with :func:`register_model`; each returns a
Keras functional model that takes RGB pixels in [0, 255] and starts with its own
input normalization (see :mod:`sinet_tf.layers.normalization_presets`).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["ModelInfo", "UnknownModelError", "register_model", "build_model", "list_models", "get_model_info"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable
    default_input_size: tuple[int, int] = (224, 224)
    num_classes: int = 2
    paper: str = ""
    input_multiple: int = 32
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


_REGISTRY: dict[str, ModelInfo] = {}
ARCHITECTURES_PACKAGE = "sinet_tf.models"


def _discover() -> None:
    """Import the architectures package once, which registers every model in it (the one
    import from this floor up: a plugin lookup by name, so that a builder is found however
    the registry was reached)."""
    importlib.import_module(ARCHITECTURES_PACKAGE)


def register_model(fn: Callable | None = None, *, name: str | None = None,
                   default_input_size: tuple[int, int] = (224, 224), num_classes: int = 2,
                   paper: str = "", input_multiple: int = 32, tags: tuple[str, ...] = ()):
    """Register a builder ``fn(input_shape=..., num_classes=..., **kw) -> keras.Model``.

    Usable bare (``@register_model``) or with arguments
    (``@register_model(default_input_size=(512, 512), paper="...")``).
    ``input_multiple``: height and width must be multiples of it (the builder checks;
    tests and tools read it to pick sizes the architecture takes).
    """

    def wrap(f: Callable) -> Callable:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is registered twice")
        doc = inspect.getdoc(f) or ""
        _REGISTRY[key] = ModelInfo(
            name=key, builder=f, default_input_size=tuple(default_input_size),
            num_classes=num_classes, paper=paper, input_multiple=int(input_multiple), description=doc.splitlines()[0] if doc else "",
            tags=tuple(tags))
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(tag: str | None = None) -> list[str]:
    """Names of every registered model (optionally only those carrying ``tag``), sorted."""
    _discover()
    return sorted(k for k, v in _REGISTRY.items() if tag is None or tag in v.tags)


def get_model_info(name: str) -> ModelInfo:
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}{hint} (registered: {', '.join(list_models())})") from None


def build_model(name: str, input_shape: tuple[int, int, int] | None = None,
                num_classes: int | None = None, **kwargs):
    """Build a registered model by name.

    ``input_shape`` defaults to the model's default input size with 3 channels and
    ``num_classes`` to the model's default; keyword arguments that are ``None`` are
    dropped so every builder keeps its own defaults.
    """
    info = get_model_info(name)
    if input_shape is None:
        input_shape = (*info.default_input_size, 3)
    if num_classes is None:
        num_classes = info.num_classes
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    return info.builder(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
