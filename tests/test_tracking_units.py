"""Tracking pieces that need no MLflow store: config validation, URI resolution, parameter flattening, privacy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

import medseg.tracking.store as store_module
from medseg.config.validate import from_dict
from medseg.errors import ConfigError
from medseg.tracking import (
    PatientDataError,
    TrackingConfig,
    check_no_patient_identifiers,
    find_patient_identifiers,
    flatten_params,
    redact_uri,
    resolve_tracking_uri,
    scrub_params,
)
from medseg.tracking.params import MAX_KEY_LENGTH, TRUNCATION_MARK
from medseg.tracking.privacy import check_text_file
from medseg.tracking.store import check_tracking, embedded_artifact_location, limit_mlflow_http, redact_text

# ---------------------------------------------------------------------------------------------- config


def test_tracking_config_defaults_and_from_yaml_data():
    cfg = from_dict(
        TrackingConfig, {"uri": "http://127.0.0.1:5000", "timeout_s": 2, "registered_model": "seg"}
    )
    assert cfg == TrackingConfig(uri="http://127.0.0.1:5000", timeout_s=2.0, registered_model="seg")
    assert TrackingConfig().experiment == "medseg" and TrackingConfig().alias == "champion"
    assert TrackingConfig().enabled is True and TrackingConfig().log_qc_images is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.timeout_s = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"uri": ""}, "tracking.uri: expected a tracking URI"),
        ({"uri": "./mlruns"}, "tracking.uri: './mlruns' has no scheme"),
        ({"experiment": " "}, "tracking.experiment: expected a non-empty name"),
        (
            {"registered_model": "a/b"},
            "tracking.registered_model: registered model name 'a/b' must not contain '/'",
        ),
        ({"registered_model": "seg@x"}, "must not contain '@'"),
        ({"registered_model": " seg"}, "leading or trailing spaces"),
        ({"alias": "has space"}, "tracking.alias: alias 'has space' must be 1-255 letters"),
        ({"alias": "latest"}, "tracking.alias: alias 'latest' is reserved"),
        ({"alias": "v3"}, "alias 'v3' is reserved"),
        ({"timeout_s": 0}, "tracking.timeout_s: must be > 0 and <= 600 seconds, got 0"),
        ({"timeout_s": float("nan")}, "tracking.timeout_s: must be > 0"),
        ({"timeout_s": "10"}, "tracking.timeout_s: expected a number of seconds"),
        ({"flush_timeout_s": -1}, "tracking.flush_timeout_s: must be > 0 and <= 600 seconds, got -1"),
        ({"flush_timeout_s": True}, "tracking.flush_timeout_s: expected a number of seconds, got True"),
        ({"enabled": "yes"}, "tracking.enabled: expected true or false, got 'yes'"),
        ({"log_qc_images": 1}, "tracking.log_qc_images: expected true or false"),
    ],
)
def test_tracking_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as info:
        TrackingConfig(**kwargs)
    assert message in str(info.value)


def test_resolve_tracking_uri_precedence(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://env-host:5000"}
    assert resolve_tracking_uri("http://cfg:1", env, tmp_path) == "http://cfg:1"
    assert resolve_tracking_uri(None, env, tmp_path) == "http://env-host:5000"
    embedded = resolve_tracking_uri(None, {"MLFLOW_TRACKING_URI": " "}, tmp_path / "work")
    assert embedded == f"sqlite:///{(tmp_path / 'work').resolve().as_posix()}/mlruns.db"
    assert embedded.startswith("sqlite:////")  # absolute path: four slashes
    assert embedded_artifact_location(embedded) == f"{(tmp_path / 'work').resolve().as_posix()}/mlartifacts"
    assert embedded_artifact_location("http://cfg:1") is None
    assert not (tmp_path / "work").exists()  # resolving creates nothing


def test_redaction_hides_passwords():
    assert redact_uri("http://bob:s3cret@host:5000/x") == "http://bob:***@host:5000/x"
    assert redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert redact_text("failed: https://bob:s3cret@host/api") == "failed: https://bob:***@host/api"


def test_check_tracking_local_and_closed_port(tmp_path):
    assert check_tracking(f"sqlite:///{tmp_path.as_posix()}/new/dir/mlruns.db", 1).ok
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status = check_tracking(f"sqlite:///{blocker.as_posix()}/mlruns.db", 1)
    assert not status.ok and "not a folder" in status.detail


def test_http_limits_are_set_once_per_process_and_keep_the_users_values(monkeypatch):
    monkeypatch.setattr(store_module, "_http_limited", False)  # as in a fresh process
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}  # the user's own value
    limit_mlflow_http("sqlite:////tmp/x/mlruns.db", 2.5, env)  # no HTTP: nothing to bound, nothing written
    assert env == {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"} and store_module._http_limited is False
    limit_mlflow_http("http://127.0.0.1:5000", 2.5, env)
    assert env == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}
    env["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "7"  # later calls never rewrite the environment
    limit_mlflow_http("https://tracking.example", 60, env)
    assert env == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "7", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3"}
    monkeypatch.setattr(store_module, "_http_limited", False)
    fresh: dict[str, str] = {}
    limit_mlflow_http("databricks", 0.2, fresh)
    assert fresh == {"MLFLOW_HTTP_REQUEST_TIMEOUT": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}


# ---------------------------------------------------------------------------------------------- params


@dataclasses.dataclass
class _Channel:
    name: str
    normalization: dict


def test_flatten_params_nested_config():
    params = {
        "data": {
            "channels": [_Channel("CBF", {"name": "zscore"}), _Channel("MTT", {"name": "clip", "upper": 99})],
            "labels": {0: "background", 1: "lesion"},
            "spacing": (1.0, 1.0, 2.0),
        },
        "optim": {"lr": np.float32(0.5), "betas": [0.9, 0.999], "amsgrad": False, "extra": {}},
        "out": Path("/tmp/x"),
        "note": None,
    }
    assert flatten_params(params) == {
        "data.channels.0.name": "CBF",
        "data.channels.0.normalization.name": "zscore",
        "data.channels.1.name": "MTT",
        "data.channels.1.normalization.name": "clip",
        "data.channels.1.normalization.upper": "99",
        "data.labels.0": "background",
        "data.labels.1": "lesion",
        "data.spacing": "[1.0, 1.0, 2.0]",
        "optim.lr": "0.5",
        "optim.betas": "[0.9, 0.999]",
        "optim.amsgrad": "False",
        "optim.extra": "{}",
        "out": "/tmp/x",
        "note": "None",
    }


def test_flatten_params_caps_values_and_sanitizes_keys():
    flat = flatten_params({"long": "x" * 7000, "bad key (mm)": 1, "k" * 300: 2, "../b": 3, "c//d/": 4})
    assert len(flat["long"]) == 6000 and flat["long"].endswith(TRUNCATION_MARK)
    assert flat["bad key _mm_"] == "1"
    long_keys = [k for k in flat if k.startswith("kkk")]
    assert len(long_keys) == 1 and len(long_keys[0]) == MAX_KEY_LENGTH
    assert flat["_/b"] == "3" and flat["c/d"] == "4"  # MLflow refuses keys that are not unique paths
    assert flatten_params({"v": "y" * 50}, max_value_length=20)["v"] == "y" * 6 + TRUNCATION_MARK
    assert flatten_params({}) == {}
    with pytest.raises(TypeError, match="params must be a mapping"):
        flatten_params([1, 2])


# ----------------------------------------------------------------------------------------- privacy (d)
CANARY_NAME = "CANARY^ZEBRA"
CANARY_ID = "CANARY-ID-7731"


@pytest.mark.parametrize(
    "data, key",
    [
        ({"PatientName": "anything"}, "PatientName"),
        ({"data": {"patient_id": CANARY_ID}}, "data.patient_id"),
        ({"meta": {"PatientBirthDate": "19700101"}}, "meta.PatientBirthDate"),
        ({"Patient ID": 3}, "Patient ID"),
        ({"OtherPatientIDs": "x"}, "OtherPatientIDs"),
        ({"AccessionNumber": "A1"}, "AccessionNumber"),
        ({"case": {"StudyInstanceUID": "x"}}, "case.StudyInstanceUID"),
        ({"who": CANARY_NAME}, "who"),
        ({"tag": "(0010,0020)"}, "tag"),
        ({"header": "{'PatientID': '" + CANARY_ID + "'}"}, "header"),
        ({"cases": ["ok", "PatientName=" + CANARY_NAME]}, "cases.1"),
        ({"series": "1.2.840.113619.2.55.3.604688119"}, "series"),
    ],
)
def test_patient_identifiers_are_refused(data, key):
    findings = find_patient_identifiers(data)
    assert [f.split(":")[0] for f in findings] == [key]
    with pytest.raises(PatientDataError) as info:
        check_no_patient_identifiers(data, "run parameters")
    message = str(info.value)
    assert message.startswith("refusing to send run parameters to MLflow") and key in message
    assert CANARY_NAME not in message and CANARY_ID not in message  # errors never echo the values


@pytest.mark.parametrize(
    "data",
    [
        {"group_by": "PatientID"},  # names a column, carries no identifier
        {"data": {"spacing": [1.0, 1.0, 2.0], "labels": {0: "background", 1: "lesion"}}},
        {"series": {"description": "^T1.*", "modality": "MR"}},
        {"version": "3.17.2", "num_patients": 12, "patient_level_split": True},
    ],
)
def test_ordinary_configs_pass(data):
    assert find_patient_identifiers(data) == []


def test_scrub_params_removes_only_identifiers(caplog):
    params = {
        "lr": 0.01,
        "data": {"PatientName": CANARY_NAME, "channels": ["CBF", CANARY_NAME], "spacing": [1, 1]},
        "who": CANARY_NAME,
        "case_id": "case_007",
    }
    with caplog.at_level("WARNING", logger="medseg.tracking.privacy"):
        clean = scrub_params(params)
    assert clean == {"lr": 0.01, "data": {"channels": ["CBF"], "spacing": [1, 1]}, "case_id": "case_007"}
    assert params["data"]["PatientName"] == CANARY_NAME  # the input is not modified
    assert "data.PatientName" in caplog.text and "who" in caplog.text and CANARY_NAME not in caplog.text
    assert find_patient_identifiers(clean) == []


def test_text_artifacts_are_scanned(tmp_path):
    good = tmp_path / "cfg.json"
    good.write_text(json.dumps({"group_by": "PatientID", "lr": 0.1}))
    check_text_file(good)
    bad = tmp_path / "cases.json"
    bad.write_text(json.dumps([{"PatientID": CANARY_ID}]))
    with pytest.raises(PatientDataError, match="cases.json: assigns a patient identity attribute"):
        check_text_file(bad)
    csv = tmp_path / "list.csv"
    csv.write_text("case,patient_id,dice\nc1,123,0.8\n")
    with pytest.raises(PatientDataError, match="column named like a patient identity attribute"):
        check_text_file(csv)
    dump = tmp_path / "header.txt"
    dump.write_text("(0010, 0010) Patient's Name")
    with pytest.raises(PatientDataError, match=r"DICOM patient tag number"):
        check_text_file(dump)
    binary = tmp_path / "x.png"
    binary.write_bytes(b"PatientID: 1")  # binary artifacts are not scanned
    check_text_file(binary)
