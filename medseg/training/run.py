"""``train(config, workdir)``: datalist -> validation of the cases -> split -> datasets -> model -> loop -> result.

Work folder layout::

    workdir/checkpoints/last.pt, best.pt     self-describing checkpoints (medseg.checkpoint)
    workdir/config.yaml                       the resolved config (without the datalist path)
    workdir/dataset_summary.json              counts and geometry statistics (no case ids)
    workdir/learning_curve.png                training loss and validation Dice per epoch
    workdir/qc/epochNNN_valKK.png             QC overlays of each validation (no case ids in names or titles)
    workdir/cache/vHASH/                      on-disk cache (train.cache: disk), keyed by the cached settings
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from medseg._version import __version__
from medseg.atomic import atomic_write_text
from medseg.checkpoint import Checkpoint, CheckpointError, ModelSpec, load_checkpoint, nonfinite_weights
from medseg.config import MedsegConfig, apply_overrides, from_dict, load_config, to_dict
from medseg.contract import contract_from_config
from medseg.errors import ConfigError
from medseg.inference.predictor import resolve_device
from medseg.losses import DeepSupervisionLoss
from medseg.nets import build_network, network_config
from medseg.training.data import epoch_loader, make_dataset, seed_everything
from medseg.training.datalist import load_datalist, validate_datalist
from medseg.training.distributed import LOCAL, Distributed
from medseg.training.hooks import TrainResult, notify
from medseg.training.loop import Trainer, TrainingDiverged
from medseg.training.optim import build_optimizer, build_schedule
from medseg.training.plots import learning_curve, qc_overlay
from medseg.training.split import choose_split
from medseg.training.summary import dataset_summary
from medseg.training.transforms import build_train_transforms
from medseg.training.validation import Validator

logger = logging.getLogger(__name__)


def resolve_config(config: MedsegConfig | str | os.PathLike, overrides: Sequence[str] = ()) -> MedsegConfig:
    """A config object from a config or a YAML path, with ``key.sub=value`` overrides applied."""
    if isinstance(config, MedsegConfig):
        return from_dict(MedsegConfig, apply_overrides(to_dict(config), overrides)) if overrides else config
    return load_config(config, overrides)


def public_config(config: MedsegConfig) -> dict[str, Any]:
    """The config as plain data without local input/cache paths (a folder name may hold a patient's name)."""
    data = to_dict(config)
    data["datalist"]["path"] = None
    data["datalist"]["splits"] = None
    data["train"]["cache_dir"] = None
    return data


@contextlib.contextmanager
def torch_settings(deterministic: bool, threads: int | None) -> Iterator[None]:
    """Deterministic algorithms (warn-only) and the CPU thread count while training; previous settings return."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    n_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.set_num_threads(n_threads)


def build_model_spec(config: MedsegConfig, model: torch.nn.Module) -> ModelSpec:
    """What every checkpoint stores: the network, the data contract, and the public config (provenance)."""
    return ModelSpec(
        network=network_config(model),
        contract=contract_from_config(config),
        config=public_config(config),
        medseg_version=__version__,
    )


def _cache_key(config: MedsegConfig, needs_dist: bool) -> str:
    """A folder name for the on-disk cache that changes with every setting of the cached (deterministic) steps."""
    tc = config.train
    settings = {
        "data": to_dict(config.data),
        "crop": [tc.crop_foreground, tc.foreground_threshold, tc.foreground_margin],
        "patch": list(tc.patch_size),
        "dist": needs_dist,
        "medseg": __version__,
    }
    return "v" + hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _resume_checkpoint(trainer: Trainer, device: torch.device) -> tuple[Checkpoint, Path]:
    """``last.pt``, or the one before it when ``last.pt`` is missing or damaged (truncated, bit rot, NaN weights):
    a run then repeats one epoch instead of being lost.

    Raises:
        ConfigError: neither checkpoint is usable (both reasons given).
    """
    reasons = []
    for path in (trainer.last_path, trainer.previous_path):
        try:
            ckpt = load_checkpoint(path, map_location=device)
        except CheckpointError as exc:
            reasons.append(str(exc))
            continue
        bad = nonfinite_weights(ckpt.state_dict)
        if bad:
            reasons.append(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinite values")
            continue
        if reasons:
            logger.warning("--resume: %s; resuming from the checkpoint before it, %s", reasons[0], path.name)
        return ckpt, path
    raise ConfigError("--resume: no usable checkpoint: " + "; ".join(reasons))


def _check_resumable(spec: ModelSpec, saved: ModelSpec, path: Path) -> None:
    pairs = {
        "network": (spec.network, saved.network),
        "data contract (data section)": (spec.contract.data, saved.contract.data),
        "patch_size": (spec.contract.patch_size, saved.contract.patch_size),
    }
    for key, (now, before) in pairs.items():
        if now != before:
            raise ConfigError(
                f"--resume: {path} was trained with a different {key} ({before!r} vs {now!r}); use a new work folder"
            )
    before = saved.config.get("train", {}).get("budget_minutes")
    now = spec.config.get("train", {}).get("budget_minutes")
    if (before is None) != (now is None):
        raise ConfigError(
            f"--resume: {path} was trained {'without' if before is None else 'with'} train.budget_minutes "
            f"({before!r} vs {now!r}); the learning-rate schedule differs, so use a new work folder"
        )


def _cases(config: MedsegConfig, source: str | os.PathLike | None) -> tuple[list[Any], list[Any], list[Any]]:
    """``(training cases, validation cases, per-case infos)`` of the datalist, every case checked against the
    data contract (:class:`medseg.training.datalist.DatalistError` lists all problems)."""
    if source is None:
        raise ConfigError("datalist.path: no datalist given (set it in the config or pass datalist=)")
    tc, dl = config.train, config.datalist
    entries = load_datalist(source, config.data.channel_names, label=dl.label, fmt=dl.format)
    infos = validate_datalist(entries, config.data, source=str(source))
    train_cases, val_cases = choose_split(
        entries,
        splits=dl.splits,
        fold=dl.fold,
        validation=tc.val_every > 0,
        val_fraction=tc.val_fraction,
        folds=tc.folds,
        k=tc.fold,
        seed=tc.seed,
        source=str(source),
    )
    if tc.val_every == 0:
        logger.warning("train.val_every is 0: no validation runs; best.pt will hold the final epoch's weights")
    elif not val_cases:
        logger.warning("no validation case: no validation runs; best.pt will hold the final epoch's weights")
    return train_cases, val_cases, infos


class _Validation:
    """The loop's ``validate(epoch)``: the validator on the model being trained, plus its QC pictures."""

    def __init__(self, validator: Validator, model: torch.nn.Module, qc_dir: Path) -> None:
        self.validator, self.model, self.qc_dir = validator, model, qc_dir
        self.latest: list[Path] = []

    def __call__(self, epoch: int) -> tuple[dict[str, float], list[Path]]:
        metrics, slices = self.validator(self.model)
        self.latest = [
            qc_overlay(s.image, s.label, s.pred, self.qc_dir / f"epoch{epoch:03d}_val{s.index:02d}.png",
                       f"epoch {epoch}, validation case {s.index}")
            for s in slices
        ]  # fmt: skip
        return metrics, self.latest


def _no_validation(epoch: int) -> tuple[dict[str, float], list[Path]]:
    raise RuntimeError("validation is off for this run")  # the loop never calls it when val_every is 0


def train(
    config: MedsegConfig | str | os.PathLike,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    tracker: Any = None,
    datalist: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    distributed: Distributed | None = None,
) -> TrainResult:
    """Train a model as the config says and leave best/last checkpoints in ``workdir``.

    Args:
        config: a config or a YAML file.
        workdir: output folder (created).
        resume: continue from ``workdir/checkpoints/last.pt`` (epoch, optimizer, scheduler, RNG, and the time
            used, so a run with ``train.budget_minutes`` continues with the budget left).
        tracker: optional observer with the hooks of :mod:`medseg.training.hooks`.
        datalist: overrides ``config.datalist.path``.
        overrides: ``key.sub=value`` config overrides.
        distributed: this process's rank in a data-parallel run (:func:`medseg.training.distributed.process_group`;
            default: a single process). Each rank trains on its share of every epoch with ``train.batch_size``
            cases per step, so a step's global batch is ``batch_size x world_size`` cases; rank 0 alone writes
            the work folder's files and should alone be given a ``tracker``. The device is the rank's.

    Raises:
        DatalistError: the cases do not fit the data contract (every problem listed).
        TrainingDiverged: a non-finite loss; ``tracker.on_end`` got a ``"diverged"`` result first.
    """
    t0 = time.perf_counter()
    dist = distributed if distributed is not None else LOCAL
    config = resolve_config(config, overrides)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not resume and any((work / "checkpoints" / name).is_file() for name in ("last.pt", "best.pt")):
        raise ConfigError(
            f"{work / 'checkpoints'} already holds checkpoints of another run; resume it (--resume) "
            "or train into a new work folder"
        )
    tc = config.train
    train_cases, val_cases, infos = _cases(config, datalist if datalist is not None else config.datalist.path)
    val_every = tc.val_every if val_cases else 0
    summary = dataset_summary(config.data, infos, len(train_cases), len(val_cases))
    if dist.is_main:
        atomic_write_text(work / "dataset_summary.json", json.dumps(summary, indent=2))
        atomic_write_text(work / "config.yaml", yaml.safe_dump(public_config(config), sort_keys=False))
    device = dist.device if dist.device is not None else resolve_device(tc.device)
    result = TrainResult(status="failed", workdir=work, dataset_summary=summary)

    with torch_settings(tc.deterministic, tc.num_threads):
        loss = DeepSupervisionLoss(config.loss.build(), config.loss.deep_supervision_weights)
        needs_dist = loss.requires_dist
        cache_dir = (Path(tc.cache_dir) if tc.cache_dir else work / "cache") / _cache_key(config, needs_dist)
        train_ds = make_dataset(
            [e.as_item() for e in train_cases],
            build_train_transforms(config, needs_dist=needs_dist),
            tc.cache,
            cache_dir / "train",
        )
        seed_everything(tc.seed)
        d = config.data
        model = build_network(
            **config.network.build_kwargs(d.spatial_dims, len(d.channels), d.num_classes)
        ).to(device)
        optimizer = build_optimizer(
            model.parameters(), tc.optimizer, tc.lr, tc.weight_decay, tc.momentum, tc.nesterov
        )
        scheduler = build_schedule(optimizer, tc.epochs, tc.poly_power, budget=tc.budget_minutes is not None)
        spec = build_model_spec(config, model)
        qc_axis = 2 if d.slice_axis is None else d.slice_axis
        validation = (
            _Validation(Validator(spec, val_cases, device, qc_cases=tc.qc_cases, qc_axis=qc_axis), model, work / "qc")
            if val_every
            else None
        )

        def loaders(epoch: int) -> Any:
            return epoch_loader(
                train_ds,
                batch_size=tc.batch_size,
                shuffle=True,
                seed=tc.seed,
                epoch=epoch,
                num_workers=tc.num_workers,
                pin_memory=device.type == "cuda",
                rank=dist.rank,
                world_size=dist.world_size,
            )

        trainer = Trainer(
            dist.wrap(model),
            loss,
            optimizer,
            scheduler,
            spec=spec,
            loaders=loaders,
            validate=validation if validation is not None else _no_validation,
            checkpoint_dir=work / "checkpoints",
            epochs=tc.epochs,
            val_every=val_every,
            device=device,
            amp=tc.amp,
            precision=tc.precision,
            grad_clip=tc.grad_clip,
            observer=tracker,
            budget_seconds=None if tc.budget_minutes is None else 60.0 * tc.budget_minutes,
            dist=dist,
        )
        resumed_from = None
        if resume:
            ckpt, path = _resume_checkpoint(trainer, device)
            _check_resumable(spec, ckpt.spec, path)
            trainer.restore(ckpt)
            resumed_from = ckpt.epoch
            logger.info("resuming after epoch %d from %s", ckpt.epoch, path)
        run = {
            "device": str(device),
            "medseg_version": __version__,
            "resumed_from_epoch": resumed_from,
            "validation": val_every > 0,
            "world_size": dist.world_size,
        }
        notify(tracker, "on_start", {"config": public_config(config), "dataset": summary, "run": run})
        try:
            state = trainer.fit()
            final = trainer.best_path if trainer.best_path.is_file() else trainer.last_path
            model.load_state_dict(load_checkpoint(final, map_location=device).state_dict)
            if dist.is_main:
                result.learning_curve = learning_curve(state.history, work / "learning_curve.png")
            result.qc_images = list(validation.latest) if validation is not None else []
        except TrainingDiverged as exc:
            _finish(result, trainer, "diverged", str(exc), t0, tracker)
            raise
        except BaseException as exc:
            _finish(result, trainer, "failed", f"{type(exc).__name__}: {exc}", t0, tracker)
            raise
    result.model = model.eval()
    _finish(result, trainer, "completed", None, t0, tracker)
    return result


def _finish(
    result: TrainResult, trainer: Trainer, status: str, error: str | None, t0: float, tracker: Any
) -> None:
    st = trainer.state
    result.status = status  # type: ignore[assignment]
    result.error = error
    result.history = list(st.history)
    result.last_checkpoint = trainer.last_path if trainer.last_path.is_file() else None
    result.best_checkpoint = trainer.best_path if trainer.best_path.is_file() else None
    result.best_epoch = st.best_epoch
    result.stopped_by = st.stopped_by
    result.train_seconds = trainer.clock.elapsed()
    if st.best_epoch is not None:
        best = next((h for h in st.history if h["epoch"] == st.best_epoch), {})
        result.best_metrics = {k: v for k, v in best.items() if k.startswith("val/")}
    result.seconds = time.perf_counter() - t0
    if error is not None:
        logger.error("training %s: %s", status, error)
    notify(tracker, "on_end", result)
