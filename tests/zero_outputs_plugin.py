"""A mutation for checking that the parity tests can fail. With this plugin loaded
(``-p zero_outputs_plugin``, tests/ on the import path) and ``SINET_ZERO_OUTPUTS`` set:

- ``litert``: every tensor read from a LiteRT interpreter (``Interpreter.get_tensor``) is zeros;
- ``keras``: every model loaded from a ``.keras`` file or rebuilt with ``Model.from_config``
  outputs zeros (the int8 exporter rebuilds models that way, so this mode breaks it outright);
- ``all``: both.

A parity test that still passes compares nothing. Without the variable the plugin changes
nothing. For example:

    SINET_ZERO_OUTPUTS=litert PYTHONPATH=tests python -m pytest -p zero_outputs_plugin \\
        tests/test_registry_export.py tests/test_registry_int8.py
    SINET_ZERO_OUTPUTS=keras PYTHONPATH=tests python -m pytest -p zero_outputs_plugin \\
        tests/test_registry.py -k round_trip

Every such test is expected to fail (benchmarks/results/test_mutation.md has a run)."""

import os

import numpy as np
import pytest

MODE = os.environ.get("SINET_ZERO_OUTPUTS", "")
if MODE not in ("", "litert", "keras", "all"):
    raise pytest.UsageError(f"SINET_ZERO_OUTPUTS={MODE!r}: choose litert, keras or all")


class _ZeroedModel:
    """A Keras model whose calls return zeros of the real outputs' shapes; everything else
    (layers, config, weights) is the wrapped model's."""

    def __init__(self, model):
        self._model = model

    def __call__(self, *args, **kwargs):
        out = self._model(*args, **kwargs)
        if isinstance(out, (list, tuple)):
            return type(out)(np.zeros(np.shape(o), np.float32) for o in out)
        return np.zeros(np.shape(out), np.float32)

    def predict(self, *args, **kwargs):
        out = self._model.predict(*args, **kwargs)
        if isinstance(out, (list, tuple)):
            return type(out)(np.zeros_like(o) for o in out)
        return np.zeros_like(out)

    def __getattr__(self, name):
        return getattr(self._model, name)


def pytest_configure(config):
    if not MODE:
        return
    mp = pytest.MonkeyPatch()
    config._zero_outputs_patch = mp
    if MODE in ("litert", "all"):
        from ai_edge_litert.interpreter import Interpreter

        real_get_tensor = Interpreter.get_tensor
        mp.setattr(Interpreter, "get_tensor",
                   lambda self, index, *a: np.zeros_like(real_get_tensor(self, index, *a)))
    if MODE in ("keras", "all"):
        _zero_keras(mp)
    config.issue_config_time_warning(pytest.PytestWarning(
        f"zero_outputs_plugin: outputs zeroed (SINET_ZERO_OUTPUTS={MODE})"), 1)


def _zero_keras(mp):
    import keras

    real_load = keras.models.load_model
    zeroed_load = lambda *a, **k: _ZeroedModel(real_load(*a, **k))  # noqa: E731
    mp.setattr(keras.models, "load_model", zeroed_load)
    mp.setattr(keras.saving, "load_model", zeroed_load)
    real_from_config = keras.Model.from_config.__func__
    mp.setattr(keras.Model, "from_config", classmethod(lambda cls, *a, **k: _ZeroedModel(real_from_config(cls, *a, **k))))


def pytest_unconfigure(config):
    mp = getattr(config, "_zero_outputs_patch", None)
    if mp is not None:
        mp.undo()
