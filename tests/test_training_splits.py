"""Datalists with explicit roles (a `split` key / column, an nnU-Net splits file) and training without validation
(a single case, `train.val_every: 0`), end to end."""

from __future__ import annotations

import json
import logging

import pytest
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.checkpoint import load_checkpoint
from medseg.errors import ConfigError
from medseg.training import train
from medseg.training.datalist import load_datalist
from medseg.training.split import choose_split

CHANNELS = ["CBF", "MTT", "CBV"]
IDS = ["case_000", "case_001", "case_002", "case_003"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_tiny_perfusion(tmp_path_factory.mktemp("splits") / "data", n=4)


def _with_roles(dataset, roles, tmp_path, name="roles.json"):
    """A copy of the JSON datalist (paths made absolute) whose cases carry ``split`` values."""
    meta = json.loads(dataset.read_text())
    for case, role in zip(meta["cases"], roles, strict=True):
        case["channels"] = {k: str(dataset.parent / v) for k, v in case["channels"].items()}
        case["label"] = str(dataset.parent / case["label"])
        if role is not None:
            case["split"] = role
    path = tmp_path / name
    path.write_text(json.dumps(meta))
    return path


def _csv(dataset, roles, tmp_path):
    entries = load_datalist(dataset, CHANNELS)
    rows = ["case_id,CBF,MTT,CBV,label,split"] + [
        f"{e.case_id},{e.channels['CBF']},{e.channels['MTT']},{e.channels['CBV']},{e.label},{role or ''}"
        for e, role in zip(entries, roles, strict=True)
    ]
    path = tmp_path / "list.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _split(entries, **kw):
    args = {"splits": None, "fold": 0, "validation": True, "val_fraction": 0.25, "folds": None, "k": 0, "seed": 0}
    train_cases, val_cases = choose_split(entries, **{**args, **kw})
    return [e.case_id for e in train_cases], [e.case_id for e in val_cases]


def test_roles_from_json_key_csv_column_and_splits_file(dataset, tmp_path):
    roles = ["val", "train", "train", "val"]
    from_json = load_datalist(_with_roles(dataset, roles, tmp_path), CHANNELS)
    from_csv = load_datalist(_csv(dataset, roles, tmp_path), CHANNELS)
    assert [e.split for e in from_json] == [e.split for e in from_csv] == roles
    expected = (["case_001", "case_002"], ["case_000", "case_003"])
    assert _split(from_json) == _split(from_csv) == expected

    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([
        {"train": ["case_000", "case_001", "case_002"], "val": ["case_003"]},
        {"train": ["case_003", "case_002"], "val": ["case_001"]},  # case_000 in neither: not used
    ]))  # fmt: skip
    plain = load_datalist(dataset, CHANNELS)
    assert _split(plain, splits=str(splits), fold=0) == (["case_000", "case_001", "case_002"], ["case_003"])
    assert _split(plain, splits=str(splits), fold=1) == (["case_002", "case_003"], ["case_001"])
    with pytest.raises(ConfigError, match=r"datalist.fold: .*splits_final.json has 2 fold\(s\)"):
        _split(plain, splits=str(splits), fold=2)
    with pytest.raises(ConfigError, match="also gives a 'split' per case"):
        _split(from_json, splits=str(splits))
    with pytest.raises(ConfigError, match="train.folds: set, but the 'split' of the cases"):
        _split(from_json, folds=2)


def test_unknown_or_doubled_cases_and_bad_roles_are_refused(dataset, tmp_path):
    plain = load_datalist(dataset, CHANNELS)
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["case_000", "case_009"], "val": ["case_001"]}]))
    with pytest.raises(ConfigError) as info:
        _split(plain, splits=str(splits))
    assert "case_009" in str(info.value) and str(splits) in str(info.value)
    assert "unknown case id" in str(info.value) and "case_000" not in str(info.value).split("unknown")[1]

    splits.write_text(json.dumps({"train": ["case_000", "case_001"], "val": ["case_001"]}))
    with pytest.raises(ConfigError, match=r"case\(s\) \['case_001'\] in both train and val"):
        _split(plain, splits=str(splits))
    splits.write_text(json.dumps([{"training": ["case_000"], "val": []}]))
    with pytest.raises(ConfigError, match="exactly the keys 'train' and 'val'"):
        _split(plain, splits=str(splits))

    bad = _with_roles(dataset, ["train", "test", "train", "val"], tmp_path)
    with pytest.raises(ConfigError, match=r"case case_001: split must be 'train' or 'val', got 'test'") as info:
        load_datalist(bad, CHANNELS)
    assert str(bad) in str(info.value)
    partial = load_datalist(_with_roles(dataset, ["train", None, "train", "val"], tmp_path), CHANNELS)
    with pytest.raises(ConfigError, match=r"case\(s\) \['case_001'\] have no split while others do"):
        _split(partial)


def test_seeded_split_and_single_case_rules(dataset):
    plain = load_datalist(dataset, CHANNELS)
    train_ids, val_ids = _split(plain)
    assert len(train_ids) == 3 and len(val_ids) == 1 and sorted(train_ids + val_ids) == IDS
    assert _split(plain, validation=False) == (IDS, [])  # no validation: every case trains
    assert _split(plain[:1]) == (["case_000"], [])  # one case: it trains, nothing to validate on


def test_explicit_roles_train_end_to_end(dataset, tmp_path):
    """JSON key, CSV column and splits file each decide the cases (2 + 2, where a seeded split gives 3 + 1)."""
    roles = ["val", "train", "train", "val"]
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["case_001", "case_002"], "val": ["case_000", "case_003"]}]))
    runs = {
        "json": (_with_roles(dataset, roles, tmp_path), {}),
        "csv": (_csv(dataset, roles, tmp_path), {}),
        "splits": (dataset, {"datalist": {"splits": str(splits)}}),
    }
    dice = {}
    for name, (datalist, overlay) in runs.items():
        config = tiny_config(train={"epochs": 1}, **overlay)
        result = train(config, tmp_path / name, datalist=datalist)
        assert result.succeeded
        assert (result.dataset_summary["n_train"], result.dataset_summary["n_val"]) == (2, 2)
        dice[name] = result.best_metrics["val/dice_mean"]
        spec = load_checkpoint(result.best_checkpoint).spec
        assert spec.config["datalist"]["splits"] is None  # a local path: not stored with the model
    assert dice["json"] == dice["csv"] == dice["splits"]  # the same cases, the same seeded training


def test_single_case_trains_without_validation(dataset, tmp_path, caplog):
    meta = json.loads(dataset.read_text())
    meta["cases"] = meta["cases"][:1]
    one = dataset.parent / "one.json"
    one.write_text(json.dumps(meta))
    seen = []

    class Validations:
        def on_validation(self, epoch, metrics, qc):
            seen.append(epoch)

    for name, train_overlay in (("off", {"val_every": 0}), ("auto", {"val_every": 1})):
        with caplog.at_level(logging.WARNING, logger="medseg"):
            result = train(
                tiny_config(train={"epochs": 2, "batch_size": 1, **train_overlay}),
                tmp_path / name,
                datalist=one,
                tracker=Validations(),
            )
        assert result.succeeded and result.stopped_by == "epochs" and len(result.history) == 2
        assert result.best_epoch is None and result.best_metrics == {}
        assert all("val/dice_mean" not in h for h in result.history) and seen == []
        assert (result.dataset_summary["n_train"], result.dataset_summary["n_val"]) == (1, 0)
        best, last = load_checkpoint(result.best_checkpoint), load_checkpoint(result.last_checkpoint)
        assert best.epoch == last.epoch == 1 and best.optimizer is None
        assert all((best.state_dict[k] == last.state_dict[k]).all() for k in last.state_dict)
    messages = [r.getMessage() for r in caplog.records]
    assert any("train.val_every is 0: no validation runs" in m for m in messages)
    assert any("no validation case: no validation runs" in m for m in messages)
