"""Series selection rules: explicit choices, errors that name keys and list candidates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.data.dicom import SeriesRule, scan_dicom_tree, select_series
from medseg.errors import ConfigError, InputError, ReasonCode
from medseg.synthetic.dicom_writer import affine_for, write_dicom_series

SHAPE = (6, 7, 5)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    vol = np.zeros(SHAPE, dtype=np.float32)
    affine = affine_for("axial", (1.0, 1.0, 2.0), SHAPE)
    write_dicom_series(vol, affine, root / "ct", series_description="CT ABDOMEN PORTAL", series_number=2)
    write_dicom_series(
        vol,
        affine,
        root / "mip",
        series_description="CT MIP",
        series_number=3,
        image_type=("DERIVED", "SECONDARY"),
    )
    write_dicom_series(vol, affine, root / "t1", modality="MR", series_description="T1 vibe", series_number=4)
    scout = np.zeros((6, 7, 1), dtype=np.float32)
    write_dicom_series(scout, affine, root / "scout", series_description="CT scout", series_number=1)
    return root


def test_from_dict_rejects_unknown_keys_naming_them() -> None:
    with pytest.raises(ConfigError, match="'modalty'") as err:
        SeriesRule.from_dict({"modalty": "CT"})
    assert "valid keys" in str(err.value) and "modality" in str(err.value)


@pytest.mark.parametrize(
    ("d", "key"),
    [
        ({"min_slices": 0}, "min_slices"),
        ({"min_slices": "3"}, "min_slices"),
        ({"description": "(unclosed"}, "description"),
        ({"image_type": [1, 2]}, "image_type"),
        ({"modality": ""}, "modality"),
    ],
)
def test_from_dict_validates_values(d: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SeriesRule.from_dict(d)


def test_from_dict_normalises_image_type() -> None:
    rule = SeriesRule.from_dict({"modality": "ct", "image_type": ["original", "primary"], "min_slices": 3})
    assert rule.image_type == ("ORIGINAL", "PRIMARY") and rule.min_slices == 3
    assert SeriesRule.from_dict({"image_type": "derived"}).image_type == ("DERIVED",)


def test_rules_pick_exactly_one(study: Path) -> None:
    scan = scan_dicom_tree(study)
    assert len(scan.series) == 4
    ct = SeriesRule(modality="CT", image_type=("ORIGINAL",), min_slices=2)
    assert select_series(scan, ct).series_description == "CT ABDOMEN PORTAL"
    assert select_series(scan, {"modality": "mr"}).series_description == "T1 vibe"
    assert select_series(scan, {"description": "^ct mip$"}).series_description == "CT MIP"
    assert select_series(scan, {"modality": "CT", "min_slices": 1, "description": "scout"}).n_slices == 1


def test_rule_matching_several_is_ambiguous_and_lists_them(study: Path) -> None:
    scan = scan_dicom_tree(study)
    with pytest.raises(InputError) as err:
        select_series(scan, SeriesRule(modality="CT", min_slices=2))
    assert err.value.code == ReasonCode.AMBIGUOUS_SERIES
    message = str(err.value)
    # listed by series number and image type; SeriesDescription (free text, may hold identifiers) is left out
    assert "series_number=2" in message and "series_number=3" in message and "DERIVED/SECONDARY" in message
    assert "series_number=4" not in message and "series_number=1" not in message
    assert "CT ABDOMEN PORTAL" not in message and "CT MIP" not in message
    assert "matches 2" in message


def test_wrong_modality_vs_no_series(study: Path) -> None:
    scan = scan_dicom_tree(study)
    with pytest.raises(InputError) as err:
        select_series(scan, SeriesRule(modality="PT"))
    assert err.value.code == ReasonCode.WRONG_MODALITY
    assert "modality=MR series_number=4" in str(err.value)  # lists what exists
    assert "T1 vibe" not in str(err.value)  # but not the free-text SeriesDescription
    with pytest.raises(InputError) as err:
        select_series(scan, SeriesRule(modality="MR", description="flair"))
    assert err.value.code == ReasonCode.NO_SERIES
    with pytest.raises(InputError) as err:
        select_series(scan, SeriesRule(modality="MR", min_slices=50))
    assert err.value.code == ReasonCode.NO_SERIES


def test_root_override_in_errors(study: Path) -> None:
    scan = scan_dicom_tree(study)
    with pytest.raises(InputError) as err:
        select_series(scan, root="case_007")
    assert err.value.path == "case_007" and err.value.code == ReasonCode.AMBIGUOUS_SERIES
