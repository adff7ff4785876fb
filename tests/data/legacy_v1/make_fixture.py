"""Train a tiny CT model with the pre-contract code and record what it segments.

Run once, at commit f2e0a9d (checkpoint format 1), from the repository root: `python tests/data/legacy_v1/make_fixture.py tests/data/legacy_v1`.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, "tests")
from test_training_helpers import tiny_config

from medseg.data.io import load_volume, save_image
from medseg.inference.predictor import Predictor
from medseg.synthetic.dataset import write_ct_dataset
from medseg.synthetic.phantoms import make_ct_phantom
from medseg.training import train

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
work = Path(tempfile.mkdtemp(prefix="medseg-legacy-fixture-"))
ds = write_ct_dataset(work / "data", 4, shape=(40, 40, 24), spacing=(1.5, 1.5, 2.5), seed=5, n_organs=2)
cfg = tiny_config(
    data={
        "channels": [{"name": "CT", "normalization": {"name": "ct_window", "center": 50, "width": 400}}],
        "labels": {0: "background", 1: "organ_1", 2: "organ_2"},
        "spacing": [2.0, 2.0, 3.0],
    },
    network={"features": [4, 8, 16]},
    train={
        "epochs": 40,
        "patch_size": [16, 16, 8],
        "crop_foreground": True,
        "foreground_threshold": -500.0,
        "foreground_margin": 3,
        "val_every": 10,
        "samples_per_case": 2,
    },
    inference={"postprocess": {"largest_component": True, "min_volume_mm3": 30.0}},
)
res = train(cfg, work / "run", datalist=ds)
print(res.status, res.best_metrics)
ck = out / "model_v1.pt"
ck.write_bytes(Path(res.best_checkpoint).read_bytes())
# a test study on an oblique-ish grid (other spacing than training)
ph = make_ct_phantom(shape=(44, 36, 20), spacing=(1.2, 1.4, 3.0), seed=99, n_organs=2)
save_image(np.round(ph.image).astype(np.int16), out / "study_CT.nii.gz", affine=ph.affine)
pred = Predictor.from_checkpoint(ck, device="cpu")
img = load_volume(out / "study_CT.nii.gz")
label = pred.predict(img[None] if img.ndim == 3 else img)
arr = np.asarray(label[0].numpy(), dtype=np.uint8)
np.save(out / "expected_label.npy", arr)
print("counts", np.bincount(arr.ravel()), "truth", np.bincount(ph.label.ravel().astype(int)))
