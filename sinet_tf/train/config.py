"""Training recipes: YAML files in ``training/``, validated into dataclasses.

A recipe names a model, data, the optimizer and schedule, the loss, augmentation and
one or more *stages* (SINet trains its encoder first, then the whole network initialized
from the best encoder). Keys given at the top level apply to every stage; a stage
overrides them. Unknown keys are errors that name the key and suggest the closest one.

Every value is checked for its type and range before anything is built (``learning_rate``
a number > 0, ``batch_size`` and ``epochs`` whole numbers >= 1, ``input_size`` a pair of
positive multiples of the model's ``input_multiple``, ...): an error names the file, the
stage where it matters, the key and the value, e.g.
``training/x.yaml: learning_rate: 'fast' is not a number``. Numbers written the YAML 1.1
way PyYAML reads as text (``5e-4``) are accepted as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sinet_tf.data.augment import PortraitNetAugmentation
from sinet_tf.losses import build_loss
from sinet_tf.registry import get_model_info
from sinet_tf.train.distill import check_stage, has_kd_term

__all__ = ["StageConfig", "TrainConfig", "RecipeError", "load_recipe", "parse_override", "RECIPE_DIR"]

RECIPE_DIR = Path(__file__).resolve().parents[2] / "training"


class RecipeError(ValueError):
    """A recipe that cannot be trained (names the file and the key)."""


@dataclass
class StageConfig:
    name: str = "train"
    model: str = "sinet"
    model_kwargs: dict = field(default_factory=dict)
    input_size: tuple[int, int] = (224, 224)
    epochs: int = 300
    batch_size: int = 24
    learning_rate: float = 5e-4
    optimizer: str = "adam"                        # adam, or sgd (with momentum; PSPNet)
    momentum: float = 0.9                          # sgd only
    lr_schedule: str = "step"                      # step (the three keys below) or poly
    lr_milestones: tuple[int, ...] = (150, 250)   # epochs at which the learning rate is multiplied by lr_factor
    lr_factor: float = 0.5
    lr_step_every: int | None = None               # also multiply by lr_factor every N epochs (PortraitNet: 20)
    lr_power: float = 0.9                          # poly: lr * (1 - step / total_steps) ** lr_power
    weight_decay: float = 2e-4                     # coupled L2 (PyTorch's / Caffe's weight_decay)
    weight_decay_exclude: tuple[str, ...] = ("depthwise_kernel",)
    ema: float = 0.0                               # >0: validate and keep as best the weights' moving average (Polyak)
    loss: Any = "ce"
    label_stride: int = 1                          # 8 for SINet's 1/8 encoder stage
    augment: Any = True                            # true (PortraitNet's spec), false, or a mapping of spec fields
    backend: str = "tf"
    two_views: bool = False                        # PortraitNet's two-view training (train/two_view.py)
    consistency_weight: float = 2.0                # two-view only: alpha of the consistency loss
    temperature: float = 1.0                       # two-view only: softening temperature T
    edge_weight: float = 0.1                       # two-view only: beta of the boundary focal loss (edge head)
    aux_weight: float = 0.0                        # weight of the aux_logits output's loss (PSPNet: 0.4)
    init: str | None = None                        # checkpoint (.npz/.pth/.keras) or "stage:<name>" (its best)
    init_strict: bool = False                      # false: checkpoint tensors the model lacks are ignored and
    #   layers the checkpoint lacks entirely keep their initialization (both are errors when true)
    early_stopping_patience: int | None = None
    jit_compile: Any = False
    run_eagerly: bool = False                      # debugging / tiny test runs (no graph tracing)
    lr_multipliers: dict = field(default_factory=dict)   # {weight-path pattern: factor} (train/param_groups.py)
    teacher: str | None = None                     # distillation (train/distill.py): init, .keras, .tflite or preset
    teacher_resize: bool = False                   # resize the batch to a teacher of another input size
    teacher_input_range: tuple[float, float] | None = None   # .tflite teacher's pixel range (default: its own)
    seed_offset: int = 0                           # this stage's data order and augmentation: seed + seed_offset
    average_of: tuple[str, ...] = ()               # a stage that trains nothing: the uniform average of these
    #   earlier stages' best networks (a model soup), validated once (train/wise_ft.py: average_weights)


@dataclass
class TrainConfig:
    stages: list[StageConfig]
    data: str = "synthetic"
    val_data: str | None = None                    # default: the "val" split of `data`
    train_split: str | None = "train"
    val_split: str | None = "val"
    seed: int = 0
    mixed_precision: Any = "auto"                  # auto: on when a GPU is present
    strategy: str = "default"
    on_bad_sample: str = "raise"
    extra_data: str | None = None                  # more training examples (a dataset or synthetic:N), after `data`'s
    copy_paste: int = 0                            # copy-paste composites appended to the training set (data/composite.py)
    recipe: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- typed values


class _Invalid(ValueError):
    """A value of the wrong type or out of range (the message follows ``key: ``)."""


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _as_number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(f"{_show(value)} is not a number")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Invalid(f"{_show(value)} is not a number") from None
    if not math.isfinite(value):
        raise _Invalid(f"{_show(value)} is not a finite number")
    return float(value)


def _number(gt=None, ge=None, lt=None, le=None):
    def check(value):
        v = _as_number(value)
        for bound, ok, word in ((gt, lambda: v > gt, ">"), (ge, lambda: v >= ge, ">="),
                                (lt, lambda: v < lt, "<"), (le, lambda: v <= le, "<=")):
            if bound is not None and not ok():
                raise _Invalid(f"{_show(value)} must be {word} {bound:g}")
        return v
    return check


def _as_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not (math.isfinite(value) and value.is_integer())):
        raise _Invalid(f"{_show(value)} is not a whole number")
    return int(value)


def _integer(ge=None):
    def check(value):
        v = _as_int(value)
        if ge is not None and v < ge:
            raise _Invalid(f"{_show(value)} must be >= {ge}")
        return v
    return check


def _optional(inner):
    def check(value):
        return None if value is None else inner(value)
    return check


def _boolean(value):
    if not isinstance(value, bool):
        raise _Invalid(f"{_show(value)} is not true or false")
    return value


def _text(value):
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"{_show(value)} is not a non-empty text")
    return value


def _path(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)   # a folder named by digits
    return _text(value)


def _choice(*options):
    def check(value):
        if value not in options or isinstance(value, bool) != any(isinstance(o, bool) and o == value
                                                                    for o in options):
            raise _Invalid(f"{_show(value)} is not one of {', '.join(_show(o) for o in options)}")
        return value
    return check


def _mapping(value):
    if not isinstance(value, dict):
        raise _Invalid(f"{_show(value)} is not a mapping of keys")
    return value


def _int_list(ge=1):
    def check(value):
        if not isinstance(value, (list, tuple)):
            raise _Invalid(f"{_show(value)} is not a list (write [{_show(value)}])")
        try:
            return tuple(_integer(ge)(v) for v in value)
        except _Invalid as e:
            raise _Invalid(f"{_show(list(value))}: {e}") from None
    return check


def _text_list(value):
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _Invalid(f"{_show(value)} is not a list of texts")
    return tuple(value)


def _input_size(value):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        hint = f" (write [{value}, {value}])" if isinstance(value, int) and not isinstance(value, bool) else ""
        raise _Invalid(f"{_show(value)} is not a pair [height, width]{hint}")
    try:
        return tuple(_integer(1)(v) for v in value)
    except _Invalid as e:
        raise _Invalid(f"{_show(list(value))}: {e}") from None


def _value_range(value):
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Invalid(f"{_show(value)} is not a pair [low, high]")
    low, high = (_number()(v) for v in value)
    if not low < high:
        raise _Invalid(f"{_show(list(value))}: low must be below high")
    return (low, high)


def _augment(value):
    if isinstance(value, (bool, dict)):
        return value
    raise _Invalid(f"{_show(value)} is not true, false or a mapping of augmentation parameters")


def _loss(value):
    if isinstance(value, (str, dict, list)) and value:
        return value
    raise _Invalid(f"{_show(value)} is not a loss spec (e.g. \"ce + 1.0 * boundary(window=15)\")")


_STAGE_TYPES = {
    "name": _text, "model": _text, "model_kwargs": _mapping, "input_size": _input_size,
    "epochs": _integer(1), "batch_size": _integer(1), "learning_rate": _number(gt=0),
    "optimizer": _choice("adam", "sgd"), "momentum": _number(ge=0, lt=1),
    "lr_schedule": _choice("step", "poly"), "lr_milestones": _int_list(1), "lr_factor": _number(gt=0),
    "lr_step_every": _optional(_integer(1)), "lr_power": _number(gt=0), "weight_decay": _number(ge=0),
    "weight_decay_exclude": _text_list, "ema": _number(ge=0, lt=1), "loss": _loss, "label_stride": _integer(1), "augment": _augment,
    "backend": _choice("tf", "imgaug"), "two_views": _boolean, "consistency_weight": _number(ge=0),
    "temperature": _number(gt=0), "edge_weight": _number(ge=0), "aux_weight": _number(ge=0),
    "init": _optional(_text), "init_strict": _boolean, "early_stopping_patience": _optional(_integer(1)),
    "jit_compile": _choice(True, False, "auto"), "run_eagerly": _boolean,
    "lr_multipliers": _mapping, "teacher": _optional(_text), "teacher_resize": _boolean,
    "teacher_input_range": _optional(_value_range), "seed_offset": _integer(0), "average_of": _text_list,
}
_TOP_TYPES = {
    "data": _path, "val_data": _optional(_path), "train_split": _optional(_text), "val_split": _optional(_text),
    "seed": _integer(0), "mixed_precision": _choice("auto", True, False, "on", "off", "mixed_float16"),
    "strategy": _choice("default", "mirrored", "multiworker", "tpu"), "on_bad_sample": _choice("raise", "skip"),
    "extra_data": _optional(_text), "copy_paste": _integer(0),
}


def _typed(values: dict, types: dict, where: str, overridden: set) -> dict:
    """``values`` with every known key checked and converted; RecipeError names the key."""
    out = dict(values)
    for key, value in values.items():
        if key in types:
            try:
                out[key] = types[key](value)
            except _Invalid as e:
                origin = " (set on the command line)" if key in overridden else ""
                raise RecipeError(f"{where}{key}: {e}{origin}") from None
    return out


_STAGE_KEYS = {f.name for f in fields(StageConfig)}
_TOP_KEYS = {f.name for f in fields(TrainConfig)} - {"stages", "recipe"}


def _suggest(key, valid):
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _check_average(stage: StageConfig, earlier: list[StageConfig], own: dict, where: str) -> None:
    """An ``average_of`` stage names at least two distinct earlier stages that build its
    architecture, and sets nothing that only training reads (it runs one validation pass,
    its one epoch)."""
    names = list(stage.average_of)
    by_name = {s.name: s for s in earlier}
    if len(names) < 2 or len(set(names)) != len(names):
        raise RecipeError(f"{where}average_of: {names} must name at least two different stages")
    for name in names:
        if name not in by_name:
            raise RecipeError(f"{where}average_of: {name!r} is not an earlier stage "
                              f"({', '.join(by_name) or 'none'})")
        other = by_name[name]
        if (other.model, other.model_kwargs) != (stage.model, stage.model_kwargs):
            raise RecipeError(f"{where}average_of: stage {name!r} builds {other.model} {other.model_kwargs or ''}"
                              f" and this stage {stage.model} {stage.model_kwargs or ''}: averaging needs one "
                              "architecture")
    for key in ("init", "teacher", "epochs"):
        if key in own:
            raise RecipeError(f"{where}{key}: an average_of stage trains nothing (its weights are the average "
                              "of the named stages' best networks); remove the key")
    if stage.teacher or has_kd_term(stage.loss) or stage.two_views or stage.aux_weight:
        raise RecipeError(f"{where}average_of: validation scores the plain network; set this stage's loss "
                          "without kd (e.g. \"ce\") and no teacher, two_views or aux_weight")
    stage.epochs = 1


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``epochs=2``, ``loss="ce + dice"``,
    ``input_size=[128,128]``); ``stage.key=value`` targets one stage by name."""
    if "=" not in text:
        raise RecipeError(f"override {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load_recipe(path: str | Path, overrides: list[str] | dict | None = None, data: str | None = None) -> TrainConfig:
    """Read and validate a recipe; ``overrides`` (``key=value`` strings) and ``data`` win over the file."""
    path = Path(path)
    if not path.is_file():
        candidate = RECIPE_DIR / path.name
        if candidate.is_file():
            path = candidate
        else:
            known = sorted(p.name for p in RECIPE_DIR.glob("*.yaml")) if RECIPE_DIR.is_dir() else []
            raise RecipeError(f"recipe not found: {path} (recipes in training/: {', '.join(known) or 'none'})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (a recipe is YAML text)") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    stage_list = raw["stages"] if isinstance(raw.get("stages"), list) else []
    stage_names = [s.get("name") for s in stage_list if isinstance(s, dict)]
    for key, value in items:
        head, _, rest = key.partition(".")
        if rest and head in stage_names:
            raw["stages"][stage_names.index(head)][rest] = value
        else:
            raw[key] = value
            # a top-level override wins over the same key written inside a stage
            for st in stage_list:
                if isinstance(st, dict) and key in st:
                    st[key] = value
    if data is not None:
        raw["data"] = data

    overridden = {key.partition(".")[2] or key for key, _ in items} | ({"data"} if data is not None else set())
    has_stages = "stages" in raw
    stages_raw = raw.pop("stages", None) or [{"name": "train"}]
    if not isinstance(stages_raw, list):
        raise RecipeError(f"{path}: stages: {_show(stages_raw)} is not a list of stage mappings")
    top = {k: v for k, v in raw.items() if k in _TOP_KEYS}
    shared = {k: v for k, v in raw.items() if k in _STAGE_KEYS}
    unknown = set(raw) - _TOP_KEYS - _STAGE_KEYS
    if unknown:
        key = sorted(unknown, key=str)[0]
        raise RecipeError(f"{path}: unknown recipe key {key!r}{_suggest(str(key), _TOP_KEYS | _STAGE_KEYS)}")
    top = _typed(top, _TOP_TYPES, f"{path}: ", overridden)
    shared = _typed(shared, _STAGE_TYPES, f"{path}: ", overridden)
    stages = []
    for i, st in enumerate(stages_raw):
        if not isinstance(st, dict):
            raise RecipeError(f"{path}: stage {i} must be a mapping")
        bad = set(st) - _STAGE_KEYS
        if bad:
            key = sorted(bad, key=str)[0]
            raise RecipeError(f"{path}: unknown key {key!r} in stage {st.get('name', i)!r}"
                              f"{_suggest(str(key), _STAGE_KEYS)}")
        st = _typed(st, _STAGE_TYPES, f"{path}: stage {st.get('name', i)!r}: ", overridden)
        merged = {**shared, **st}
        merged.setdefault("name", f"stage{i}")
        stage = StageConfig(**merged)
        where = f"{path}: stage {stage.name!r}: " if has_stages else f"{path}: "
        try:
            info = get_model_info(stage.model)
        except KeyError as e:
            raise RecipeError(f"{where}{e.args[0]}") from None
        m = info.input_multiple
        if any(v % m for v in stage.input_size):
            h, w = stage.input_size
            near = f"[{max(m, h // m * m)}, {max(m, w // m * m)}] or [{-(-h // m) * m}, {-(-w // m) * m}]"
            raise RecipeError(f"{where}input_size: {list(stage.input_size)} must be multiples of {m} for "
                              f"{stage.model} (e.g. {near})")
        try:
            build_loss(stage.loss)
        except ValueError as e:
            raise RecipeError(f"{where}loss: {e}") from None
        if isinstance(stage.augment, dict):
            valid = {f.name for f in fields(PortraitNetAugmentation)}
            bad_aug = sorted(set(stage.augment) - valid)
            if bad_aug:
                raise RecipeError(f"{path}: stage {stage.name!r}: unknown augmentation parameter {bad_aug[0]!r}"
                                  f"{_suggest(bad_aug[0], valid)}")
            try:
                stage.augment = PortraitNetAugmentation(**{k: tuple(v) if isinstance(v, list) else v
                                                          for k, v in stage.augment.items()})
            except ValueError as e:
                raise RecipeError(f"{path}: stage {stage.name!r}: {e}") from None
        if stage.lr_multipliers:
            from sinet_tf.train.param_groups import check_lr_multipliers

            try:
                stage.lr_multipliers = check_lr_multipliers(stage.lr_multipliers)
            except ValueError as e:
                raise RecipeError(f"{path}: stage {stage.name!r}: {e}") from None
        try:
            check_stage(stage)   # teacher and kd term together (the loss parser's answer, any case)
        except ValueError as e:
            raise RecipeError(f"{path}: stage {stage.name!r}: {e}") from None
        if stage.init and stage.init.startswith("stage:") and stage.init[6:] not in [s.name for s in stages]:
            raise RecipeError(f"{path}: stage {stage.name!r} initializes from {stage.init!r}, "
                              f"which is not an earlier stage ({', '.join(s.name for s in stages) or 'none'})")
        if stage.average_of:
            _check_average(stage, stages, st, where)
        stages.append(stage)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{path}: stage names must be unique, got {names}")
    return TrainConfig(stages=stages, recipe=str(path), **top)
