"""Importers for published PyTorch checkpoints (official SINet and ExtremeC3Net).

Model layers are named after the checkpoint's ``state_dict`` prefixes, so a checkpoint
maps onto a model by name; each layer type knows how PyTorch lays out its tensors.
Nothing is downloaded: checkpoints come from a path the user gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np

from sinet_tf.layers.s2 import GroupedPointwiseConv
from sinet_tf.model_cost import iter_layers
from sinet_tf.registry import build_model

__all__ = ["WeightImportError", "read_state_dict", "assign_state_dict", "load_weights", "import_official"]

OFFICIAL_ARCHITECTURES = {"sinet": "sinet", "extremec3net": "extremec3net"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


class WeightImportError(ValueError):
    """A checkpoint that does not fit the model (names the tensor and both shapes)."""


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint into ``{name: array}``: ``.npz`` (one array per key) or a PyTorch
    ``.pth``/``.pt`` (needs PyTorch; loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with open(path, "rb") as f:
            head = f.read(512)
        if not head.startswith(b"PK"):   # an .npz is a zip archive of .npy arrays
            raise WeightImportError(f"{path}: not an .npz checkpoint (an .npz is a zip archive of arrays); "
                                    + _what_it_is(head))
        try:
            with np.load(path, allow_pickle=False) as data:
                sd = {k: np.asarray(data[k]) for k in data.files}
        except Exception as e:  # zipfile.BadZipFile, ValueError, OSError
            raise WeightImportError(f"{path}: not a readable .npz checkpoint ({e})") from e
    elif suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise WeightImportError(
                f"{path}: reading a PyTorch checkpoint needs PyTorch, which is not installed. "
                "Install it with `pip install torch` (a CPU build is enough), or pass the .npz export "
                "of the same state_dict instead.") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise WeightImportError(f"{path}: torch.load(weights_only=True) failed: {e}") from e
        if isinstance(obj, dict) and not any(hasattr(v, "shape") for v in obj.values()):
            obj = obj.get("state_dict", obj.get("model", obj))
        if not isinstance(obj, dict):
            raise WeightImportError(f"{path}: expected a state_dict (a mapping of tensors), got {type(obj).__name__}")
        sd = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    else:
        raise WeightImportError(f"{path}: unknown checkpoint format {suffix!r} (expected .npz, .pth or .pt)")
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()
          if not k.endswith(_IGNORED_SUFFIXES)}
    if not sd:
        raise WeightImportError(f"{path}: the checkpoint holds no tensors")
    return sd


def _what_it_is(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"it is a text file starting with {head[:40].decode('ascii')!r}"
    return f"it starts with the bytes {head[:8].hex(' ')}"


def _conv_kernel(t, target_shape):
    if t.ndim == 2:  # nn.Linear [out, in] used as a 1x1 conv
        t = t[:, :, None, None]
    return t.transpose(2, 3, 1, 0)


def _depthwise_kernel(t, target_shape):
    # PyTorch [c * m, 1, kh, kw] -> Keras [kh, kw, c, m]
    kh, kw, c, m = target_shape
    return t.reshape(c, m, kh, kw).transpose(2, 3, 0, 1)


def _vector(t, target_shape):
    return t.reshape(target_shape)


def _layer_tensors(layer):
    """``[(variable, checkpoint key, converter)]`` for one Keras layer."""
    n = layer.name
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        out = [(layer.kernel, f"{n}.weight", _depthwise_kernel)]
        return out + ([(layer.bias, f"{n}.bias", _vector)] if layer.use_bias else [])
    if isinstance(layer, (keras.layers.Conv2D, GroupedPointwiseConv)):
        out = [(layer.kernel, f"{n}.weight", _conv_kernel)]
        return out + ([(layer.bias, f"{n}.bias", _vector)] if layer.use_bias else [])
    if isinstance(layer, keras.layers.BatchNormalization):
        return [(layer.gamma, f"{n}.weight", _vector), (layer.beta, f"{n}.bias", _vector),
                (layer.moving_mean, f"{n}.running_mean", _vector),
                (layer.moving_variance, f"{n}.running_var", _vector)]
    if isinstance(layer, keras.layers.PReLU):
        return [(layer.alpha, f"{n}.weight", _vector)]
    if layer.weights:
        raise WeightImportError(f"layer {n!r} ({type(layer).__name__}) has no PyTorch weight mapping")
    return []


def assign_state_dict(model: keras.Model, state_dict: dict[str, np.ndarray], strict: bool = True,
                      source: str = "checkpoint", allow_missing: bool = False) -> list[str]:
    """Copy a PyTorch ``state_dict`` into ``model`` by layer name.

    Every weight of the model must be found with a compatible shape (the error names the
    first mismatching tensor and both shapes) and hold only finite values (a NaN or inf
    would run and predict garbage without an error). With ``strict`` the checkpoint may
    not hold tensors the model does not use. ``allow_missing`` (for starting a variant
    of the checkpoint's network, e.g. ``sinet_fast`` from the official SINet) lets layers
    that have no tensor at all in the checkpoint keep their initialization; a layer the
    checkpoint holds only part of is still an error, and so is a checkpoint that fits no
    layer. Returns the names of the layers left as they were (empty unless
    ``allow_missing``). Nothing is assigned unless every tensor fits.
    """
    sd = dict(state_dict)
    names = [layer.name for layer in iter_layers(model)]
    if "encoder.level1.conv" in names and "encoder.level1.conv.weight" not in sd and "level1.conv.weight" in sd:
        sd = {f"encoder.{k}": v for k, v in sd.items()}  # a stage-1 encoder saved on its own
    plan, kept = [], []
    for layer in iter_layers(model):
        tensors = _layer_tensors(layer)
        if allow_missing and tensors and not any(key in sd for _, key, _ in tensors):
            kept.append(layer.name)
            continue
        for var, key, convert in tensors:
            if key not in sd:
                close = [k for k in sd if k.rsplit(".", 1)[0] == layer.name]
                hint = f" (it has {', '.join(close)})" if close else ""
                raise WeightImportError(
                    f"{source}: tensor {key!r} needed by layer {layer.name!r} of model {model.name!r} "
                    f"is missing{hint}; is this a checkpoint of another architecture?")
            target = tuple(var.shape)
            try:
                t = np.asarray(sd[key], dtype=np.float32)
            except (TypeError, ValueError):
                raise WeightImportError(f"{source}: tensor {key!r} is not numeric ({np.asarray(sd[key]).dtype})"
                                        ) from None
            if not np.isfinite(t).all():
                raise WeightImportError(
                    f"{source}: tensor {key!r} holds {int((~np.isfinite(t)).sum())} non-finite values (NaN or inf) "
                    f"of {t.size}; the checkpoint is damaged or comes from a run that diverged")
            try:
                value = convert(t, target)
            except ValueError:
                value = None
            if value is None or tuple(value.shape) != target:
                raise WeightImportError(
                    f"{source}: tensor {key!r} has shape {tuple(t.shape)} in the checkpoint but layer "
                    f"{layer.name!r} of model {model.name!r} needs {target} (Keras layout); "
                    "is this a checkpoint of another architecture or width?")
            plan.append((var, value, key))
    if not plan:
        raise WeightImportError(f"{source}: no tensor of the checkpoint fits a layer of model {model.name!r} "
                                "(no layer name in common); is this a checkpoint of another architecture?")
    used = {k for _, _, k in plan}
    unused = sorted(set(sd) - used)
    if strict and unused:
        raise WeightImportError(
            f"{source}: {len(unused)} checkpoint tensors are not used by model {model.name!r}, "
            f"first {unused[0]!r}; pass strict=False to ignore them")
    for var, value, _ in plan:
        var.assign(value)
    return kept


def load_weights(model: keras.Model, path: str | os.PathLike, strict: bool = True) -> keras.Model:
    """Load a PyTorch checkpoint (``.npz``/``.pth``) into ``model``; returns the model."""
    assign_state_dict(model, read_state_dict(path), strict=strict, source=str(path))
    return model


def import_official(architecture: str, path: str | os.PathLike, **build_kwargs) -> keras.Model:
    """Build ``sinet`` or ``extremec3net`` and load the official checkpoint at ``path``."""
    if architecture not in OFFICIAL_ARCHITECTURES:
        raise ValueError(f"no official checkpoint importer for {architecture!r}; "
                         f"choose one of {', '.join(OFFICIAL_ARCHITECTURES)}")
    model = build_model(OFFICIAL_ARCHITECTURES[architecture], **build_kwargs)
    return load_weights(model, path)
