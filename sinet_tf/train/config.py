"""Training recipes: YAML files in ``training/``, validated into dataclasses.

A recipe names a model, data, the optimizer and schedule, the loss, augmentation and
one or more *stages* (SINet trains its encoder first, then the whole network initialized
from the best encoder). Keys given at the top level apply to every stage; a stage
overrides them. Unknown keys are errors that name the key and suggest the closest one.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sinet_tf.registry import get_model_info

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
    init_strict: bool = False
    early_stopping_patience: int | None = None
    jit_compile: Any = False
    run_eagerly: bool = False                      # debugging / tiny test runs (no graph tracing)
    lr_multipliers: dict = field(default_factory=dict)   # {weight-path pattern: factor} (train/param_groups.py)
    teacher: str | None = None                     # distillation (train/distill.py): init, .keras, .tflite or preset
    teacher_resize: bool = False                   # resize the batch to a teacher of another input size
    teacher_input_range: tuple[float, float] | None = None   # .tflite teacher's pixel range (default: its own)


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


_STAGE_KEYS = {f.name for f in fields(StageConfig)}
_TOP_KEYS = {f.name for f in fields(TrainConfig)} - {"stages", "recipe"}


def _suggest(key, valid):
    close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _coerce(stage: dict) -> dict:
    out = dict(stage)
    for k in ("input_size", "lr_milestones", "weight_decay_exclude"):
        if k in out and out[k] is not None:
            out[k] = tuple(out[k])
    return out


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
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    stage_names = [s.get("name") for s in raw.get("stages", []) if isinstance(s, dict)]
    for key, value in items:
        head, _, rest = key.partition(".")
        if rest and head in stage_names:
            raw["stages"][stage_names.index(head)][rest] = value
        else:
            raw[key] = value
            # a top-level override wins over the same key written inside a stage
            for st in raw.get("stages", []) or []:
                if isinstance(st, dict) and key in st:
                    st[key] = value
    if data is not None:
        raw["data"] = data

    stages_raw = raw.pop("stages", None) or [{"name": "train"}]
    top = {k: v for k, v in raw.items() if k in _TOP_KEYS}
    shared = {k: v for k, v in raw.items() if k in _STAGE_KEYS}
    unknown = set(raw) - _TOP_KEYS - _STAGE_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise RecipeError(f"{path}: unknown recipe key {key!r}{_suggest(key, _TOP_KEYS | _STAGE_KEYS)}")
    stages = []
    for i, st in enumerate(stages_raw):
        if not isinstance(st, dict):
            raise RecipeError(f"{path}: stage {i} must be a mapping")
        bad = set(st) - _STAGE_KEYS
        if bad:
            key = sorted(bad)[0]
            raise RecipeError(f"{path}: unknown key {key!r} in stage {st.get('name', i)!r}{_suggest(key, _STAGE_KEYS)}")
        merged = _coerce({**shared, **st})
        merged.setdefault("name", f"stage{i}")
        try:
            stage = StageConfig(**merged)
        except TypeError as e:
            raise RecipeError(f"{path}: {e}") from e
        try:
            get_model_info(stage.model)
        except KeyError as e:
            raise RecipeError(f"{path}: stage {stage.name!r}: {e.args[0]}") from None
        for k in ("epochs", "batch_size"):
            if int(getattr(stage, k)) < 1:
                raise RecipeError(f"{path}: stage {stage.name!r}: {k} must be >= 1, got {getattr(stage, k)}")
        for k, valid in (("optimizer", ("adam", "sgd")), ("lr_schedule", ("step", "poly"))):
            if getattr(stage, k) not in valid:
                raise RecipeError(f"{path}: stage {stage.name!r}: {k} must be one of {', '.join(valid)}, "
                                  f"got {getattr(stage, k)!r}")
        if stage.aux_weight < 0:
            raise RecipeError(f"{path}: stage {stage.name!r}: aux_weight must be >= 0, got {stage.aux_weight}")
        if isinstance(stage.augment, dict):
            from sinet_tf.data.augment import PortraitNetAugmentation

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
        if stage.teacher or "kd" in str(stage.loss):
            from sinet_tf.train.distill import check_stage

            try:
                check_stage(stage)
            except ValueError as e:
                raise RecipeError(f"{path}: stage {stage.name!r}: {e}") from None
        if stage.init and stage.init.startswith("stage:") and stage.init[6:] not in [s.name for s in stages]:
            raise RecipeError(f"{path}: stage {stage.name!r} initializes from {stage.init!r}, "
                              f"which is not an earlier stage ({', '.join(s.name for s in stages) or 'none'})")
        stages.append(stage)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise RecipeError(f"{path}: stage names must be unique, got {names}")
    config = TrainConfig(stages=stages, recipe=str(path), **top)
    if config.strategy not in ("default", "mirrored", "multiworker", "tpu"):
        raise RecipeError(f"{path}: strategy must be default, mirrored, multiworker or tpu, got {config.strategy!r}")
    if isinstance(config.copy_paste, bool) or not isinstance(config.copy_paste, int) or config.copy_paste < 0:
        raise RecipeError(f"{path}: copy_paste must be an integer >= 0 (composites to add), got {config.copy_paste!r}")
    if config.on_bad_sample not in ("raise", "skip"):
        raise RecipeError(f"{path}: on_bad_sample must be 'raise' or 'skip', got {config.on_bad_sample!r}")
    return config
