"""The MLflow pyfunc face end to end, no mocks: register a medseg model, load it with ``mlflow.pyfunc.load_model``,
predict from file paths, and get the labels ``medseg segment`` writes, on the input grid (embedded SQLite store and
a real ``mlflow server``)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medseg.checkpoint import Checkpoint, ModelSpec, save_checkpoint
from medseg.cli import main as cli_main
from medseg.contract import DataContract
from medseg.nets import build_network
from medseg.tracking import RunLogger, TrackingConfig, register_model, resolve_tracking_uri

NET = {"name": "unet", "spatial_dims": 3, "in_channels": 2, "out_channels": 3, "features": [4, 8]}
LABELS = {0: "background", 1: "core", 2: "penumbra"}
# an LAS, anisotropic, off-origin grid: any axis or sign slip in the pyfunc path changes the labels or the affine
AFFINE = np.array([[-0.9, 0, 0, 40.0], [0, 0.9, 0, -12.0], [0, 0, 2.5, 7.0], [0, 0, 0, 1]])


@pytest.fixture(autouse=True)
def _quiet():
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    cfg = dict(NET)
    torch.manual_seed(3)
    net = build_network(cfg.pop("name"), **cfg)
    spec = ModelSpec(network=dict(NET), contract=DataContract.from_dict({"data": {"channels": [{"name": n, "normalization": {"name": "zscore"}, "series": None} for n in ("CBF", "TMAX")], "labels": LABELS, "spacing": None, "orientation": "RAS", "spatial_dims": 3}, "patch_size": [16, 16, 8]}))  # fmt: skip
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", Checkpoint(net.state_dict(), spec))


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(1)
    for name in ("CBF", "TMAX"):
        data = rng.normal(size=(23, 19, 11)).astype(np.float32)
        data[5:15, 4:12, 2:8] += 3.0  # structure, so that the labels are not noise alone
        nib.save(nib.Nifti1Image(data, AFFINE), folder / f"{name}.nii.gz")
    return folder


@pytest.fixture(params=["embedded", "server"])
def registered(request, checkpoint, tmp_path) -> str:
    """The tracking URI of a store where ``models:/pyfunc-test@champion`` is the checkpoint."""
    if request.param == "embedded":
        uri = resolve_tracking_uri(None, {}, tmp_path / "mlflow")
    else:
        uri = request.getfixturevalue("mlflow_server")["uri"]
    cfg = TrackingConfig(experiment=f"pyfunc-{request.param}", timeout_s=30)
    with RunLogger(cfg, uri, tmp_path / "spool").start("train") as run:
        spec = torch.load(checkpoint, weights_only=True)["spec"]
        register_model(run, checkpoint, spec, "pyfunc-test")
    return uri


def test_pyfunc_predicts_the_labels_medseg_segment_writes(registered, study, tmp_path, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered)
    # the reference: medseg segment with the same model URI, found through MLFLOW_TRACKING_URI
    code = cli_main(["segment", str(study), str(tmp_path / "seg"), "--model", "models:/pyfunc-test@champion",
                     "--formats", "nifti", "--no-progress"])  # fmt: skip
    assert code == 0
    (reference,) = (tmp_path / "seg").glob("*/label.nii.gz")
    ref = nib.load(reference)
    ref_labels = np.asarray(ref.dataobj)
    assert set(np.unique(ref_labels)) == {0, 1, 2}  # a real label map, not all background

    model = mlflow.pyfunc.load_model("models:/pyfunc-test@champion")
    paths = {"CBF": str(study / "CBF.nii.gz"), "TMAX": str(study / "TMAX.nii.gz")}
    out_file = tmp_path / "pyfunc" / "label.nii.gz"
    out_file.parent.mkdir()
    table = model.predict(pd.DataFrame([{**paths, "output": str(out_file)}, paths]))
    assert len(table) == 2
    written = nib.load(table.loc[0, "output"])
    np.testing.assert_array_equal(np.asarray(written.dataobj), ref_labels)
    np.testing.assert_allclose(written.affine, AFFINE, atol=1e-6)
    np.testing.assert_allclose(written.affine, ref.affine, atol=1e-6)
    # the row without an output returns the label map itself, in the input's voxel order
    np.testing.assert_array_equal(table.loc[1, "label"], ref_labels)
    voxel_ml = 0.9 * 0.9 * 2.5 / 1000
    assert table.loc[0, "core_ml"] == pytest.approx(float((ref_labels == 1).sum()) * voxel_ml)
    assert table.loc[0, "penumbra_ml"] == pytest.approx(float((ref_labels == 2).sum()) * voxel_ml)

    # an existing file is never replaced; a missing channel is named
    with pytest.raises(Exception, match="never replaces"):
        model.predict(pd.DataFrame([{**paths, "output": str(out_file)}]))
    with pytest.raises(Exception, match="TMAX"):
        model.predict(pd.DataFrame([{"CBF": paths["CBF"]}]))
