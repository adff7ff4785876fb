"""Seeded train/validation splits: a held-out fraction, or fold ``k`` of a k-fold partition."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _permutation(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def holdout_split(items: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle with ``seed`` and hold out ``round(val_fraction * n)`` items (at least 1, leaving at least 1)."""
    n = len(items)
    if n < 2:
        raise ConfigError(f"a train/validation split needs at least 2 cases, got {n}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"train.val_fraction: must be in (0, 1), got {val_fraction}")
    n_val = min(n - 1, max(1, round(val_fraction * n)))
    order = _permutation(n, seed)
    val_idx = set(order[:n_val])
    return [x for i, x in enumerate(items) if i not in val_idx], [
        x for i, x in enumerate(items) if i in val_idx
    ]


def kfold_split(items: Sequence[T], folds: int, fold: int, seed: int) -> tuple[list[T], list[T]]:
    """Fold ``fold`` of a seeded ``folds``-fold partition: (training items, validation items).

    The validation sets of the folds are disjoint and cover every item; their sizes differ by at most one.
    """
    n = len(items)
    if folds < 2 or n < folds:
        raise ConfigError(f"train.folds: need 2 <= folds <= number of cases ({n}), got {folds}")
    if not 0 <= fold < folds:
        raise ConfigError(f"train.fold: must be in 0..{folds - 1}, got {fold}")
    order = _permutation(n, seed)
    size = math.floor(n / folds)
    extra = n - size * folds
    start = fold * size + min(fold, extra)
    stop = start + size + (1 if fold < extra else 0)
    val_idx = set(order[start:stop])
    return [x for i, x in enumerate(items) if i not in val_idx], [
        x for i, x in enumerate(items) if i in val_idx
    ]


def split_cases(
    items: Sequence[T], *, val_fraction: float, folds: int | None, fold: int, seed: int
) -> tuple[list[T], list[T]]:
    """Hold-out split when ``folds`` is None, else fold ``fold`` of a k-fold partition."""
    if folds is None:
        return holdout_split(items, val_fraction, seed)
    return kfold_split(items, folds, fold, seed)
