"""Train/validation splits: explicit roles (a ``split`` column or an nnU-Net splits file), or seeded ones (a
held-out fraction, or fold ``k`` of a k-fold partition)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

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


ROLES = ("train", "val")


def read_splits_file(path: str | os.PathLike, fold: int) -> tuple[list[str], list[str]]:
    """Fold ``fold`` of an nnU-Net style splits file: ``(training case ids, validation case ids)``.

    The file holds a list of ``{"train": [...], "val": [...]}`` (one per fold, as nnU-Net's ``splits_final.json``)
    or a single such mapping (fold 0).

    Raises:
        ConfigError: unreadable file, wrong layout, no such fold, or a case in both lists (naming the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"datalist.splits: {path} is not a readable JSON splits file ({exc})") from exc
    folds = [data] if isinstance(data, Mapping) else data
    if not isinstance(folds, list) or not folds:
        raise ConfigError(f"datalist.splits: {path}: expected a list of {{'train': [...], 'val': [...]}}")
    if not 0 <= fold < len(folds):
        raise ConfigError(f"datalist.fold: {path} has {len(folds)} fold(s) (0..{len(folds) - 1}), got {fold}")
    entry = folds[fold]
    if not isinstance(entry, Mapping) or sorted(entry) != sorted(ROLES):
        keys = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
        raise ConfigError(f"datalist.splits: {path}: fold {fold} must have exactly the keys 'train' and 'val', got {keys}")
    ids: dict[str, list[str]] = {}
    for role in ROLES:
        if not isinstance(entry[role], list):
            raise ConfigError(f"datalist.splits: {path}: fold {fold} '{role}' must be a list of case ids")
        ids[role] = [str(i) for i in entry[role]]
    both = sorted(set(ids["train"]) & set(ids["val"]))
    if both:
        raise ConfigError(f"datalist.splits: {path}: fold {fold} lists case(s) {both[:10]} in both train and val")
    return ids["train"], ids["val"]


def split_by_ids(
    entries: Sequence[Any], train_ids: Sequence[str], val_ids: Sequence[str], source: str
) -> tuple[list[Any], list[Any]]:
    """The entries (objects with a ``case_id``) named by ``train_ids`` and ``val_ids``, in datalist order.

    Cases of the datalist named by neither list are left out (and logged).

    Raises:
        ConfigError: an id names no case of the datalist (the unknown ids and ``source`` are named).
    """
    known = {e.case_id for e in entries}
    unknown = [i for i in [*train_ids, *val_ids] if i not in known]
    if unknown:
        raise ConfigError(
            f"{source}: unknown case id(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''}: not in the datalist "
            f"({len(known)} cases)"
        )
    tr, va = set(train_ids), set(val_ids)
    unused = [e.case_id for e in entries if e.case_id not in tr | va]
    if unused:
        logger.info("%s: %d case(s) of the datalist are in neither train nor val and are not used", source,
                    len(unused))
    return [e for e in entries if e.case_id in tr], [e for e in entries if e.case_id in va]


def split_by_role(entries: Sequence[Any], source: str) -> tuple[list[Any], list[Any]]:
    """Split entries by their ``split`` attribute (``train`` / ``val``), which every entry must have.

    Raises:
        ConfigError: some cases have a role and others none, naming those without one.
    """
    missing = [e.case_id for e in entries if e.split is None]
    if missing:
        raise ConfigError(
            f"{source}: case(s) {missing[:10]}{' ...' if len(missing) > 10 else ''} have no split while others do; "
            "give every case 'train' or 'val'"
        )
    return [e for e in entries if e.split == "train"], [e for e in entries if e.split == "val"]


def choose_split(
    entries: Sequence[Any],
    *,
    splits: str | os.PathLike | None,
    fold: int,
    validation: bool,
    val_fraction: float,
    folds: int | None,
    k: int,
    seed: int,
    source: str = "datalist",
) -> tuple[list[Any], list[Any]]:
    """Training and validation cases, by the first rule that applies:

    1. a splits file (``splits``, fold ``fold``);
    2. per-case roles (entries with a ``split`` attribute, from a ``split`` column or key);
    3. ``validation`` off (``train.val_every: 0``): every case trains;
    4. a single case: it trains, and there is nothing to validate on;
    5. a seeded split: fold ``k`` of ``folds`` or a held-out ``val_fraction``.

    An explicit split may leave no validation case; the caller then turns validation off.
    """
    has_roles = any(getattr(e, "split", None) is not None for e in entries)
    if (splits is not None or has_roles) and folds is not None:
        given = f"datalist.splits ({splits})" if splits is not None else f"the 'split' of the cases in {source}"
        raise ConfigError(f"train.folds: set, but {given} names the roles; set train.folds to null")
    if splits is not None:
        if has_roles:
            raise ConfigError(
                f"datalist.splits: {source} also gives a 'split' per case; use one of the two to name the roles"
            )
        train_ids, val_ids = read_splits_file(splits, fold)
        chosen = split_by_ids(entries, train_ids, val_ids, f"datalist.splits: {splits} (fold {fold})")
        how = f"splits file {splits}, fold {fold}"
    elif has_roles:
        chosen = split_by_role(entries, source)
        how = f"the 'split' of each case in {source}"
    elif not validation or len(entries) == 1:
        chosen = (list(entries), [])
        how = "validation off: every case trains" if not validation else "a single case: it trains"
    else:
        chosen = split_cases(entries, val_fraction=val_fraction, folds=folds, fold=k, seed=seed)
        how = f"fold {k} of {folds} (seed {seed})" if folds is not None else f"held-out fraction {val_fraction}"
    if not chosen[0]:
        raise ConfigError(f"{source}: no training case ({how})")
    logger.info("split (%s): %d training case(s), %d validation case(s)", how, len(chosen[0]), len(chosen[1]))
    return chosen
