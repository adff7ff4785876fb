"""A dataset summary for tracking: counts, spacing and shape statistics, channel and label names.

It is built from the validated cases' geometry only and never holds case ids, file names or patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.training.datalist import CaseInfo

logger = logging.getLogger(__name__)


def _stats(rows: list[Sequence[float]]) -> dict[str, list[float]]:
    a = np.asarray(rows, dtype=np.float64)
    return {
        "min": np.round(a.min(axis=0), 4).tolist(),
        "median": np.round(np.median(a, axis=0), 4).tolist(),
        "max": np.round(a.max(axis=0), 4).tolist(),
    }


def dataset_summary(data: Any, cases: Sequence[CaseInfo], n_train: int, n_val: int) -> dict[str, Any]:
    """Summary of validated cases against the data contract ``data`` (a :class:`medseg.config.DataConfig`).

    Keys: ``n_cases``, ``n_train``, ``n_val``, ``channels``, ``labels``, ``spacing_mm`` and ``shape`` (min /
    median / max per axis of the original files), ``label_fraction`` (mean fraction of voxels per label),
    ``cases_with_label`` (how many cases contain each label).
    """
    if not cases:
        raise ValueError("no cases to summarise")
    total = {k: 0.0 for k in data.labels}
    present = {k: 0 for k in data.labels}
    for case in cases:
        size = float(np.prod(case.shape))
        for k in data.labels:
            count = case.label_voxels.get(int(k), 0)
            total[k] += count / size
            present[k] += int(count > 0)
    names = {int(k): str(v) for k, v in data.labels.items()}
    return {
        "n_cases": len(cases),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "channels": list(data.channel_names),
        "labels": {str(k): v for k, v in names.items()},
        "spacing_mm": _stats([c.spacing for c in cases]),
        "shape": _stats([c.shape for c in cases]),
        "label_fraction": {names[k]: round(v / len(cases), 6) for k, v in total.items()},
        "cases_with_label": {names[k]: v for k, v in present.items()},
    }
