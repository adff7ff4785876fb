"""Datasets and loaders: in-memory cache, on-disk cache or none; seeded per epoch for replayable training, and
sharded over the ranks of a data-parallel run (:func:`shard_order`).

2D training comes in two forms, both set by the data contract: plain 2D images (``data.spatial_dims: 2``), and
slice-wise sampling of 3D volumes (``data.slice_axis``), where the volume is preprocessed and cached in 3D and each
training patch is a ``(h, w, 1)`` crop -- foreground-oversampled across all slices -- squeezed to 2D (see
:func:`medseg.training.transforms.patch_roi`); validation then runs the 2D network slice by slice.

Seeding is medseg's :func:`seed_everything`, not MONAI's ``set_determinism``, which also resets the cuDNN flags that
``train.deterministic`` controls (its docstring and ``tests/test_seed.py`` say how).
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


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one epoch (of one rank's global generators), a function of (run seed, epoch, rank) only."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + int(rank) * 104_729 + 17) % MAX_SEED


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the random transforms of dataset item ``index`` in ``epoch``: independent of the rank that
    draws it and of the loader's workers, so the patch stream of an epoch is the same whatever the sharding."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1)[0]) % MAX_SEED


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA included), and nothing else.

    Not ``monai.utils.set_determinism``: for a seed in ``[0, 2**32)`` it seeds the three generators the same way,
    but it also sets ``torch.backends.cudnn.deterministic = True`` and ``benchmark = False`` on every call (this
    runs every epoch), overriding ``train.deterministic: false``, whose cuDNN flags
    :func:`medseg.training.run.torch_settings` owns and restores; and it reduces other seeds modulo 2**32, so a
    negative or larger ``train.seed`` would replay another run (``tests/test_seed.py``).
    """
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def shard_order(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The dataset indices one rank draws in ``epoch``, in order (DistributedSampler's rule).

    Every rank computes the same permutation of ``range(n)`` from (seed, epoch); it is padded by wrapping to a
    multiple of ``world_size`` (as ``torch.utils.data.DistributedSampler`` does, so every rank runs the same
    number of steps) and rank ``r`` takes positions ``r, r + world_size, ...``. Batch ``k`` of the ranks together
    is therefore batch ``k`` of a single process with ``batch_size x world_size`` (when ``n`` is a multiple of it).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    if n <= 0:
        return []
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(seed, epoch))
        order = torch.randperm(n, generator=generator).tolist()
    else:
        order = list(range(n))
    total = -(-n // world_size) * world_size
    order = (order * -(-total // n))[:total]
    return order[rank::world_size]


class SeededItems(torch.utils.data.Dataset):
    """``dataset`` whose random transforms are reseeded before every item from :func:`item_seed`."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, Compose):
            transform.set_random_state(seed=item_seed(self.seed, self.epoch, index))
        return self.dataset[index]


def epoch_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A loader of one rank's share of an epoch, whose order and augmentation depend only on (seed, epoch).

    The order comes from :func:`shard_order`; each item's random transforms are seeded from (seed, epoch, item
    index) (:class:`SeededItems`), so an item gets the same patches and augmentation whichever rank or loader
    worker draws it. The rank's global generators are reseeded from (seed, epoch, rank). Resuming at epoch ``e``
    therefore replays exactly what an uninterrupted run does in epoch ``e``, and ``world_size`` ranks with
    ``batch_size`` each see, step by step, the samples of one process with ``batch_size x world_size``.
    """
    seed_everything(epoch_seed(seed, epoch, rank))
    order = shard_order(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size)
    generator = torch.Generator()  # MONAI's loader draws worker seeds from it (the transforms are reseeded anyway)
    generator.manual_seed(epoch_seed(seed, epoch, rank))
    return DataLoader(
        SeededItems(dataset, seed, epoch),
        batch_size=batch_size,
        sampler=order,
        num_workers=num_workers,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )
