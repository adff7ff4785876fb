"""seed_everything against monai.utils.set_determinism: the same draws, but only seed_everything leaves cuDNN alone."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from monai.utils import set_determinism

from medseg.training.data import seed_everything


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.random()), torch.rand(3).tolist()


@pytest.fixture
def cudnn_flags():
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("seed", [0, 17, 2**31 - 1, 2**32 - 1])
def test_same_draws_as_set_determinism(seed, cudnn_flags) -> None:
    seed_everything(seed)
    ours = _draws()
    set_determinism(seed)
    theirs = _draws()
    assert ours == theirs
    seed_everything(seed)
    assert _draws() == ours  # replayable


def test_cudnn_flags_are_left_to_the_training_settings(cudnn_flags) -> None:
    # what torch_settings leaves with train.deterministic: false and a user's benchmark mode
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    seed_everything(3)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (False, True)
    set_determinism(3)
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)


@pytest.mark.parametrize("seed", [-5, 2**32 + 7])
def test_seeds_outside_32_bits_keep_their_own_stream(seed, cudnn_flags) -> None:
    seed_everything(seed)
    ours = _draws()
    set_determinism(seed)
    assert _draws() != ours
    seed_everything(seed % 2**32)
    assert _draws() != ours
