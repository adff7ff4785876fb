"""The validation Dice that training logs to MLflow is what ``medseg segment`` + ``medseg evaluate`` give.

One epoch of a tiny CT model (resampled to 2 x 2 x 3 mm, foreground crop, largest-component postprocessing, so
every step of the engine matters), trained and registered by ``medseg train`` against a SQLite MLflow store. The
registered model then segments the validation case with ``medseg segment`` and ``medseg evaluate`` scores it: the
per-label Dice must equal the logged ``val/dice/<label>`` of that epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medseg.synthetic.dataset import write_ct_dataset

LABELS = {0: "background", 1: "organ_1", 2: "organ_2"}
CONFIG = {
    "name": "val-engine",
    "data": {
        "channels": [{"name": "CT", "normalization": {"name": "ct_window", "center": 50, "width": 400}}],
        "labels": LABELS,
        "spacing": [2.0, 2.0, 3.0],
    },
    "network": {"name": "unet", "features": [4, 8, 16]},
    "train": {
        "epochs": 1,
        "batch_size": 2,
        "samples_per_case": 4,
        "patch_size": [16, 16, 8],
        "lr": 0.02,
        "val_every": 1,
        "num_workers": 0,
        "device": "cpu",
        "num_threads": 1,
        "crop_foreground": True,
        "foreground_threshold": -500.0,
        "foreground_margin": 3,
    },
    "inference": {"sw_batch_size": 2, "postprocess": {"largest_component": True}},
    "tracking": {"experiment": "val-engine", "registered_model": "val-engine"},
}


def _medseg(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "medseg.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert result.returncode == 0, f"medseg {args[0]} failed:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("valengine")
    dataset = write_ct_dataset(root / "data", 4, shape=(40, 40, 24), spacing=(1.5, 1.5, 2.5), seed=5, n_organs=2)
    listing = json.loads(dataset.read_text())
    for k, case in enumerate(listing["cases"]):
        case["split"] = "val" if k == 3 else "train"
    dataset.write_text(json.dumps(listing))
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    _medseg("train", "--config", str(config), "--datalist", str(dataset), "--workdir", str(root / "run"),
            "--quiet", env=env, cwd=root)  # fmt: skip
    return root, listing["cases"][3], env


def _logged_dice(env: dict[str, str]) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version_by_alias("val-engine", "champion")
    run = client.get_run(version.run_id)
    return {k: v for k, v in run.data.metrics.items() if k.startswith("val/dice/")}


def test_logged_validation_dice_equals_segment_then_evaluate(trained):
    root, case, env = trained
    logged = _logged_dice(env)
    assert set(logged) == {"val/dice/organ_1", "val/dice/organ_2"}

    study = root / "val_study"
    study.mkdir()
    (study / "CT.nii.gz").write_bytes((root / "data" / case["channels"]["CT"]).read_bytes())
    out = root / "segmented"
    _medseg("segment", str(study), str(out), "--model", "models:/val-engine@champion", "--formats", "nifti",
            "--no-progress", env=env, cwd=root)  # fmt: skip
    labels = list(out.glob("*/label.nii.gz"))
    assert len(labels) == 1
    scored = _medseg("evaluate", str(labels[0]), str(root / "data" / case["label"]), "--labels", "1", "2",
                     env=env, cwd=root)  # fmt: skip
    rows = [json.loads(line) for line in scored.stdout.splitlines() if line.startswith("{")]
    evaluated = {f"val/dice/{LABELS[int(r['label'])]}": float(r["dice"]) for r in rows}
    assert evaluated == pytest.approx(logged, abs=1e-9)
    # not a vacuous equality: the model found some organ tissue after one epoch
    assert max(evaluated.values()) > 0.0
