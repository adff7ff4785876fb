"""A synthetic batch output folder (ledger + case reports, no images) for the review page's tests and benchmark.

:func:`write_batch_output` records one run in a real ledger (:class:`medseg.batch.ledger.Ledger`) and writes a
``report.json`` per DONE case with seeded log-normal volumes per label and their objects (components, border
contact), as :func:`medseg.outputs.write_case_outputs` would. Chosen cases can be made volume outliers (a factor
on one label), empty, fragmented, quarantined or failed; the rest are unremarkable (volumes within about 5%,
one component, away from the border), so a test knows exactly which cases the review must flag.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["SyntheticRun", "write_batch_output"]

_BASE_ML = (1500.0, 150.0, 12.0, 60.0, 5.0, 300.0)
_SPREAD = 0.02  # log-normal sigma of unremarkable volumes


@dataclass
class SyntheticRun:
    """What to write, by case index: ``outliers`` (label, volume factor), ``empty`` (label), ``fragmented`` (label,
    components), ``border`` (label), ``quarantined`` (reason code), ``failed``; ``model`` adds provenance fields.
    :func:`write_batch_output` fills ``keys`` (case index -> item key)."""

    n_cases: int
    labels: Sequence[str] = ("liver", "spleen")
    outliers: Mapping[int, tuple[str, float]] = field(default_factory=dict)
    empty: Mapping[int, str] = field(default_factory=dict)
    fragmented: Mapping[int, tuple[str, int]] = field(default_factory=dict)
    border: Mapping[int, str] = field(default_factory=dict)
    quarantined: Mapping[int, str] = field(default_factory=dict)
    failed: Sequence[int] = ()
    seed: int = 0
    model: Mapping[str, object] = field(default_factory=dict)
    keys: dict[int, str] = field(default_factory=dict)


def _key(i: int) -> str:
    return f"{i:06d}{(i * 2654435761) % (1 << 64):018x}"[:24]


def _report(run: SyntheticRun, i: int, key: str, rng: np.random.Generator) -> dict:
    labels, objects = {}, {}
    for value, name in enumerate(run.labels, start=1):
        ml = _BASE_ML[(value - 1) % len(_BASE_ML)] * float(np.exp(rng.normal(0.0, _SPREAD)))
        comps, border = 1, False
        if run.outliers.get(i, ("", 1.0))[0] == name:
            ml *= run.outliers[i][1]
        if run.empty.get(i) == name:
            ml = 0.0
        if run.fragmented.get(i, ("", 0))[0] == name:
            comps = run.fragmented[i][1]
        border = run.border.get(i) == name
        voxels = int(round(ml * 1000.0 / 1.5))  # 1.5 mm^3 voxels
        labels[name] = {"value": value, "voxels": voxels, "volume_ml": voxels * 1.5 / 1000.0}
        objects[name] = {
            "value": value,
            "components": 0 if voxels == 0 else comps,
            "largest_voxels": voxels,
            "touches_border": border and voxels > 0,
        }
    provenance = {"model_name": "synthetic", "model_version": "1", "weights_sha256": "0" * 64, **run.model}
    return {
        "format": "medseg-case-report",
        "format_version": 1,
        "created": "2024-01-01T00:00:00+00:00",
        "case_id": key,
        "provenance": {**provenance, "case_id": key},
        "input": {"shape": [512, 512, 300], "spacing_mm": [0.8, 0.8, 1.5], "spatial_dims": 3},
        "labels": labels,
        "objects": objects,
        "timing": {"infer_s": 1.0},
        "outputs": {},
        "notes": [],
    }


def write_batch_output(folder: str | os.PathLike, run: SyntheticRun) -> SyntheticRun:
    """Write the ledger, ``batch-report.json`` and the case reports of ``run`` into ``folder`` (created)."""
    from medseg.atomic import atomic_write_text
    from medseg.batch.ledger import LEDGER_FILE, Ledger
    from medseg.batch.report import REPORT_JSON

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(run.seed)
    run.keys = {i: _key(i) for i in range(run.n_cases)}
    with Ledger.open(out / LEDGER_FILE) as ledger:
        run_id = ledger.begin_run("synthetic", {"formats": ["report"], "workers": 1})
        ledger.sync(((run.keys[i], "series", run.quarantined.get(i)) for i in range(run.n_cases)), run_id)
        for i in range(run.n_cases):
            key = run.keys[i]
            if i in run.quarantined:
                continue
            ledger.mark_started(key)
            if i in run.failed:
                ledger.mark_failed(key, "RuntimeError: synthetic failure", seconds=0.5)
                continue
            case = out / key
            case.mkdir(exist_ok=True)
            (case / "report.json").write_text(json.dumps(_report(run, i, key, rng), indent=2))
            ledger.mark_done(key, output=key, checksums={}, formats=["report"], timings={"total": 1.0})
        ledger.end_run(run_id, ledger.counts(run_id=run_id))
    model = {"model_name": "synthetic", "model_version": "1", "weights_sha256": "0" * 64, **run.model}
    atomic_write_text(out / REPORT_JSON, json.dumps({"model": model}, indent=2))
    return run
