"""Datasets and loaders: in-memory cache, on-disk cache or none; seeded per epoch for replayable training.

2D training comes in two forms, both set by the data contract: plain 2D images (``data.spatial_dims: 2``), and
slice-wise sampling of 3D volumes (``data.slice_axis``), where the volume is preprocessed and cached in 3D and each
training patch is a ``(h, w, 1)`` crop -- foreground-oversampled across all slices -- squeezed to 2D (see
:func:`medseg.training.transforms.patch_roi`); validation then runs the 2D network slice by slice.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset, PersistentDataset
from monai.transforms import Compose

from medseg.errors import ConfigError

logger = logging.getLogger(__name__)

CACHE_MODES = ("memory", "disk", "none")
MAX_SEED = 2**31


def make_dataset(
    items: Sequence[dict[str, Any]],
    transform: Compose,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """A MONAI dataset over ``items``: ``memory`` (CacheDataset), ``disk`` (PersistentDataset) or ``none``.

    Caching stores the output of the deterministic transforms (everything before the first random one).
    """
    if cache == "memory":
        # the cache is filled by threads (one per CPU): deterministic transforms, so the order does not matter
        return CacheDataset(list(items), transform, cache_rate=1.0, num_workers=None, progress=False)
    if cache == "disk":
        if cache_dir is None:
            raise ConfigError("train.cache_dir: needed for cache: disk")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return PersistentDataset(list(items), transform, cache_dir=cache_dir)
    if cache == "none":
        return Dataset(list(items), transform)
    raise ConfigError(f"train.cache: {cache!r} is not one of {', '.join(CACHE_MODES)}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch, a function of (run seed, epoch) only."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % MAX_SEED


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA included)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader whose order and augmentation depend only on (seed, epoch).

    The global generators and the transforms' random states are reseeded from :func:`epoch_seed`, and the
    shuffling uses its own generator; MONAI's loader derives each worker's transform seed from torch's generator,
    so the same holds with workers. Resuming at epoch ``e`` therefore replays exactly what an uninterrupted run
    does in epoch ``e``.
    """
    s = epoch_seed(seed, epoch)
    seed_everything(s)
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, Compose):
        transform.set_random_state(seed=s)
    generator = torch.Generator()
    generator.manual_seed(s)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
