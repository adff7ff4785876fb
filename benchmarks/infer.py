"""Whole-study inference benchmark: medseg's Predictor against the equivalent hand-written MONAI pipeline.

One 5-class synthetic CT (default 256x256x200 voxels of 1.0x1.0x1.5 mm, int16 NIfTI; classes background, liver,
spleen, kidneys (left and right merged), vertebra) is segmented end to end: read NIfTI -> preprocess -> sliding
window -> back to the original grid -> write the label NIfTI, by

* **medseg**: ``load_model`` (once, not timed), then ``medseg.inference.segment.segment_file``
  (``load_volume`` in the stored dtype -> ``Predictor.predict`` -> ``save_label``);
* **MONAI**, written the way MONAI's tutorials do it (spleen segmentation tutorial, "Inference on Test Set"):
  ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``ScaleIntensityRanged`` -> ``Orientationd`` -> ``Spacingd`` in a
  ``Dataset``/``DataLoader``, ``sliding_window_inference`` under ``torch.no_grad()``, then ``Invertd`` on the
  network output with ``nearest_interp=False`` -> ``AsDiscreted(argmax=True)`` -> ``SaveImaged``. Two deliberate
  differences from the tutorial, both to make the pipelines equivalent: the intensity window is applied on the
  native grid *before* resampling, as medseg's training preprocessing does, and labels are saved as uint8 (the
  tutorial's default float32 would only make the MONAI side slower and its file larger).

Both use the same network and window settings: a medseg UNet, features (8, 16, 32, 64), no normalization layers,
trained here for ``--train-seconds`` (one thread) on four CT phantoms at the model spacing 2.0x2.0x3.0 mm and cached
as ``WORKDIR/model.pt``; roi 64^3, overlap 0.5, Gaussian blending, ``--sw-batch-size`` windows per call. The test
study's spacing differs from the model's, so both pipelines resample. The model was trained with
``train.crop_foreground`` (raw HU > -500 plus the margin), so medseg runs only the whole-grid windows that touch the
body's box; the MONAI pipeline, as listed, slides over the whole grid. Both window counts are printed (for this
phantom, whose body fills most of the field of view, they are equal: the crop saves nothing here).

Each pipeline runs in its own fresh Python process (no inherited memory), alternately, ``--repeats`` times, with
``--threads`` torch threads each (default 1: on a machine shared with other jobs, OpenMP teams of several threads
stall when a core is taken, which made timings swing several-fold). A process reports its RSS after imports and
model loading (baseline: both import torch and MONAI) and its peak RSS (``VmHWM``) at the end. Reported: median
seconds, median peak RSS, baseline and increment, the ratios (goal: medseg >= 1.5x faster, peak RSS <= 0.5x), and
per label the Dice between the two label maps (goal >= 0.999) and against the phantom's ground truth (to show that
the network makes meaningful predictions, without which "identical labels" would mean little).

Usage: ``python benchmarks/infer.py [--workdir DIR] [--repeats 3] [--train-seconds 120] [--threads 1]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
MODEL_SPACING = (2.0, 2.0, 3.0)
ROI = (64, 64, 64)
SW_BATCH = 2  # windows per network call (on this CPU, batches of 1 ran 2x slower per window)
OVERLAP = 0.5
CT_CENTER, CT_WIDTH = 100.0, 300.0  # [-50, 250] HU: fat and air at 0, organs apart, bone above kidneys
LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidney", 4: "vertebra"}
PHANTOM_TO_LABEL = np.array([0, 1, 2, 3, 3, 4], dtype=np.uint8)  # phantom organs 1..5 -> the 5 classes
TRAIN_SEEDS = (101, 102, 103, 104)
TRAIN_PATCH, TRAIN_BATCH, TRAIN_LR = (32, 32, 32), 4, 3e-3
NORM = "none"  # no normalization layers: learned fastest here (batch/instance norm reached far lower Dice in 2 min)
NOISE_HU = 10.0  # CT noise of the phantoms (standard deviation)
TEST_SEED = 7


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


# ------------------------------------------------------------------------------------------------ model
def build_config():
    from medseg.config import load_config

    labels = "{" + ", ".join(f"{k}: {v}" for k, v in LABELS.items()) + "}"
    return load_config(
        REPO / "configs" / "ct_organs.yaml",
        [
            f"data.labels={labels}",
            f"data.spacing={list(MODEL_SPACING)}",
            "network.features=[8, 16, 32, 64]",
            "network.deep_supervision=false",
            f"network.options.norm={NORM}",
            f"train.patch_size={list(ROI)}",
            f"inference.overlap={OVERLAP}",
            f"inference.sw_batch_size={SW_BATCH}",
            "inference.mode=gaussian",
            "inference.postprocess.largest_component=false",  # the MONAI pipeline has no postprocessing
            "inference.postprocess.min_volume_mm3=null",
            f"data.channels=[{{name: CT, normalization: {{name: ct_window, center: {CT_CENTER}, width: {CT_WIDTH}}}}}]",
        ],
    )


def _training_case(seed: int, shape: tuple[int, ...]):
    """A phantom generated directly on the model grid, normalized and cropped as medseg's training does."""
    import torch

    from medseg.data.normalization import CTWindow
    from medseg.synthetic.phantoms import make_ct_phantom

    ph = make_ct_phantom(shape, MODEL_SPACING, seed=seed, n_organs=5, noise_hu=NOISE_HU)
    fg = np.argwhere(ph.image > -500.0)
    lo, hi = np.maximum(fg.min(0) - 4, 0), np.minimum(fg.max(0) + 5, shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    image = CTWindow(CT_CENTER, CT_WIDTH)(torch.from_numpy(ph.image[crop].copy()))
    label = torch.from_numpy(PHANTOM_TO_LABEL[ph.label[crop]].astype(np.int64))
    return image[None], label[None]


def train_model(
    path: Path, seconds: float, study_shape: tuple[int, ...], study_spacing: tuple[float, ...]
) -> None:
    """Train the benchmark UNet on CT phantoms at the model spacing for about ``seconds`` and save a checkpoint."""
    import torch

    from medseg.checkpoint import Checkpoint, save_checkpoint
    from medseg.nets import build_network
    from medseg.training.run import build_model_spec

    config = build_config()
    torch.set_num_threads(
        1
    )  # on a shared machine, one thread per process avoids OpenMP oversubscription stalls
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    d = config.data
    model = build_network(**config.network.build_kwargs(d.spatial_dims, len(d.channels), d.num_classes))
    fov = np.asarray(study_shape) * np.asarray(study_spacing)  # same field of view as the test study
    shape = tuple(int(round(f / s)) for f, s in zip(fov, MODEL_SPACING, strict=True))
    cases = [_training_case(seed, shape) for seed in TRAIN_SEEDS]
    loss_fn = config.loss.build()
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=1e-5)
    model.train()
    fmt = torch.channels_last_3d  # faster 3D convolutions on CPU
    model.to(memory_format=fmt)
    steps, start, last = 0, time.perf_counter(), float("nan")
    while time.perf_counter() - start < seconds:
        xs, ys = [], []
        for _ in range(TRAIN_BATCH):
            image, label = cases[int(rng.integers(len(cases)))]
            size = [min(r, n) for r, n in zip(TRAIN_PATCH, image.shape[1:], strict=True)]
            if rng.random() < 0.75:  # centred on a voxel of a random organ (class-balanced oversampling)
                fg = torch.nonzero(label[0] == int(rng.integers(1, len(LABELS))))
                centre = fg[int(rng.integers(len(fg)))].numpy()
            else:
                centre = np.array([int(rng.integers(n)) for n in image.shape[1:]])
            lo = [
                int(np.clip(c - s // 2, 0, n - s))
                for c, s, n in zip(centre, size, image.shape[1:], strict=True)
            ]
            sl = (slice(None), *(slice(a, a + s) for a, s in zip(lo, size, strict=True)))
            x, y = image[sl], label[sl]
            for ax in range(3):  # flips
                if rng.random() < 0.5:
                    x, y = x.flip(ax + 1), y.flip(ax + 1)
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs).contiguous(memory_format=fmt), torch.stack(ys)
        for group in opt.param_groups:  # poly decay over the time budget, as medseg's schedule over epochs
            group["lr"] = TRAIN_LR * max(1.0 - (time.perf_counter() - start) / seconds, 0.02) ** 0.9
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        steps += 1
        last = float(loss.detach())
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s, last loss {last:.3f}", flush=True)
    model.eval().to(memory_format=torch.contiguous_format)
    spec = build_model_spec(config, model)
    save_checkpoint(
        path, Checkpoint(state_dict=model.state_dict(), spec=spec, epoch=steps, metrics={"loss": last})
    )


# ------------------------------------------------------------------------------------------------ pipelines
def run_medseg(model: Path, image_path: Path, out: Path, sw_batch: int) -> dict:
    from medseg.inference import InferenceOptions, load_model
    from medseg.inference.segment import segment_file

    # no postprocessing, like the MONAI pipeline (also for a model.pt cached by an older run)
    predictor = load_model(model, InferenceOptions(device="cpu", sw_batch_size=sw_batch, postprocess=False))
    baseline = _status_mb("VmRSS")
    result = segment_file(predictor, image_path, out)
    t = result.seconds
    return {
        "seconds": sum(t.values()),
        "read_s": t["read"],
        "predict_s": t["predict"],
        "write_s": t["write"],
        "windows": predictor.inferer.last_windows,
        "baseline_mb": baseline,
        "peak_mb": _status_mb("VmHWM"),
    }


def run_monai(model: Path, image_path: Path, out: Path, sw_batch: int) -> dict:
    import torch
    from monai.data import DataLoader, Dataset, decollate_batch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    from medseg.checkpoint import load_checkpoint
    from medseg.inference.sliding import scan_starts
    from medseg.nets import build_network

    ckpt = load_checkpoint(model)
    net_cfg = dict(ckpt.spec.network)
    net = build_network(net_cfg.pop("name"), **net_cfg)
    net.load_state_dict(ckpt.state_dict)
    net.eval()
    pre = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            ScaleIntensityRanged(
                keys="image",
                a_min=CT_CENTER - CT_WIDTH / 2,
                a_max=CT_CENTER + CT_WIDTH / 2,
                b_min=0.0,
                b_max=1.0,
                clip=True,
            ),
            Orientationd(keys="image", axcodes="RAS"),
            Spacingd(keys="image", pixdim=MODEL_SPACING, mode="bilinear"),
        ]
    )
    post = Compose(
        [
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted(keys="pred", argmax=True),
            SaveImaged(
                keys="pred",
                output_dir=str(out.parent),
                output_postfix="",
                separate_folder=False,
                resample=False,
                output_dtype=np.uint8,
                print_log=False,
            ),
        ]
    )
    baseline = _status_mb("VmRSS")
    start = time.perf_counter()
    loader = DataLoader(Dataset([{"image": str(image_path)}], transform=pre), batch_size=1, num_workers=0)
    with torch.no_grad():
        for batch in loader:
            t_read = time.perf_counter()
            batch["pred"] = sliding_window_inference(
                batch["image"], ROI, sw_batch, net, overlap=OVERLAP, mode="gaussian"
            )
            t_pred = time.perf_counter()
            [post(item) for item in decollate_batch(batch)]
    end = time.perf_counter()
    shape = tuple(batch["image"].shape[2:])
    windows = int(np.prod([len(scan_starts(max(n, r), r, OVERLAP)) for n, r in zip(shape, ROI, strict=True)]))
    return {
        "seconds": end - start,
        "read_s": t_read - start,
        "predict_s": t_pred - t_read,
        "write_s": end - t_pred,
        "windows": windows,
        "baseline_mb": baseline,
        "peak_mb": _status_mb("VmHWM"),
    }


def child(which: str, model: Path, image_path: Path, out: Path, threads: int, sw_batch: int) -> None:
    """Entry point of one measured run (a fresh process): print one JSON line."""
    import torch

    torch.set_num_threads(threads)
    result = (run_medseg if which == "medseg" else run_monai)(model, image_path, out, sw_batch)
    print("RESULT " + json.dumps(result), flush=True)


def _spawn(which: str, model: Path, image_path: Path, out: Path, threads: int, sw_batch: int) -> dict:
    cmd = [
        sys.executable,
        str(HERE),
        "--child",
        which,
        "--model",
        str(model),
        "--image",
        str(image_path),
        "--out",
        str(out),
        "--threads",
        str(threads),
        "--sw-batch-size",
        str(sw_batch),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{which} run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


# ------------------------------------------------------------------------------------------------ comparison
def write_study(path: Path, truth_path: Path, shape: tuple[int, ...], spacing: tuple[float, ...]) -> None:
    """The test CT as int16 NIfTI (as scanners store CT) and its ground truth label."""
    import nibabel as nib

    from medseg.synthetic.phantoms import make_ct_phantom

    ph = make_ct_phantom(shape, spacing, seed=TEST_SEED, n_organs=5, noise_hu=NOISE_HU)
    img = nib.Nifti1Image(np.round(ph.image).astype(np.int16), ph.affine)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))
    nib.save(nib.Nifti1Image(PHANTOM_TO_LABEL[ph.label], ph.affine), str(truth_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/medseg-bench-infer"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=120.0)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 200))
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.5))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each measured process")
    parser.add_argument("--sw-batch-size", type=int, default=SW_BATCH, help="windows per network call (both)")
    parser.add_argument("--child", choices=["medseg", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.model, args.image, args.out, args.threads, args.sw_batch_size)
        return 0

    import nibabel as nib

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    shape, spacing = tuple(args.shape), tuple(args.spacing)
    model = work / "model.pt"
    if not model.exists():
        print(f"training the benchmark UNet for {args.train_seconds:.0f} s ...", flush=True)
        train_model(model, args.train_seconds, shape, spacing)
    else:
        print(f"reusing {model}", flush=True)
    tag = "x".join(map(str, shape))
    study, truth = work / f"ct_{tag}.nii.gz", work / f"truth_{tag}.nii.gz"
    if not study.exists():
        print(f"writing the test CT {shape} at {spacing} mm ...", flush=True)
        write_study(study, truth, shape, spacing)
    outs = {"medseg": work / "out_medseg" / "ct.nii.gz", "monai": work / "out_monai" / f"ct_{tag}.nii.gz"}
    for o in outs.values():
        o.parent.mkdir(exist_ok=True)

    runs: dict[str, list[dict]] = {"medseg": [], "monai": []}
    for r in range(args.repeats):
        order = ["medseg", "monai"] if r % 2 == 0 else ["monai", "medseg"]
        for which in order:
            res = _spawn(which, model, study, outs[which], args.threads, args.sw_batch_size)
            runs[which].append(res)
            print(
                f"  run {r + 1} {which:6s} {res['seconds']:6.1f} s  peak {res['peak_mb']:6.0f} MB "
                f"(read {res['read_s']:.1f} s, infer {res['predict_s']:.1f} s, invert+write {res['write_s']:.1f} s)",
                flush=True,
            )

    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    a = np.asarray(nib.load(str(outs["medseg"])).dataobj)
    b = np.asarray(nib.load(str(outs["monai"])).dataobj)
    gt = np.asarray(nib.load(str(truth)).dataobj)
    print(
        f"\nstudy {shape} at {spacing} mm; model grid {MODEL_SPACING} mm, roi {ROI}, overlap {OVERLAP}, "
        f"gaussian, sw_batch_size {args.sw_batch_size}; {args.threads} torch thread(s); {args.repeats} runs each, "
        "medians"
    )
    print(f"{'':8s} {'seconds':>8s} {'peak RSS':>9s} {'baseline':>9s} {'increment':>9s} {'windows':>8s}")
    for k in ("medseg", "monai"):
        m = med[k]
        print(
            f"{k:8s} {m['seconds']:8.1f} {m['peak_mb']:8.0f}M {m['baseline_mb']:8.0f}M "
            f"{m['peak_mb'] - m['baseline_mb']:8.0f}M {m['windows']:8.0f}"
        )
    speed = med["monai"]["seconds"] / med["medseg"]["seconds"]
    rss = med["medseg"]["peak_mb"] / med["monai"]["peak_mb"]
    inc = (med["medseg"]["peak_mb"] - med["medseg"]["baseline_mb"]) / (
        med["monai"]["peak_mb"] - med["monai"]["baseline_mb"]
    )
    from medseg.metrics import dice

    agree = {name: dice(a, b, v) for v, name in LABELS.items() if v}
    vs_truth = {name: (dice(a, gt, v), dice(b, gt, v)) for v, name in LABELS.items() if v}
    print(
        f"\nspeed-up (MONAI s / medseg s): {speed:.2f}x   goal >= 1.5x: {'PASS' if speed >= 1.5 else 'FAIL'}"
    )
    print(
        f"peak RSS medseg / MONAI: {rss:.2f}   goal <= 0.5: {'PASS' if rss <= 0.5 else 'FAIL'}"
        f"   (increment over the baseline: {inc:.2f})"
    )
    print(f"voxels with different labels: {int((a != b).sum())} of {a.size}")
    print(f"{'label':10s} {'Dice medseg~MONAI':>18s} {'Dice medseg~truth':>18s} {'Dice MONAI~truth':>17s}")
    for name in agree:
        print(f"{name:10s} {agree[name]:18.5f} {vs_truth[name][0]:18.4f} {vs_truth[name][1]:17.4f}")
    ok = min(agree.values()) >= 0.999
    print(f"labels identical (Dice >= 0.999 per label): {'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
