"""Loading Keras models: ``.keras`` files (safe mode), presets (a bundled name or a preset
folder, :mod:`sinet_tf.presets`), or registry names with an optional checkpoint, at a
chosen input size; and making a preset of a trained model (:func:`save_preset`)."""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import keras
import numpy as np

import sinet_tf.models  # noqa: F401  (registers the architectures' custom layers for deserialization)
from sinet_tf.layers.normalization import InputNormalization
from sinet_tf.model_cost import iter_layers
from sinet_tf.presets import (
    KERAS_WEIGHTS,
    Preset,
    PresetError,
    UnknownPresetError,
    assign_weights,
    check_finite,
    find_preset,
    list_presets,
    resolve_preset,
    run_info,
    weights_of,
    write_preset,
)
from sinet_tf.registry import UnknownModelError, build_model, get_model_info, list_models
from sinet_tf.weights import load_weights

__all__ = ["load_keras_model", "load_model", "from_preset", "save_preset"]


def load_keras_model(path: str | os.PathLike):
    """Load a ``.keras`` file (custom layers are registered, so ``safe_mode`` stays on)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):   # Keras would call it "File not found"
        with open(path, "rb") as f:
            head = f.read(512)
        what = (f"a text file starting with {head[:40].decode('ascii')!r}"
                if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else
                "empty" if not head else f"a file starting with the bytes {head[:8].hex(' ')}")
        raise ValueError(f"{path}: not a loadable Keras model (a .keras file is a zip archive; this is {what})")
    if wrapper := _training_wrapper(path):
        kind, network = wrapper
        raise ValueError(f"{path}: the checkpoint {kind} stage resumes from ({network or 'its network'} inside a "
                         "training wrapper), not a deployable network; use best.keras in the same stage folder")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:
        first = " ".join(str(e).split())[:300]   # Keras quotes the whole model config
        raise ValueError(f"{path}: not a loadable Keras model ({type(e).__name__}: {first})") from e
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


# the trainer's wrappers (sinet_tf.train) that its last.keras files hold: what each stage does
_WRAPPER_KINDS = {"DistillModel": ("a distillation", "network"), "TwoViewModel": ("a two-view", "network"),
                  "AuxHeadModel": ("an auxiliary-head", "full_network")}


def _training_wrapper(path: Path) -> tuple[str, str | None] | None:
    """``(stage kind with its article, network name)`` when ``path`` is a ``last.keras`` that holds one of the
    trainer's wrappers (read from the archive's config.json; nothing is deserialized)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None
    if not isinstance(config, dict) or not str(config.get("module", "")).startswith("sinet_tf.train"):
        return None
    kind, key = _WRAPPER_KINDS.get(config.get("class_name"), ("a training", "network"))
    inner = (config.get("config") or {}).get(key)
    name = (inner.get("config") or {}).get("name") if isinstance(inner, dict) else None
    return kind, name


def _with_input_size(model, source, input_size):
    """A ``.keras`` model rebuilt at another input size (same weights), or a clear error."""
    current = tuple(int(d) for d in model.inputs[0].shape[1:3])
    if tuple(input_size) == current:
        return model
    if min(input_size) < 1:
        raise ValueError(f"{source}: input size {input_size[0]}x{input_size[1]}: height and width must be positive")
    try:
        multiple = get_model_info(model.name).input_multiple   # a .keras of a registered architecture
    except KeyError:
        multiple = None
    if multiple and any(v % multiple for v in input_size):
        h, w = input_size
        raise ValueError(f"{source}: input size {h}x{w}: {model.name} takes multiples of {multiple} "
                         f"(e.g. {max(multiple, h // multiple * multiple)}x{max(multiple, w // multiple * multiple)})")
    config = model.get_config()
    for layer in config["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [layer["config"]["batch_shape"][0], *input_size, 3]
    try:
        resized = keras.Model.from_config(config)
        resized.set_weights(model.get_weights())
    except Exception as e:
        first = " ".join(str(e).split())[:300]   # TensorFlow's graph errors run over many lines
        raise ValueError(f"{source}: cannot run at input size {input_size[0]}x{input_size[1]} (it was saved at "
                         f"{current[0]}x{current[1]}): {type(e).__name__}: {first}") from e
    return resized


def _build_preset(preset: Preset, input_size=None):
    """The Keras model of a preset, at its own input size or ``input_size``."""
    if preset.config["weights"] == KERAS_WEIGHTS:
        model = load_keras_model(preset.weights_path)
        for v in model.weights:
            check_finite(np.asarray(v), f"{preset.weights_path}: weight {v.path!r}")
        return model if input_size is None else _with_input_size(model, preset.path, input_size)
    arrays = preset.read_weights()  # read and checked before anything is built
    try:
        get_model_info(preset.architecture)
    except UnknownModelError as e:
        raise PresetError(f"{preset.path / 'config.json'}: architecture: {e}") from None
    size = preset.input_size if input_size is None else tuple(input_size)
    try:
        model = build_model(preset.architecture, input_shape=(*size, 3), num_classes=preset.num_classes,
                            **preset.build_kwargs)
    except TypeError as e:
        raise PresetError(f"{preset.path / 'config.json'}: build_kwargs {preset.build_kwargs} do not fit "
                          f"{preset.architecture!r}: {e}") from None
    assign_weights(model, arrays, str(preset.weights_path))
    return model


def from_preset(name_or_dir: str | os.PathLike, input_size=None):
    """The Keras model of a preset: a bundled name (:func:`sinet_tf.list_presets`) or a
    preset folder (``sinet preset save``), with its weights, at the preset's input size or
    ``input_size`` ``(height, width)``. It takes RGB pixels in [0, 255] (the normalization
    is its first layer)."""
    if input_size is not None:
        input_size = (int(input_size[0]), int(input_size[1]))
    try:
        preset = find_preset(name_or_dir)
    except UnknownPresetError as e:
        if str(name_or_dir) in list_models():
            raise UnknownPresetError(f"{e}; {str(name_or_dir)!r} is an architecture without weights: build it with "
                                     "sinet_tf.build_model, or load it with a checkpoint through "
                                     "sinet_tf.loading.load_model") from None
        raise
    return _build_preset(preset, input_size)


def _unknown_model(name: str) -> UnknownModelError:
    presets, models = list_presets(), list_models()
    close = difflib.get_close_matches(name, models + presets, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownModelError(f"unknown model {name!r}{hint} (presets: {', '.join(presets) or 'none'}; "
                             f"architectures: {', '.join(models)})")


def load_model(source: str | os.PathLike, weights: str | os.PathLike | None = None, input_size=None):
    """A Keras model from a ``.keras`` file, a preset (bundled name or preset folder), or a
    registry name with an optional checkpoint (an official ``.npz``/``.pth``, or a
    ``.weights.h5`` file), at ``input_size`` ``(height, width)`` when given (registry
    names and presets check it against the architecture)."""
    suffix = Path(str(source)).suffix.lower()
    if suffix == ".tflite":
        raise ValueError(f"{source}: a .tflite file is not a Keras model; give a .keras file, a preset or a "
                         "registry name")
    if input_size is not None:
        input_size = (int(input_size[0]), int(input_size[1]))
    preset = None if suffix == ".keras" else resolve_preset(source)
    if preset is not None:
        if weights is not None:
            raise ValueError(f"{source}: a preset carries its own weights; --weights applies to registry names")
        return _build_preset(preset, input_size)
    if suffix == ".keras":
        model = load_keras_model(source)
        if input_size is not None:
            model = _with_input_size(model, source, input_size)
    else:
        if str(source) not in list_models():
            raise _unknown_model(str(source))
        model = build_model(str(source), input_shape=None if input_size is None else (*input_size, 3))
    if weights is not None:
        w = Path(weights)
        if w.name.endswith(".weights.h5"):
            if not w.is_file():
                raise FileNotFoundError(f"weights file not found: {w}")
            model.load_weights(w)
        else:
            load_weights(model, w)
    return model


def _normalization(model) -> str | None:
    layers = [layer for layer in iter_layers(model) if isinstance(layer, InputNormalization)]
    return layers[0].preset if layers else None


def _same_network(model, architecture: str | None, build_kwargs: dict) -> bool:
    """Whether building ``architecture`` with ``build_kwargs`` at the model's input size
    gives exactly ``model``'s network (same configuration of every layer), so that its
    weights alone, by path, make it again."""
    if architecture not in list_models():
        return False
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    try:
        rebuilt = build_model(architecture, input_shape=shape, num_classes=int(model.outputs[0].shape[-1]),
                              **build_kwargs)
    except Exception:  # kwargs of another version of the builder, a size it refuses: keep the .keras
        return False
    as_json = lambda m: json.dumps(m.get_config(), sort_keys=True, default=str)  # noqa: E731
    return as_json(rebuilt) == as_json(model) and [v.path for v in rebuilt.weights] == [v.path for v in model.weights]


def save_preset(source: str | os.PathLike, out_dir: str | os.PathLike, name: str | None = None,
                description: str | None = None, source_text: str | None = None, license: str | None = None,
                license_file: str | os.PathLike | None = None, metrics: dict | None = None) -> Path:
    """Make a preset folder of a training run (``sinet train -o RUN_DIR``: the last stage's
    ``best.keras``, its architecture and input size from the recipe, its history and best
    validation person IoU) or of a ``.keras`` file.

    The weights are stored as ``weights.npz`` when the registry builds exactly this network
    again (the same configuration of every layer), otherwise the ``.keras`` file itself is
    stored. ``metrics`` (e.g. :func:`sinet_tf.presets.metrics_from_evaluation`) replaces the
    run's. Returns the folder."""
    path = Path(source)
    info = {"architecture": None, "build_kwargs": {}, "history": None, "metrics": {}}
    if path.is_dir():
        info = run_info(path)
        keras_file = info["best"]
        origin = f"sinet train run {path.resolve().name} (stage {info['stage']!r})"
    elif path.suffix == ".keras":
        keras_file = path
        origin = f"Keras model {path.name}"
    else:
        raise ValueError(f"{source}: give a training run folder (sinet train -o DIR) or a .keras file")
    model = load_keras_model(keras_file)
    weights = weights_of(model)
    for key, a in weights.items():
        check_finite(a, f"{keras_file}: weight {key!r}")
    architecture = info["architecture"] or (model.name if model.name in list_models() else None)
    exact = _same_network(model, architecture, info["build_kwargs"])
    out_dir = Path(out_dir)
    config = {"name": name or out_dir.name,
              "description": description or f"{architecture or model.name} from {origin}",
              "architecture": architecture or model.name, "build_kwargs": info["build_kwargs"],
              "input_size": [int(d) for d in model.inputs[0].shape[1:3]],
              "num_classes": int(model.outputs[0].shape[-1]), "normalization": _normalization(model),
              "source": source_text or origin, "license": license,
              "metrics": metrics if metrics is not None else info["metrics"]}
    if exact:
        return write_preset(out_dir, config, weights=weights, license_file=license_file,
                            history_file=info["history"])
    with tempfile.TemporaryDirectory() as tmp:  # re-saved, so the preset holds only the network
        keras_copy = Path(tmp) / KERAS_WEIGHTS
        model.save(keras_copy)
        return write_preset(out_dir, config, keras_file=keras_copy, license_file=license_file,
                            history_file=info["history"])
