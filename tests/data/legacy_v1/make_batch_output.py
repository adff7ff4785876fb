"""Segment a one-study archive with an older medseg, to keep the output folder (ledger included) it made.

Run once per commit with medseg at that commit, from the repository root, without changing the working tree::

    mkdir /tmp/medseg-COMMIT && git archive COMMIT | tar -x -C /tmp/medseg-COMMIT
    PYTHONPATH=/tmp/medseg-COMMIT python tests/data/legacy_v1/make_batch_output.py tests/data/legacy_v1 COMMIT

Made at f2e0a9d (checkpoint format 1; the batch fingerprint over the format-1 spec) and at 8931c0b (the contract;
the fingerprint over the whole format-2 spec). The archive is ``first/study_CT.nii.gz`` (a copy of ``study_CT.nii.gz``
with the modification time ``MTIME_NS``: the ledger records the inputs' sizes and times), segmented with
``model_v1.pt`` on the CPU into ``batch_out_COMMIT/`` with NIfTI labels only; ``tests/test_checkpoint_legacy.py``
resumes those folders. The review page ``report.html`` is removed: a resumed run writes it again, and its code is
that of ``medseg.outputs.html_assets``.
"""

import inspect
import os
import shutil
import sys
import tempfile
from pathlib import Path

import medseg
from medseg.batch import segment_archive

MTIME_NS = 1_700_000_000_000_000_000

data, commit = Path(sys.argv[1]).absolute(), sys.argv[2]
print("medseg from", medseg.__file__)
archive = Path(tempfile.mkdtemp(prefix="medseg-legacy-archive-"))
(archive / "first").mkdir()
shutil.copyfile(data / "study_CT.nii.gz", archive / "first" / "study_CT.nii.gz")
os.utime(archive / "first" / "study_CT.nii.gz", ns=(MTIME_NS, MTIME_NS))
out = data / f"batch_out_{commit}"
if out.exists():
    shutil.rmtree(out)
if "options" in inspect.signature(segment_archive).parameters:  # since the contract: InferenceOptions
    from medseg.inference import InferenceOptions

    settings = {"options": InferenceOptions(device="cpu")}
else:
    settings = {"device": "cpu"}
summary = segment_archive(archive, out, str(data / "model_v1.pt"), formats=("nifti",), progress=False, **settings)
print("done", summary.done, "processed", summary.processed)
(out / "report.html").unlink()
