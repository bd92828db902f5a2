"""Presets: a network's weights together with what it takes to run them, by name or folder.

A preset is a folder::

    config.json    what the network is and where its weights come from (below)
    weights.npz    one array per Keras weight, keyed by the weight's path ("layer/kernel");
                   or model.keras, a whole Keras model (loaded in Keras' safe mode)
    LICENSE        the weights' licence text, when they come with one
    history.csv    the training history, for a preset made from a training run

``config.json`` holds ``format`` (``"sinet-tf preset"``), ``format_version``, ``name``,
``architecture`` (a registry name) with its ``build_kwargs``, ``input_size`` ``[h, w]``,
``num_classes``, ``normalization`` (the input-normalization preset inside the network: it
takes RGB pixels in [0, 255]), ``weights`` (the weights file's name), ``source``,
``license`` and ``license_file``, ``description``, and ``metrics`` (a measured validation
person IoU, with the data, split and how it was measured), each as far as it is known.

The presets bundled with the package live in ``sinet_tf/assets/presets/<name>/``. Nothing
here reads a pickle: ``.npz`` arrays are read with ``allow_pickle=False``, and weights that
are missing, of the wrong shape or not finite are refused with a one-line error naming the
file and the weight. This module reads and writes preset folders without TensorFlow;
:func:`sinet_tf.loading.from_preset` turns one into a Keras model.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FORMAT", "FORMAT_VERSION", "PresetError", "UnknownPresetError", "Preset", "BUNDLED_DIR",
           "list_presets", "find_preset", "resolve_preset", "weights_of", "assign_weights", "write_preset",
           "run_info", "metrics_from_evaluation"]

FORMAT = "sinet-tf preset"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
NPZ_WEIGHTS = "weights.npz"
KERAS_WEIGHTS = "model.keras"
BUNDLED_DIR = Path(__file__).resolve().parent / "assets" / "presets"


class PresetError(ValueError):
    """A preset folder that cannot be used (names the file and what is wrong with it)."""


class UnknownPresetError(KeyError):
    """A preset name that is neither bundled nor a folder; the message suggests close names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


@dataclass(frozen=True)
class Preset:
    """A preset folder whose ``config.json`` has been read and checked (the weights are read
    by :meth:`read_weights`, when the network is built)."""

    name: str
    path: Path
    config: dict
    bundled: bool = False

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    @property
    def build_kwargs(self) -> dict:
        return dict(self.config.get("build_kwargs") or {})

    @property
    def input_size(self) -> tuple[int, int]:
        h, w = self.config["input_size"]
        return int(h), int(w)

    @property
    def num_classes(self) -> int | None:
        n = self.config.get("num_classes")
        return None if n is None else int(n)

    @property
    def weights_path(self) -> Path:
        return self.path / self.config["weights"]

    @property
    def metrics(self) -> dict:
        return dict(self.config.get("metrics") or {})

    def read_weights(self) -> dict[str, np.ndarray]:
        """The arrays of ``weights.npz`` by weight path, each checked to be a finite float array."""
        path = self.weights_path
        if not path.is_file():
            raise PresetError(f"{path}: the weights file named in {self.path / CONFIG_FILE} is missing")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
        except Exception as e:  # zipfile.BadZipFile, ValueError (object arrays need pickle), OSError
            raise PresetError(f"{path}: not a readable .npz of weight arrays ({type(e).__name__}: {e})") from None
        if not arrays:
            raise PresetError(f"{path}: holds no weights")
        for key, a in arrays.items():
            check_finite(a, f"{path}: weight {key!r}")
        return arrays

    def summary(self) -> dict:
        """One row of ``sinet models --presets``."""
        c = self.config
        m = self.metrics
        return {"name": self.name, "architecture": self.architecture, "input_size": list(self.input_size),
                "num_classes": self.num_classes, "normalization": c.get("normalization"),
                "source": c.get("source"), "license": c.get("license"),
                "val_person_iou": m.get("person_iou"), "val_data": m.get("data"), "val_split": m.get("split"),
                "bundled": self.bundled, "path": str(self.path), "description": c.get("description", "")}


def check_finite(a: np.ndarray, what: str) -> None:
    """Refuse a weight array that is not numeric or holds NaN or infinity."""
    if a.dtype.kind not in "fiub":
        raise PresetError(f"{what} has dtype {a.dtype}, not a number")
    if a.dtype.kind == "f":
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise PresetError(f"{what} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN or infinity); "
                              "the preset is broken, remake it from a good model")


def list_presets() -> list[str]:
    """Names of the presets bundled with the package, sorted."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / CONFIG_FILE).is_file())


def _read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        hint = (" (it is a training run: make a preset of it with `sinet preset save RUN_DIR OUT_DIR`)"
                if (folder / "state.json").is_file() else "")
        raise PresetError(f"{folder}: not a preset folder, it has no {CONFIG_FILE}{hint}")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PresetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PresetError(f"{path}: not a preset config (its \"format\" must be {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PresetError(f"{path}: format_version {version!r} is not one this sinet-tf reads "
                          f"(up to {FORMAT_VERSION}); a newer sinet-tf wrote it?")
    for key, kind in (("architecture", str), ("input_size", list), ("weights", str)):
        if not isinstance(config.get(key), kind):
            raise PresetError(f"{path}: {key!r} is missing or not a {kind.__name__}")
    size = config["input_size"]
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise PresetError(f"{path}: input_size {size!r} is not [height, width]")
    weights = config["weights"]
    if weights not in (NPZ_WEIGHTS, KERAS_WEIGHTS):
        raise PresetError(f"{path}: weights {weights!r}: expected {NPZ_WEIGHTS!r} or {KERAS_WEIGHTS!r}")
    if not isinstance(config.get("build_kwargs", {}), dict) or not isinstance(config.get("metrics", {}), dict):
        raise PresetError(f"{path}: build_kwargs and metrics must be JSON objects")
    return config


def _is_path_like(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith(("~", "."))


def resolve_preset(source) -> Preset | None:
    """The preset ``source`` names, or ``None`` when it names none.

    A bundled name comes first; then a folder: any existing folder given as a path (with a
    ``/``, or starting with ``.`` or ``~``), or a folder named by a bare word that holds a
    ``config.json`` (so a registry name is not taken for a folder of the same name in the
    current directory; write ``./NAME`` for that folder). A path-like source that does not
    exist and has no file suffix is reported as a missing preset folder.
    """
    text = str(source)
    if text in list_presets():
        folder = BUNDLED_DIR / text
        return Preset(name=text, path=folder, config=_read_config(folder), bundled=True)
    folder = Path(text).expanduser()
    if folder.is_dir() and (_is_path_like(text) or (folder / CONFIG_FILE).is_file()):
        config = _read_config(folder)
        return Preset(name=str(config.get("name") or folder.resolve().name), path=folder, config=config)
    if _is_path_like(text) and not folder.exists() and not folder.suffix:
        raise FileNotFoundError(f"preset folder not found: {text}")
    return None


def find_preset(name_or_dir) -> Preset:
    """The bundled preset of that name, or the preset folder at that path; an unknown name
    gets :class:`UnknownPresetError` with the closest bundled names."""
    preset = resolve_preset(name_or_dir)
    if preset is None:
        names = list_presets()
        close = difflib.get_close_matches(str(name_or_dir), names, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownPresetError(f"unknown preset {str(name_or_dir)!r}{hint} (bundled: {', '.join(names) or 'none'}; "
                                 "or give a preset folder)")
    return preset


def weights_of(model) -> dict[str, np.ndarray]:
    """Every weight of a Keras model by its path (``"layer/kernel"``)."""
    out = {}
    for v in model.weights:
        if v.path in out:
            raise PresetError(f"model {model.name!r}: two weights share the path {v.path!r}")
        out[v.path] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
    return out


def assign_weights(model, arrays: dict[str, np.ndarray], source: str) -> None:
    """Set every weight of ``model`` from ``arrays`` (by path); nothing is assigned unless
    every weight is there with its shape and no array is left over."""
    plan = []
    for v in model.weights:
        if v.path not in arrays:
            raise PresetError(f"{source}: no array for weight {v.path!r} of {model.name!r}; "
                              "were these weights made for another architecture or width?")
        a = arrays[v.path]
        if tuple(a.shape) != tuple(v.shape):
            raise PresetError(f"{source}: weight {v.path!r} has shape {tuple(a.shape)} but {model.name!r} needs "
                              f"{tuple(v.shape)}; were these weights made for another architecture or width?")
        plan.append((v, a))
    unused = sorted(set(arrays) - {v.path for v in model.weights})
    if unused:
        raise PresetError(f"{source}: {len(unused)} arrays are not weights of {model.name!r}, first {unused[0]!r}")
    for v, a in plan:
        v.assign(a.astype(v.dtype) if hasattr(a, "astype") else a)


def _write_folder(out_dir: Path, fill) -> Path:
    """Make ``out_dir`` atomically: ``fill(tmp)`` writes into a temporary folder beside it,
    which is then renamed into place. An existing preset folder is replaced (it is moved
    aside until the new one is in place); any other existing non-empty folder is refused."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise PresetError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / CONFIG_FILE).is_file():
            raise PresetError(f"{out_dir}: exists and is not a preset folder; choose a new or empty folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.partial-"))
    old = None
    try:
        fill(tmp)
        os.chmod(tmp, 0o777 & ~_umask())
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.old-"))
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    except BaseException:
        if old is not None and old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_preset(out_dir, config: dict, weights: dict[str, np.ndarray] | None = None,
                 keras_file: str | os.PathLike | None = None, license_file: str | os.PathLike | None = None,
                 history_file: str | os.PathLike | None = None) -> Path:
    """Write a preset folder: ``config.json`` plus the weights, either ``weights`` (arrays by
    weight path, written to ``weights.npz``) or a copy of ``keras_file`` (``model.keras``),
    and copies of ``license_file`` (``LICENSE``) and ``history_file`` (``history.csv``).
    ``config`` is completed with ``format``, ``format_version`` and ``weights``; the arrays
    are checked to be finite first."""
    if (weights is None) == (keras_file is None):
        raise ValueError("write_preset: give either weights (arrays) or keras_file")
    for key, a in (weights or {}).items():
        check_finite(np.asarray(a), f"weight {key!r}")
    for f in (keras_file, license_file, history_file):
        if f is not None and not Path(f).is_file():
            raise FileNotFoundError(f"file not found: {f}")
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **config,
              "weights": NPZ_WEIGHTS if weights is not None else KERAS_WEIGHTS}
    if license_file is not None:
        config["license_file"] = "LICENSE"

    def fill(tmp: Path):
        if weights is not None:
            # np.savez_compressed sorts nothing and stores plain arrays (no pickle)
            np.savez_compressed(tmp / NPZ_WEIGHTS, **{k: np.asarray(v) for k, v in weights.items()})
        else:
            shutil.copyfile(keras_file, tmp / KERAS_WEIGHTS)
        if license_file is not None:
            shutil.copyfile(license_file, tmp / "LICENSE")
        if history_file is not None:
            shutil.copyfile(history_file, tmp / "history.csv")
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())

    return _write_folder(Path(out_dir), fill)


def metrics_from_evaluation(path: str | os.PathLike) -> dict:
    """The ``metrics`` entry of a preset from a ``sinet evaluate --json`` output file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    try:
        result = json.loads(path.read_text())
        iou = float(result["person_iou"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PresetError(f"{path}: not the JSON output of `sinet evaluate --json` ({type(e).__name__}: {e})") \
            from None
    out = {"data": Path(str(result.get("data", ""))).name or None, "split": result.get("split"),
           "person_iou": round(iou, 4), "n_images": result.get("n_images"),
           "measured_with": "sinet evaluate (each photo resized to the input, mean of per-image person IoU)"}
    for key in ("miou", "pixel_accuracy", "boundary_f"):
        if key in result:
            out[key] = round(float(result[key]), 4)
    return out


def _read_history(path: Path) -> list[dict]:
    try:
        with open(path, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error) as e:
        raise PresetError(f"{path}: not a readable training history ({e})") from None


def run_info(run_dir: str | os.PathLike) -> dict:
    """What a training run folder (``sinet train -o RUN_DIR``) says about its final network:
    ``best`` (its ``best.keras``), ``architecture``, ``build_kwargs``, ``input_size``,
    ``history`` (its ``history.csv``, or None) and ``metrics`` (the best validation person
    IoU in the history, with its epoch, data and split)."""
    run_dir = Path(run_dir)
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        raise PresetError(f"{run_dir}: not a training run folder (no state.json)")
    try:
        state = json.loads(state_path.read_text())
        config = state["config"]
        stages = config["stages"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise PresetError(f"{state_path}: not the state of a training run ({type(e).__name__}: {e})") from None
    done = [s for s in stages if (run_dir / s["name"] / "best.keras").is_file()]
    if not done:
        raise PresetError(f"{run_dir}: no stage has a best.keras yet (train at least one epoch)")
    stage = done[-1]
    best = run_dir / stage["name"] / "best.keras"
    history_path = run_dir / stage["name"] / "history.csv"
    history = _read_history(history_path) if history_path.is_file() else []
    scored = [r for r in history if isinstance(r.get("val_person_iou"), float) and math.isfinite(r["val_person_iou"])]
    metrics = {}
    if scored:
        top = max(scored, key=lambda r: r["val_person_iou"])
        data = config.get("val_data") or config.get("data")
        metrics = {"data": Path(str(data)).name if data else None, "split": config.get("val_split"),
                   "person_iou": round(top["val_person_iou"], 4), "epoch": int(top["epoch"]),
                   "measured_with": f"validation during sinet train (stage {stage['name']!r}, at the input size)"}
    return {"best": best, "stage": stage["name"], "architecture": stage.get("model"),
            "build_kwargs": dict(stage.get("model_kwargs") or {}), "input_size": list(stage.get("input_size") or []),
            "history": history_path if history_path.is_file() else None, "metrics": metrics}
