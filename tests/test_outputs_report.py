"""Per-case report: volumes from the affine, hashes, provenance, input description without identifiers."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from model_specs import CT_WINDOW, channel, contract
from monai.data import MetaTensor

from medseg.checkpoint import ModelSpec
from medseg.outputs.report import (
    build_report,
    canonical_json,
    collect_reports,
    config_hash,
    describe_input,
    file_sha256,
    label_counts,
    label_volumes,
    model_provenance,
    uid_hash,
    write_report,
)

LABELS = {0: "background", 1: "liver", 2: "spleen"}


def _spec(config: dict | None = None) -> ModelSpec:
    return ModelSpec(
        network={"name": "unet", "channels": [4, 8]},
        contract=contract([channel("CT", CT_WINDOW)], LABELS),
        config=config if config is not None else {"train": {"lr": 0.001, "epochs": 2}, "seed": 1},
    )


def _rotation(degrees: float) -> np.ndarray:
    t = math.radians(degrees)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1.0]])


def test_label_volumes_use_the_affine_determinant() -> None:
    label = np.zeros((6, 5, 4), dtype=np.uint8)
    label[0:2, 0:5, 0] = 1  # 10 voxels
    label[5, 4, 3] = 2  # 1 voxel
    affine = np.eye(4)
    affine[:3, :3] = _rotation(30) @ np.diag([2.0, 3.0, 4.0])  # oblique grid, 24 mm^3 voxels
    volumes = label_volumes(label[None], affine, LABELS)
    assert volumes["liver"] == {"value": 1, "voxels": 10, "volume_ml": pytest.approx(0.24)}
    assert volumes["spleen"]["volume_ml"] == pytest.approx(0.024)
    assert "background" not in volumes


def test_label_volumes_declared_but_absent_and_2d_area() -> None:
    label = np.zeros((4, 4), dtype=np.int64)
    label[0, 0:3] = 2
    volumes = label_volumes(label, np.diag([0.5, 0.25, 1.0]), LABELS)
    assert volumes["liver"] == {"value": 1, "voxels": 0, "area_mm2": 0.0}
    assert volumes["spleen"]["area_mm2"] == pytest.approx(3 * 0.125)


def test_label_volumes_refuse_undeclared_values() -> None:
    label = np.zeros((3, 3, 3), dtype=np.int64)
    label[1, 1, 1] = 5
    with pytest.raises(ValueError, match=r"values \[5\] that are not declared labels \[1, 2\]"):
        label_volumes(label, np.eye(4), LABELS)
    with pytest.raises(ValueError, match=r"shape \(3, 3, 3\) does not fit affine of shape \(3, 3\)"):
        label_volumes(label, np.eye(3), LABELS)
    label[1, 1, 1] = 2
    volumes = label_volumes(label, np.eye(4), {1: "x", 2: "x"})
    assert volumes == {
        "x_1": {"value": 1, "voxels": 0, "volume_ml": 0.0},
        "x_2": {"value": 2, "voxels": 1, "volume_ml": 0.001},
    }


def test_hashes() -> None:
    config = {"b": [1, 2, (3, 4)], "a": {"y": 1.5, "x": "é"}}
    expected = hashlib.sha256(
        json.dumps(
            {"a": {"x": "é", "y": 1.5}, "b": [1, 2, [3, 4]]}, separators=(",", ":"), ensure_ascii=False
        ).encode()
    ).hexdigest()
    assert config_hash(config) == expected
    assert (
        config_hash({"a": {"y": 1.5, "x": "é"}, "b": [1, 2, [3, 4]]}) == expected
    )  # key order is irrelevant
    assert config_hash({**config, "b": [1, 2, 3]}) != expected
    assert canonical_json({"z": np.float32(0.5), "p": Path("a/b")}) == '{"p":"a/b","z":0.5}'
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert uid_hash(uid) == hashlib.sha256(uid.encode()).hexdigest()
    assert uid_hash(uid, b"k") == hmac.new(b"k", uid.encode(), hashlib.sha256).hexdigest() != uid_hash(uid)


def test_model_provenance(tmp_path: Path) -> None:
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights" * 1000)
    spec = _spec()
    prov = model_provenance(spec, checkpoint_path=ckpt, source_uri="models:/abdomen-ct/3")
    assert prov["model_name"] == "abdomen-ct" and prov["model_version"] == "3"
    assert prov["weights_sha256"] == hashlib.sha256(b"weights" * 1000).hexdigest() == file_sha256(ckpt)
    assert prov["config_hash"] == config_hash(spec.config) and prov["network"] == "unet"
    alias = model_provenance(spec, source_uri="models:/abdomen-ct@champion")
    assert (alias["model_name"], alias["model_version"], alias["weights_sha256"]) == (
        "abdomen-ct",
        "@champion",
        None,
    )
    local = model_provenance(spec, checkpoint_path=ckpt, source_uri=str(ckpt), model_version=7)
    assert (local["model_name"], local["model_version"]) == ("best", "7")


def _image(meta: dict) -> MetaTensor:
    affine = torch.diag(torch.tensor([-0.8, -0.8, 2.5, 1.0], dtype=torch.float64))
    return MetaTensor(torch.zeros(1, 8, 6, 4), affine=affine, meta=meta)


def test_describe_input_keeps_no_identifiers() -> None:
    meta = {
        "modality": "CT",
        "series_uid": "1.2.3.4",
        "study_uid": "1.2.3",
        "frame_of_reference_uid": "1.2.3.9",
        "filename_or_obj": "/data/DOE^JOHN/series1",
        "PatientName": "DOE^JOHN",
        "series_description": "DOE JOHN abdomen",
    }
    described = describe_input(_image(meta), uid_key=b"secret", channels=["CT"])
    assert described["shape"] == [8, 6, 4]
    assert described["spacing_mm"] == pytest.approx([0.8, 0.8, 2.5])
    assert (
        described["orientation"] == "LPS"
        and described["modality"] == "CT"
        and described["channels"] == ["CT"]
    )
    assert described["series_uid_hash"] == uid_hash("1.2.3.4", b"secret")
    text = json.dumps(described)
    for secret in ("DOE", "JOHN", "1.2.3.4", "/data"):
        assert secret not in text


def test_build_write_and_collect_reports(tmp_path: Path) -> None:
    spec = _spec()
    image = _image({"modality": "CT", "series_uid": "1.2.3.4"})
    label = torch.zeros(1, 8, 6, 4, dtype=torch.int64)
    label[0, 0:2, 0:3, 0:2] = 1  # 12 voxels of 1.6 mm^3
    reports = []
    for n in range(2):
        prov = {**model_provenance(spec, source_uri="models:/abdomen-ct/3"), "case_id": f"c{n}"}
        report = build_report(
            image=image, label=label, spec=spec, provenance=prov, timing={"infer_s": 1.5 + n}, notes=["x"]
        )
        paths = write_report(
            report, tmp_path / f"case{n}" / "report.json", tmp_path / f"case{n}" / "report.csv"
        )
        assert [p.name for p in paths] == ["report.json", "report.csv"]
        reports.append(report)
    report = reports[0]
    assert report["format"] == "medseg-case-report" and report["case_id"] == "c0"
    assert report["labels"]["liver"]["volume_ml"] == pytest.approx(12 * 0.8 * 0.8 * 2.5 / 1000)
    assert report["labels"]["spleen"]["voxels"] == 0
    assert report["provenance"]["config_hash"] == config_hash(spec.config)
    assert json.loads((tmp_path / "case0" / "report.json").read_text()) == json.loads(json.dumps(report))

    with open(tmp_path / "case0" / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1
    assert float(rows[0]["volume_ml.liver"]) == pytest.approx(0.0192)
    assert rows[0]["provenance.model_name"] == "abdomen-ct" and rows[0]["timing.infer_s"] == "1.5"

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "report.json").write_text("{not json")
    summary = collect_reports(tmp_path)
    with open(summary, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["report"] for r in rows] == ["case0", "case1"]
    assert [r["case_id"] for r in rows] == ["c0", "c1"]
    assert [float(r["timing.infer_s"]) for r in rows] == [1.5, 2.5]
    assert not [p for p in tmp_path.rglob(".medseg-tmp-*")]


def test_label_counts_match_unique_for_every_path() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 4, size=(256, 256, 65), dtype=np.uint8)  # > 4M voxels: several bincount chunks
    values, counts = np.unique(big, return_counts=True)
    expected = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v}
    assert label_counts(big) == expected
    assert label_counts(torch.from_numpy(big[:8].astype(np.int64))) == {
        int(v): int(c) for v, c in zip(*np.unique(big[:8], return_counts=True), strict=True) if v
    }
    assert label_counts(np.array([[True, False], [True, True]])) == {1: 3}
    assert label_counts(np.array([-2, -2, 0, 70000])) == {-2: 2, 70000: 1}  # unusual values: np.unique path
    assert label_counts(np.zeros((0, 3), dtype=np.uint8)) == {}
