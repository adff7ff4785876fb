"""The MLflow ``pyfunc`` face of a registered medseg model: the loader module MLflow imports by name.

A medseg model is logged with ``loader_module="medseg.inference.pyfunc"`` and the checkpoint as its data file,
so ``mlflow.pyfunc.load_model("models:/NAME@champion")`` calls :func:`_load_pyfunc` and gets a
:class:`PyfuncSegmenter`. This module imports neither MLflow nor :mod:`medseg.tracking`: MLflow finds it by name,
so the registry (which logs models) and inference (which runs them) do not import each other.

Input (geometry travels with the data, so labels come back on the input grid): a ``pandas.DataFrame`` with one
row per case, one column per channel of the model's data contract holding a NIfTI/NRRD/MHA file or a DICOM series
folder, and an optional ``output`` column naming a ``.nii.gz`` to write the label map to (atomically; an existing
file is never replaced). A dict ``{channel: path}`` or a list of such dicts is accepted too.

Output: a ``pandas.DataFrame`` with one row per case: ``output`` (the file written, or None), ``shape``, one
``<label name>_ml`` volume column per foreground label and, for rows without ``output``, ``label`` holding the
label map (a NumPy integer array in the input's voxel order).

``medseg.load_model(uri)`` remains the direct path (no MLflow model wrapper, options such as TTA and devices).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.inference.predictor import Predictor
from medseg.outputs.report import label_volumes

logger = logging.getLogger(__name__)

OUTPUT_COLUMN = "output"


def _rows(model_input: Any) -> list[dict[str, Any]]:
    if hasattr(model_input, "to_dict") and hasattr(model_input, "columns"):  # a pandas DataFrame
        return [dict(r) for r in model_input.to_dict(orient="records")]
    if isinstance(model_input, Mapping):
        return [dict(model_input)]
    if isinstance(model_input, list | tuple) and all(isinstance(r, Mapping) for r in model_input):
        return [dict(r) for r in model_input]
    raise TypeError(
        "medseg pyfunc input: a DataFrame (or dict, or list of dicts) with one column per channel holding a file "
        f"or DICOM folder path, and an optional '{OUTPUT_COLUMN}' column; got {type(model_input).__name__}"
    )


class PyfuncSegmenter:
    """Segments cases given as file paths with one :class:`Predictor` (loaded once)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def _segment_row(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        spec = self.predictor.spec
        missing = [c for c in spec.channel_names if not row.get(c)]
        if missing:
            raise ValueError(f"medseg pyfunc input row {index}: no path for channel(s) {missing}; the model's "
                             f"channels are {spec.channel_names}")
        out = row.get(OUTPUT_COLUMN)
        out = Path(str(out)) if out is not None and str(out) not in ("", "nan", "None") else None
        if out is not None and out.exists():
            raise FileExistsError(f"{out}: exists; the pyfunc model never replaces a file (choose another output)")
        image, label = self.predictor.predict_case({c: Path(str(row[c])) for c in spec.channel_names})
        arr = np.asarray(label[0].cpu().numpy())
        result: dict[str, Any] = {OUTPUT_COLUMN: None, "shape": list(arr.shape)}
        for name, entry in label_volumes(arr, image.affine, spec.labels).items():
            result[f"{name}_ml"] = float(entry["volume_ml"])
        if out is None:
            result["label"] = arr
        else:
            from medseg.data.io import save_label

            result[OUTPUT_COLUMN] = str(save_label(label, out, reference=image))
        return result

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        rows = _rows(model_input)
        return pd.DataFrame([self._segment_row(r, i) for i, r in enumerate(rows)])


def _load_pyfunc(data_path: str | os.PathLike) -> PyfuncSegmenter:
    """MLflow's entry point: ``data_path`` is the checkpoint file logged with the model."""
    path = Path(data_path)
    if path.is_dir():  # MLflow passes the model folder when no data file was logged
        raise FileNotFoundError(f"{path}: the MLflow model holds no medseg checkpoint")
    return PyfuncSegmenter(Predictor.from_checkpoint(path))
