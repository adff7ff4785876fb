"""Calibration: the real time of a training step on the device, and the epochs that fit a time budget.

:func:`measure_step` builds what ``medseg train`` builds for a config -- the network
(:func:`medseg.nets.build_network`), the loss with its deep-supervision wrapper, the optimizer -- and runs
:meth:`medseg.training.loop.Trainer.train_step` (forward, loss, backward, gradient clipping, optimizer step; at the
configured ``train.precision``) on random batches of the planned patch size and ``batch_size x
samples_per_case`` patches (what a training step holds). The first step (allocations, algorithm selection) is not
timed; the median of the next steps is the step time. Data loading is not included: with ``train.num_workers`` it
overlaps the steps.
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.planning.plan import Plan

logger = logging.getLogger(__name__)

#: a sliding window's forward pass, relative to a training step of one sample (forward + backward ~ 3 forwards)
FORWARD_FRACTION = 1.0 / 3.0


@dataclass(frozen=True)
class StepTiming:
    """Measured seconds per training step (median of ``steps`` timed steps after one untimed)."""

    seconds: float
    steps: int
    all_seconds: tuple[float, ...]
    device: str


def measure_step(config: Any, device: str, *, steps: int = 3, seed: int = 0) -> StepTiming:
    """Time ``steps`` training steps (after one warm-up step) of ``config``'s network, loss and optimizer."""
    import torch

    from medseg.inference.predictor import resolve_device
    from medseg.losses import DeepSupervisionLoss
    from medseg.nets import build_network
    from medseg.training.loop import Trainer
    from medseg.training.optim import build_optimizer, build_poly_schedule
    from medseg.training.run import build_model_spec, torch_settings

    if steps < 1:
        raise ValueError(f"calibration needs at least 1 timed step, got {steps}")
    d, tc = config.data, config.train
    dev = resolve_device(device)
    gen = torch.Generator().manual_seed(seed)
    with torch_settings(tc.deterministic, tc.num_threads):
        torch.manual_seed(seed)
        model = build_network(**config.network.build_kwargs(d.spatial_dims, len(d.channels), d.num_classes)).to(dev)
        loss = DeepSupervisionLoss(config.loss.build(), config.loss.deep_supervision_weights)
        optimizer = build_optimizer(model.parameters(), tc.optimizer, tc.lr, tc.weight_decay, tc.momentum, tc.nesterov)
        scheduler = build_poly_schedule(optimizer, max(tc.epochs, 1), tc.poly_power)
        with tempfile.TemporaryDirectory(prefix="medseg-calibrate-") as tmp:
            trainer = Trainer(
                model, loss, optimizer, scheduler, spec=build_model_spec(config, model),
                loaders=lambda epoch: [], validate=lambda epoch: ({}, []), checkpoint_dir=Path(tmp),
                epochs=max(tc.epochs, 1), device=dev, amp=tc.amp, precision=tc.precision, grad_clip=tc.grad_clip,
            )
            n = tc.batch_size * tc.samples_per_case  # the loader flattens each case's patches into the batch
            shape = (n, len(d.channels), *tc.patch_size)
            times = []
            for step in range(steps + 1):
                batch = {
                    "image": torch.randn(shape, generator=gen),
                    "label": torch.randint(0, d.num_classes, (n, 1, *tc.patch_size), generator=gen)
                    .float(),
                }
                if trainer.needs_dist:
                    batch["dist"] = torch.randn((n, d.num_classes, *tc.patch_size), generator=gen)
                start = time.perf_counter()
                trainer.train_step(batch, 0, step)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if step > 0:
                    times.append(time.perf_counter() - start)
                logger.info("calibration step %d/%d: %.3f s", step, steps, time.perf_counter() - start)
    return StepTiming(statistics.median(times), steps, tuple(times), str(dev))


def sliding_windows(shape: list[float], patch: list[int], overlap: float) -> int:
    """Windows a sliding-window inference needs over ``shape`` (MONAI's scan: stride = patch x (1 - overlap))."""
    n = 1
    for s, p in zip(shape, patch, strict=True):
        s = int(round(s))
        if s <= p:
            continue
        stride = max(1, int(p * (1 - overlap)))
        n *= math.ceil((s - p) / stride) + 1
    return n


def budget_epochs(plan: Plan, config: Any, timing: StepTiming, budget_minutes: float) -> None:
    """Rule 9: add ``train.epochs`` (and ``train.budget_minutes`` when the config schema has it) to ``plan``."""
    import dataclasses

    tc = config.train
    batch = int(plan.value("train.batch_size"))
    patch = list(plan.value("train.patch_size"))
    steps = max(1, math.ceil(plan.n_train / batch))  # an epoch visits every training case once
    windows = sliding_windows(plan.full_median_shape, patch, config.inference.overlap)
    patches = batch * tc.samples_per_case  # per training step
    val_seconds = plan.n_val * windows * timing.seconds / patches * FORWARD_FRACTION
    validating = plan.n_val > 0 and tc.val_every > 0
    val_every = int(tc.val_every) if validating else 1
    epoch_seconds = steps * timing.seconds + (val_seconds / val_every if validating else 0.0)
    epochs = max(1, int(budget_minutes * 60.0 / epoch_seconds))
    plan.decide(
        "(step time)", f"{timing.seconds:.3f} s",
        f"measured on {timing.device}: median of {timing.steps} real training steps after one untimed "
        f"({', '.join(f'{t:.3f}' for t in timing.all_seconds)} s)", in_overlay=False,
    )
    plan.decide(
        "train.epochs", epochs,
        f"{budget_minutes:g} min / ({steps} steps x {timing.seconds:.3f} s"
        + (f" + validation {val_seconds:.1f} s / every {val_every}" if validating else "")
        + f") per epoch; {plan.n_train} training case(s) / batch {batch} (x {tc.samples_per_case} patch(es) per case)",
    )
    names = {f.name for f in dataclasses.fields(type(tc))}
    if "budget_minutes" in names:
        plan.decide("train.budget_minutes", budget_minutes, "--budget-minutes: training stops at this wall clock")
    else:
        plan.decide(
            "(budget)", budget_minutes,
            "this medseg has no train.budget_minutes: train.epochs alone bounds the run", in_overlay=False,
        )
