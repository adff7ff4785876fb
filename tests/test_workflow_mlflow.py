"""Train + track + register end to end: embedded SQLite store, a real `mlflow server`, an unreachable server,
and no patient identifiers anywhere in the run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import medseg
from medseg.batch.provenance import batch_provenance
from medseg.inference import Predictor
from medseg.inference.options import InferenceOptions
from medseg.synthetic.dataset import write_perfusion_dataset
from medseg.synthetic.dicom_writer import write_dicom_series
from medseg.tracking import resolve_tracking_uri
from medseg.workflows import train_and_register

CANARY_NAME = "CANARY^ZEBRA"
CANARY_ID = "CANARYID7731"
CANARY_FOLDER = "Zebra_Canary_Patient"
TINY = [
    "train.epochs=2", "network.features=[4,8,16]", "train.patch_size=[16,16,8]", "train.val_every=1",
    "train.num_workers=0", "train.batch_size=1", "train.samples_per_case=1", "train.val_fraction=0.25",
    "tracking.registered_model=tiny-perfusion",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4 tiny perfusion cases under a canary folder name; case 0's CBF is a DICOM series with canary patient tags."""
    root = tmp_path_factory.mktemp("data") / CANARY_FOLDER
    ds = write_perfusion_dataset(root, 4, shape=(24, 24, 12))
    meta = json.loads(ds.read_text())
    case = meta["cases"][0]
    import nibabel as nib

    img = nib.load(str(root / case["channels"]["CBF"]))
    write_dicom_series(
        np.asarray(img.dataobj),
        img.affine,
        root / "case_000" / f"CBF_{CANARY_FOLDER}",
        modality="MR",
        series_description="CBF map",
        patient_name=CANARY_NAME,
        patient_id=CANARY_ID,
        rescale_slope=0.01,
        rescale_intercept=0.0,
    )
    case["channels"]["CBF"] = f"case_000/CBF_{CANARY_FOLDER}"
    ds.write_text(json.dumps(meta))
    return ds


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _check_registered_run(uri: str, result, tmp_path: Path) -> None:
    assert result.train.succeeded and result.model is not None
    client = _client(uri)
    version = client.get_model_version_by_alias("tiny-perfusion", "champion")
    assert int(version.version) == int(result.model.version) and version.run_id == result.run_id
    run = client.get_run(result.run_id)
    assert {"train/loss", "val/dice_mean"} <= set(run.data.metrics)
    assert run.data.params["network.name"] == "unetpp"
    history = client.get_metric_history(result.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]

    # the registered model predicts exactly what the in-memory model predicts
    predictor = medseg.load_model(
        "models:/tiny-perfusion@champion",
        InferenceOptions(device="cpu"),
        tracking_uri=uri,
        cache_dir=tmp_path / "cache",
    )
    reference = Predictor.from_checkpoint(result.train.best_checkpoint, InferenceOptions(device="cpu"))
    x = torch.randn(1, 3, 24, 24, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(predictor.probabilities(x), reference.probabilities(x))
    assert predictor.spec.to_dict() == reference.spec.to_dict()
    # the alias is resolved to the version it points to, which reports give as provenance
    assert (predictor.model_name, predictor.model_version) == ("tiny-perfusion", int(version.version))
    prov = batch_provenance(predictor)
    assert (prov["model_name"], prov["model_version"]) == ("tiny-perfusion", str(version.version))
    assert prov["source_uri"] == "models:/tiny-perfusion@champion"
    return run


def _all_text(client, run_id: str, dst: Path) -> str:
    """Every param, tag, metric name and text artifact of a run, as one string."""
    run = client.get_run(run_id)
    parts = [json.dumps(run.data.params), json.dumps(run.data.tags), json.dumps(list(run.data.metrics))]
    local = Path(client.download_artifacts(run_id, "", str(dst)))
    for f in local.rglob("*"):
        if f.is_file() and f.suffix in {".json", ".yaml", ".yml", ".txt", ".csv", ".MLmodel", ""}:
            parts.append(f.read_text(errors="replace"))
    return "\n".join(parts)


def test_embedded_sqlite_store(dataset, tmp_path):
    work = tmp_path / "work"
    uri = resolve_tracking_uri(None, {}, work)
    result = train_and_register("configs/demo.yaml", work, tracking_uri=uri, datalist=dataset, overrides=TINY)
    assert uri.startswith("sqlite:///") and (work / "mlruns.db").is_file()
    _check_registered_run(uri, result, tmp_path)
    # artifacts of the run: QC overlays, learning curve, config and dataset summary
    names = {a.path for a in _client(uri).list_artifacts(result.run_id)}
    assert {"qc", "plots", "config.json", "dataset_summary.json", "config.yaml"} <= names
    # no patient identifiers or folder names anywhere in the run
    text = _all_text(_client(uri), result.run_id, tmp_path / "artifacts")
    for canary in (CANARY_NAME, CANARY_ID, CANARY_FOLDER, "Zebra"):
        assert canary not in text


def test_real_mlflow_server(dataset, tmp_path, mlflow_server):
    uri = mlflow_server["uri"]
    result = train_and_register(
        "configs/demo.yaml", tmp_path / "work", tracking_uri=uri, datalist=dataset, overrides=TINY
    )
    _check_registered_run(uri, result, tmp_path)


def test_unreachable_server_training_completes(dataset, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    t0 = time.monotonic()
    result = train_and_register(
        "configs/demo.yaml",
        tmp_path / "work",
        tracking_uri=f"http://127.0.0.1:{port}",
        datalist=dataset,
        overrides=[*TINY, "tracking.timeout_s=2"],
    )
    elapsed = time.monotonic() - t0
    assert result.train.succeeded and result.train.best_checkpoint.is_file()
    assert result.model is None  # nothing registered without a server
    report = result.tracking_report
    assert report["offline"] and Path(report["spool_dir"]).is_dir()
    assert elapsed < 120


def test_segment_and_load_model_honour_mlflow_tracking_uri(dataset, tmp_path):
    """`medseg segment` and `medseg.load_model` find a models:/ URI through MLFLOW_TRACKING_URI, as MLflow's tools do."""
    import os
    import subprocess
    import sys

    work = tmp_path / "work"
    uri = resolve_tracking_uri(None, {}, work)
    result = train_and_register(
        "configs/demo.yaml", work, tracking_uri=uri, datalist=dataset, overrides=[*TINY, "train.epochs=1"]
    )
    assert result.model is not None
    meta = json.loads(dataset.read_text())
    study = tmp_path / "study"
    study.mkdir()
    for name, rel in meta["cases"][1]["channels"].items():
        (study / f"{name}.nii.gz").write_bytes((dataset.parent / rel).read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [
        sys.executable,
        "-m",
        "medseg.cli",
        "segment",
        str(study),
        str(tmp_path / "out"),
        "--model",
        "models:/tiny-perfusion@champion",
        "--formats",
        "nifti",
        "--no-progress",
    ]
    without = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert without.returncode == 2 and "MLFLOW_TRACKING_URI" in without.stderr, without.stderr
    assert "Traceback" not in without.stderr
    with_env = subprocess.run(
        cmd,
        env={**env, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert with_env.returncode == 0, with_env.stderr
    labels = list((tmp_path / "out").rglob("label.nii.gz"))
    assert len(labels) == 1
    import nibabel as nib

    ref = nib.load(str(study / "CBF.nii.gz"))
    out = nib.load(str(labels[0]))
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine)
    # the model resolves and loads from the environment's store
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        predictor = medseg.load_model(
            "models:/tiny-perfusion@champion", InferenceOptions(device="cpu"), cache_dir=tmp_path / "cache"
        )
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    assert predictor.model_name == "tiny-perfusion"


def test_a_diverged_run_is_failed_in_mlflow_and_registers_nothing(dataset, tmp_path):
    """A NaN loss stops training (TrainingDiverged): the MLflow run ends FAILED with the reason in its tags, its
    loss history is kept, and no model version is registered."""
    from medseg.training import TrainingDiverged

    work = tmp_path / "work"
    uri = resolve_tracking_uri(None, {}, work)
    overrides = [*TINY, "train.lr=1e30", "train.optimizer=sgd", "train.grad_clip=null"]
    with pytest.raises(TrainingDiverged, match="training diverged at epoch 0"):
        train_and_register("configs/demo.yaml", work, tracking_uri=uri, datalist=dataset, overrides=overrides)
    client = _client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("medseg-demo").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["medseg.status"] == "diverged" and "epoch 0" in run.data.tags["medseg.error"]
    assert client.search_model_versions("name='tiny-perfusion'") == []
    assert not (work / "checkpoints").exists() or not any((work / "checkpoints").glob("*.pt"))
