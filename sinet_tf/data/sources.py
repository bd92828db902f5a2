"""Data sources by name: what ``--data`` and a recipe's ``data`` key accept."""

from __future__ import annotations

from sinet_tf.data.readers import load_dataset
from sinet_tf.data.synthetic import SyntheticPortraits

__all__ = ["open_source"]


def open_source(spec: str, split: str | None, seed: int, on_error: str = "raise", size=(256, 256)):
    """A data source from a recipe's ``data`` value: a dataset path, or ``synthetic`` /
    ``synthetic:N`` (N generated portraits; the validation split is a disjoint seed)."""
    name, _, count = str(spec).partition(":")
    if name == "synthetic":   # (a folder named synthetic_data is a folder)
        if count and not (count.isdigit() and int(count) >= 1):
            raise ValueError(f"data {spec!r}: expected synthetic or synthetic:N (N generated portraits, a whole "
                             "number >= 1), or a dataset folder or list file")
        n = int(count) if count else 1000
        if split in ("val", "test"):
            return SyntheticPortraits(max(n // 5, 1), size=size, seed=seed + 10_000, name="synthetic-val")
        return SyntheticPortraits(n, size=size, seed=seed, name="synthetic-train")
    return load_dataset(spec, split=split, on_error=on_error)
