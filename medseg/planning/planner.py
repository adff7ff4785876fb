"""``make_plan``: datalist -> fingerprint -> rules -> calibration -> ``plan.yaml`` + ``fingerprint.json``.

The plan is a config overlay holding only the keys the plan decides; ``medseg train --config BASE --plan
plan.yaml`` merges it over the config (before ``--set``). Without a base config the data contract is read from the
datalist (channel names from a ``dataset.json``, a CSV header or the first case folder; label names from the
``dataset.json``, else the label values found, named ``label_N``) and written into the plan as well.

On CPU the patch search keeps the *predicted* step time (FLOPs / measured convolution throughput) under a limit
(``--max-step-seconds``, else 2 s). When the calibrated step then takes more than 1.5x the limit -- judged by the
*fastest* timed step, since load on a shared machine only ever adds time (one busy second in three steps made the
median 2-3x the step's own time in ``benchmarks/real_data.py`` runs) -- the throughput is corrected by that
measurement and the plan is made once more (and calibrated again).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medseg.atomic import atomic_write_text
from medseg.config import MedsegConfig, apply_overrides, deep_merge, from_dict, load_raw
from medseg.errors import ConfigError
from medseg.plain import to_plain
from medseg.planning.calibrate import StepTiming, budget_epochs, measure_step
from medseg.planning.fingerprint import CT_BODY_THRESHOLD, Fingerprint, compute_fingerprint
from medseg.planning.geometry import median_shape, target_spacing
from medseg.planning.memory import DeviceBudget, device_budget
from medseg.planning.plan import Plan
from medseg.planning.rules import plan_from_fingerprint

logger = logging.getLogger(__name__)

#: the CPU step-time limit when none is given (seconds per training step)
CPU_MAX_STEP_SECONDS = 2.0
#: a measured step this many times over the limit triggers one re-plan with the measured throughput
RECALIBRATE_RATIO = 1.5
#: label values accepted while discovering the labels of a datalist without a config
_MAX_DISCOVERED_LABEL = 255


@dataclass
class PlanResult:
    plan: Plan
    fingerprint: Fingerprint
    plan_path: Path
    fingerprint_path: Path
    budget: DeviceBudget
    timing: StepTiming | None


def parse_modalities(items: Sequence[str]) -> dict[str, str]:
    """``["CT=CT", "T2=MR"]`` -> ``{"CT": "CT", "T2": "MR"}`` (``--modality CHANNEL=MODALITY``)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"--modality {item!r}: expected CHANNEL=MODALITY, e.g. CT=CT or T2=MR")
        out[name.strip()] = value.strip()
    return out


def _datalist_contract(path: Path) -> tuple[list[str], dict[int, str] | None]:
    """Channel names and (if stated) label names of a datalist without a config."""
    import csv

    from medseg.data.io import is_volume_file, volume_stem

    if path.is_dir() and (path / "dataset.json").is_file():
        path = path / "dataset.json"
    if path.suffix.lower() == ".json":
        meta = json.loads(path.read_text(encoding="utf-8"))
        cases = meta.get("cases") if isinstance(meta, Mapping) else meta
        channels = list(meta.get("channels", [])) if isinstance(meta, Mapping) else []
        if not channels and cases:
            channels = list(cases[0].get("channels", {}))
        labels = meta.get("labels") if isinstance(meta, Mapping) else None
        return channels, None if not labels else {int(k): str(v) for k, v in labels.items()}
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        return [h for h in header if h not in ("case_id", "label", "split")], None
    if path.is_dir():
        first = next((p for p in sorted(path.iterdir()) if p.is_dir() and not p.name.startswith(".")), None)
        if first is not None:
            stems = sorted(
                p.name if p.is_dir() else volume_stem(p.name)
                for p in first.iterdir()
                if p.is_dir() or is_volume_file(p)
            )
            return [s for s in stems if s != "label"], None
    raise ConfigError(f"{path}: cannot tell the channels of this datalist; pass --config naming data.channels")


def base_config(
    config_path: str | os.PathLike | None, datalist: Path, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], bool]:
    """The raw base config and whether its labels must be discovered from the label files."""
    if config_path is not None:
        return apply_overrides(load_raw(config_path), overrides), False
    channels, labels = _datalist_contract(datalist)
    if not channels:
        raise ConfigError(f"{datalist}: no channels found; pass --config naming data.channels")
    discover = labels is None
    if labels is None:
        labels = {0: "background", **{i: f"label_{i}" for i in range(1, _MAX_DISCOVERED_LABEL + 1)}}
    raw = {"data": {"channels": [{"name": c} for c in channels], "labels": labels}}
    return apply_overrides(raw, overrides), discover


def _n_train(entries: Sequence[Any], config: MedsegConfig, source: str) -> int:
    """Training cases of the split ``medseg train`` will make (explicit roles, a splits file or a seeded split)."""
    from medseg.training.split import choose_split

    tc = config.train
    train_cases, _ = choose_split(
        entries, splits=config.datalist.splits, fold=config.datalist.fold, validation=tc.val_every > 0,
        val_fraction=tc.val_fraction, folds=tc.folds, k=tc.fold, seed=tc.seed, source=source,
    )
    return len(train_cases)


def _cache_bytes(fp: Fingerprint, config: MedsegConfig) -> int:
    """What ``train.cache: memory`` holds: per voxel the channels and label (float32) and fg/bg indices (int64)."""
    if config.train.cache != "memory":
        return 0
    spacing, _ = target_spacing(fp)
    voxels = float(np.prod(median_shape(fp, spacing, None))) * len(fp.cases)
    return int(voxels * (4 * len(fp.channels) + 4 + 8))


def _write_plan(path: Path, overlay: Mapping[str, Any], datalist: Path, fingerprint_path: Path) -> None:
    header = (
        "# medseg plan: a config overlay (only the keys the plan decided), made from the dataset fingerprint\n"
        f"# {fingerprint_path.name} of {datalist.name}. Use: medseg train --config BASE.yaml --plan {path.name}\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(to_plain(overlay), sort_keys=False))


def make_plan(
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    *,
    config_path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    device: str | None = None,
    budget_minutes: float | None = None,
    modalities: Mapping[str, str] | None = None,
    max_step_seconds: float | None = None,
    calibration_steps: int = 3,
    calibrate: bool = True,
    seed: int = 0,
) -> PlanResult:
    """Fingerprint ``datalist``, plan a config overlay for ``device`` and write ``out`` (plan.yaml) and
    ``fingerprint.json`` beside it. See :mod:`medseg.planning.rules` for the rules.

    Raises:
        ConfigError: bad options, an unreadable datalist, or no plan that fits the device (:class:`PlanError`).
    """
    from medseg.training.datalist import load_datalist

    if budget_minutes is not None and (not math.isfinite(budget_minutes) or budget_minutes <= 0):
        raise ConfigError(f"--budget-minutes: must be > 0, got {budget_minutes}")
    if budget_minutes is not None and not calibrate:
        raise ConfigError("--budget-minutes needs the calibration (drop --no-calibrate)")
    datalist, out = Path(datalist), Path(out)
    raw, discover_labels = base_config(config_path, datalist, overrides)
    config = from_dict(MedsegConfig, raw)
    if config.data.file_dims != 3:
        raise ConfigError("medseg plan: only 3D volumes are supported (data.spatial_dims: 3, no slice_axis)")
    entries = load_datalist(datalist, config.data.channel_names, label=config.datalist.label,
                            fmt=config.datalist.format)
    thresholds = sorted({0.0, CT_BODY_THRESHOLD, float(config.train.foreground_threshold)})
    fp = compute_fingerprint(entries, config.data, crop_thresholds=thresholds, seed=seed)
    if discover_labels:
        found = sorted({v for c in fp.cases for v in c.labels} | {0})
        labels = {v: ("background" if v == 0 else f"label_{v}") for v in found}
        raw = deep_merge(raw, {})
        raw["data"]["labels"] = labels
        config = from_dict(MedsegConfig, raw)
        fp = Fingerprint(fp.channels, labels, fp.orientation, fp.cases, fp.foreground, fp.image_range,
                         fp.modality_hints)
    fingerprint_path = fp.save(out.with_name("fingerprint.json"))

    dev = device or config.train.device
    is_cpu = dev == "cpu" or (dev == "auto" and not _cuda())
    limit = max_step_seconds if max_step_seconds is not None else (CPU_MAX_STEP_SECONDS if is_cpu else None)
    budget = device_budget(dev, cache_bytes=_cache_bytes(fp, config), max_step_seconds=limit)
    n_train = _n_train(entries, config, str(datalist))
    plan = plan_from_fingerprint(fp, config, budget, modality_overrides=modalities, n_train=n_train)
    timing = None
    if calibrate:
        timing = measure_step(from_dict(MedsegConfig, deep_merge(raw, plan.overlay)), budget.device,
                              steps=calibration_steps, seed=seed)
        predicted = budget.predicted_seconds(plan.cost) if plan.cost is not None else None
        fastest = min(timing.all_seconds)  # load on a shared machine only ever adds time
        if limit is not None and predicted and fastest > RECALIBRATE_RATIO * limit:
            # the throughput probe was optimistic for this network: correct it by the measurement, plan once more
            measured_flops = budget.flops_per_second * predicted / fastest
            logger.info("step took %.2f s (predicted %.2f s): re-planning at %.3g FLOP/s", fastest,
                        predicted, measured_flops)
            budget = dataclasses.replace(budget, flops_per_second=measured_flops)
            plan = plan_from_fingerprint(fp, config, budget, modality_overrides=modalities, n_train=n_train)
            plan.decide("(re-planned)", f"{fastest:.2f} s",
                        f"the first plan's fastest measured step exceeded {RECALIBRATE_RATIO:g} x the {limit:.3g} s "
                        "limit "
                        f"(predicted {predicted:.2f} s): throughput corrected to {measured_flops / 1e9:.3g} GFLOP/s",
                        in_overlay=False)
            timing = measure_step(from_dict(MedsegConfig, deep_merge(raw, plan.overlay)), budget.device,
                                  steps=calibration_steps, seed=seed)
    if config_path is None:  # the data contract came from the datalist: the plan carries it
        plan.decide("data.labels", dict(config.data.labels),
                    "the label values found in the label files" if discover_labels else "the datalist's labels")
    if device is not None:
        plan.decide("train.device", budget.device, "--device")

    if timing is not None:
        planned = from_dict(MedsegConfig, deep_merge(raw, plan.overlay))
        if budget_minutes is not None:
            budget_epochs(plan, planned, timing, budget_minutes)
        else:
            plan.decide("(step time)", f"{timing.seconds:.3f} s",
                        f"measured on {timing.device} ({timing.steps} steps after one untimed); no "
                        "--budget-minutes, so train.epochs is the config's", in_overlay=False)
    try:
        from_dict(MedsegConfig, deep_merge(raw, plan.overlay))
    except ConfigError as exc:  # pragma: no cover - a rule produced an invalid value
        raise ConfigError(f"the plan does not validate against the config: {exc}") from exc
    _write_plan(out, plan.overlay, datalist, fingerprint_path)
    logger.info("wrote %s and %s", out, fingerprint_path)
    return PlanResult(plan, fp, out, fingerprint_path, budget, timing)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
