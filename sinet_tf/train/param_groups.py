"""Per-part learning rates: the learning rate of a weight times a factor chosen by its path.

``lr_multipliers: {"encoder.": 0.1}`` trains every weight whose path contains ``encoder.``
at a tenth of the schedule's rate and the rest at the full rate: the usual way to fine-tune
a pretrained feature extractor gently while a new or small head adapts (e.g. Howard and
Ruder, "Universal Language Model Fine-tuning", ACL 2018, Sec. 3.2, discriminative
fine-tuning; Kumar et al., "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution", ICLR 2022, for why a gentler update of the features keeps more of what
they knew). The first pattern (in the mapping's order) that a path contains decides; a
factor of 0 freezes those weights (their optimizer state is still kept).

The factor scales the learning rate handed to the optimizer's update, not the gradient, so it
means the same for Adam (which is invariant to the gradient's scale) as for SGD.
"""

from __future__ import annotations

from sinet_tf.compat import optimizer_variable_key

__all__ = ["PerVariableLearningRate", "check_lr_multipliers"]


def check_lr_multipliers(value) -> dict[str, float]:
    """``{path pattern: factor >= 0}`` from a recipe value, or ValueError saying what is wrong."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"lr_multipliers must be a mapping of weight-path patterns to factors, got {value!r}")
    out = {}
    for pattern, factor in value.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"lr_multipliers: a pattern must be a non-empty string, got {pattern!r}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
            raise ValueError(f"lr_multipliers: the factor of {pattern!r} must be a number >= 0, got {factor!r}")
        out[pattern] = float(factor)
    return out


class PerVariableLearningRate:
    """Optimizer mixin (before the Keras optimizer in the bases): ``lr_multipliers``
    ``{pattern: factor}`` scale the learning rate of the weights whose path contains the
    pattern. :meth:`unmatched` lists the patterns that matched no weight after ``build``."""

    def __init__(self, *args, lr_multipliers=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_multipliers = check_lr_multipliers(lr_multipliers)
        self._lr_factors = {}
        self._lr_matched = set()

    def build(self, var_list):
        super().build(var_list)
        self._lr_factors, self._lr_matched = {}, set()
        for v in var_list:
            for pattern, factor in self.lr_multipliers.items():
                if pattern in v.path:
                    self._lr_factors[optimizer_variable_key(self, v)] = factor
                    self._lr_matched.add(pattern)
                    break

    def unmatched(self) -> list[str]:
        return [p for p in self.lr_multipliers if p not in self._lr_matched]

    def update_step(self, gradient, variable, learning_rate):
        factor = self._lr_factors.get(optimizer_variable_key(self, variable))
        if factor is not None:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        if self.lr_multipliers:
            config["lr_multipliers"] = dict(self.lr_multipliers)
        return config
