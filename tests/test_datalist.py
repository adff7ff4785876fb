"""Datalists: folder / CSV / JSON layouts, validation errors naming both files, seeded splits."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from test_training_helpers import tiny_config, write_tiny_perfusion

from medseg.data.io import save_label
from medseg.errors import ConfigError, ReasonCode
from medseg.training.datalist import DatalistError, load_datalist, validate_datalist
from medseg.training.split import holdout_split, kfold_split

CHANNELS = ["CBF", "MTT", "CBV"]


@pytest.fixture()
def dataset(tmp_path):
    return write_tiny_perfusion(tmp_path / "data", n=4)


def _entries_as_tuples(entries):
    return [(e.case_id, {k: v.resolve() for k, v in e.channels.items()}, e.label.resolve()) for e in entries]


def test_folder_csv_and_json_layouts_agree(dataset, tmp_path):
    root = dataset.parent
    from_json = load_datalist(dataset, CHANNELS)
    (root / "dataset.json").rename(tmp_path / "moved.json")  # the folder is now read as a folder layout
    from_folder = load_datalist(root, CHANNELS)
    rows = ["case_id,CBF,MTT,CBV,label"] + [
        f"{e.case_id},{e.channels['CBF']},{e.channels['MTT']},{e.channels['CBV']},{e.label}"
        for e in from_folder
    ]
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    from_csv = load_datalist(csv_path, CHANNELS)
    assert len(from_json) == 4
    assert _entries_as_tuples(from_json) == _entries_as_tuples(from_folder) == _entries_as_tuples(from_csv)
    info = validate_datalist(from_folder, tiny_config().data)
    assert [i.shape for i in info] == [(24, 24, 12)] * 4
    assert info[0].spacing == pytest.approx((3.0, 3.0, 5.0))
    assert info[0].label_voxels[1] > 0 and sum(info[0].label_voxels.values()) == 24 * 24 * 12


def test_missing_channel_file_names_it_and_the_label(dataset):
    root = dataset.parent
    missing = root / "case_001" / "MTT.nii.gz"
    missing.unlink()
    entries = load_datalist(dataset, CHANNELS)
    with pytest.raises(DatalistError) as info:
        validate_datalist(entries, tiny_config().data)
    (problem,) = info.value.problems
    assert problem.code == ReasonCode.FILE_NOT_FOUND
    message = str(info.value)
    assert str(missing) in message and str(root / "case_001" / "label.nii.gz") in message


def test_label_on_another_grid_names_label_and_image(dataset):
    root = dataset.parent
    label_path = root / "case_002" / "label.nii.gz"
    img = nib.load(label_path)
    shifted = img.affine.copy()
    shifted[0, 3] += 4.0  # 4 mm off the image grid
    save_label(np.asarray(img.dataobj), label_path, affine=shifted)
    with pytest.raises(DatalistError) as info:
        validate_datalist(load_datalist(dataset, CHANNELS), tiny_config().data)
    (problem,) = info.value.problems
    assert problem.code == ReasonCode.LABEL_GEOMETRY_MISMATCH
    message = str(info.value)
    assert str(label_path) in message and str(root / "case_002" / "CBF.nii.gz") in message
    assert "4 mm" in message


def test_undeclared_label_value_names_label_and_image(dataset):
    root = dataset.parent
    label_path = root / "case_003" / "label.nii.gz"
    img = nib.load(label_path)
    arr = np.asarray(img.dataobj).copy()
    arr[0, 0, 0] = 3
    save_label(arr, label_path, affine=img.affine)
    with pytest.raises(DatalistError) as info:
        validate_datalist(load_datalist(dataset, CHANNELS), tiny_config().data)
    (problem,) = info.value.problems
    assert problem.code == ReasonCode.LABEL_VALUES
    message = str(info.value)
    assert (
        "[3]" in message and str(label_path) in message and str(root / "case_003" / "CBF.nii.gz") in message
    )


def test_all_problems_are_reported_together(dataset):
    root = dataset.parent
    (root / "case_000" / "CBV.nii.gz").unlink()
    (root / "case_001" / "label.nii.gz").unlink()
    meta = json.loads(dataset.read_text())
    del meta["cases"][2]["channels"]["MTT"]  # channel not listed at all
    dataset.write_text(json.dumps(meta))
    with pytest.raises(DatalistError) as info:
        validate_datalist(load_datalist(dataset, CHANNELS), tiny_config().data)
    codes = [p.code for p in info.value.problems]
    assert codes == [ReasonCode.FILE_NOT_FOUND, ReasonCode.FILE_NOT_FOUND, ReasonCode.MISSING_CHANNEL]
    assert "3 problem(s)" in str(info.value) and "['MTT']" in str(info.value)


def test_unreadable_lists_are_config_errors(tmp_path):
    bad = tmp_path / "list.csv"
    bad.write_text("case_id,CBF,label\nx,a.nii.gz,b.nii.gz\n")
    with pytest.raises(ConfigError, match=r"CSV columns \['MTT', 'CBV'\] missing"):
        load_datalist(bad, CHANNELS)
    with pytest.raises(ConfigError, match="does not exist"):
        load_datalist(tmp_path / "absent", CHANNELS)
    (tmp_path / "list.txt").write_text("")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        load_datalist(tmp_path / "list.txt", CHANNELS)


def test_holdout_split_is_seeded_and_disjoint():
    items = list(range(10))
    train, val = holdout_split(items, 0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == items
    assert (train, val) == holdout_split(items, 0.2, seed=3)
    assert {tuple(holdout_split(items, 0.2, seed=s)[1]) for s in range(6)} != {tuple(val)}
    with pytest.raises(ConfigError, match="at least 2 cases"):
        holdout_split([1], 0.5, seed=0)


def test_kfold_partitions_every_case_once():
    items = list(range(11))
    vals = [kfold_split(items, 3, k, seed=1)[1] for k in range(3)]
    assert sorted(v for val in vals for v in val) == items
    assert sorted(len(v) for v in vals) == [3, 4, 4]
    train, val = kfold_split(items, 3, 1, seed=1)
    assert not set(train) & set(val) and len(train) + len(val) == 11
    with pytest.raises(ConfigError, match="train.fold"):
        kfold_split(items, 3, 3, seed=1)
