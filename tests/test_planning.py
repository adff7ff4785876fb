"""medseg plan: rules on fingerprints with known answers, the memory estimate, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from medseg.config import MedsegConfig, from_dict
from medseg.planning import (
    CaseFingerprint,
    DeviceBudget,
    Fingerprint,
    IntensityStats,
    LabelStats,
    PlanError,
    estimate_step,
    plan_from_fingerprint,
    plan_table,
)
from medseg.planning.fingerprint import axis_permutation, fingerprint_from_dict
from medseg.planning.geometry import pool_props, target_spacing
from medseg.planning.memory import GIB

CT_FG = IntensityStats(p00_5=-80.0, p50=60.0, p99_5=240.0, mean=70.0, std=45.0, min=-300.0, max=900.0, n=40_000)
MR_FG = IntensityStats(p00_5=20.0, p50=300.0, p99_5=900.0, mean=320.0, std=150.0, min=0.0, max=1500.0, n=40_000)


def _fingerprint(shapes, spacings, *, ct=True, keep=1.0, name=None):
    name = name or ("CT" if ct else "image")
    cases = []
    for shape, spacing in zip(shapes, spacings, strict=True):
        box = tuple(max(1, int(round(s * keep ** (1 / 3)))) for s in shape)
        cases.append(
            CaseFingerprint(
                shape=tuple(shape), spacing=tuple(spacing),
                crop_shapes={0.0: box, -500.0: box},
                foreground={name: CT_FG if ct else MR_FG},
                labels={0: LabelStats(1000, 1.0), 1: LabelStats(100, 0.1)},
            )
        )
    return Fingerprint(
        channels=[name], labels={0: "background", 1: "organ"}, orientation="RAS", cases=cases,
        foreground={name: CT_FG if ct else MR_FG},
        image_range={name: (-1000.0, 1200.0) if ct else (0.0, 1400.0)},
    )


def _config(channel="CT", normalization=None, **train):
    return from_dict(MedsegConfig, {
        "data": {"channels": [{"name": channel, "normalization": normalization or {"name": "zscore"}}],
                 "labels": {0: "background", 1: "organ"}},
        "network": {"name": "unet", "options": {"norm": "instance"}},
        "train": train,
    })


GPU_8G = DeviceBudget("cuda:0", 8 * GIB, "test: 8 GiB")


def _budget(gib, **kw):
    return DeviceBudget(kw.pop("device", "cuda:0"), int(gib * GIB), f"test: {gib} GiB", **kw)


def _valid_overlay(plan, config):
    """The plan's overlay validates when merged over the config (as `medseg train --plan` does)."""
    from medseg.config import deep_merge, to_dict

    return from_dict(MedsegConfig, deep_merge(to_dict(config), plan.overlay))


# ------------------------------------------------------------------------------------------------ rules


def test_isotropic_1mm_256_cubed():
    fp = _fingerprint([(256, 256, 256)] * 8, [(1.0, 1.0, 1.0)] * 8)
    config = _config()
    plan = plan_from_fingerprint(fp, config, GPU_8G)
    assert plan.overlay["data"]["spacing"] == [1.0, 1.0, 1.0]
    patch = plan.overlay["train"]["patch_size"]
    features = plan.overlay["network"]["features"]
    depth = len(features) - 1
    # shrunk from 256^3 one axis step at a time (nnU-Net's order): about isotropic
    assert 64 <= min(patch) and max(patch) < 256 and max(patch) - min(patch) <= 32
    assert all(p % 2**depth == 0 and p // 2**depth >= 4 for p in patch)
    assert features[0] == 32 and max(features) == 320 and depth == min(plan.pools_per_axis) >= 4
    batch = plan.overlay["train"]["batch_size"]
    spc = config.train.samples_per_case
    assert batch * spc >= 2  # cases per step x patches per case: nnU-Net's minimum of 2 patches
    # the step the plan names fits the budget it names, by the estimator's own number, for the patches a training
    # step really holds (batch_size cases x samples_per_case patches)
    cost = estimate_step(config.network, 1, 2, patch, batch * spc, config.train.optimizer, features=features)
    assert cost.batch == batch * spc and cost.total_bytes == plan.cost.total_bytes <= GPU_8G.memory_bytes
    # and one more case would not (or the 5% cap stopped it)
    more = estimate_step(config.network, 1, 2, patch, (batch + 1) * spc, config.train.optimizer, features=features)
    why = next(d.reason for d in plan.decisions if d.key == "train.batch_size")
    assert more.total_bytes > GPU_8G.memory_bytes or "5% cap" in why
    _valid_overlay(plan, config)


def test_anisotropic_5_to_1_low_resolution_axis():
    z = [4.0, 4.0, 4.0, 5.0, 5.0, 3.0, 4.0, 6.0, 4.0, 3.0]  # 10th percentile: 3.0; median 4.0
    fp = _fingerprint([(512, 512, 40)] * 10, [(0.8, 0.8, s) for s in z], ct=False)
    spacing, reason = target_spacing(fp)
    assert spacing[:2] == [0.8, 0.8]
    assert spacing[2] == pytest.approx(float(np.percentile(z, 10)))
    assert "low-resolution" in reason and "10th percentile" in reason
    plan = plan_from_fingerprint(fp, _config(channel="image"), GPU_8G)
    pools = plan.pools_per_axis
    assert pools[2] < pools[0] == pools[1]  # the thick-slice axis pools less (it starts once x/y are ~as coarse)
    features = plan.overlay["network"]["features"]
    assert len(features) - 1 == min(pools)  # medseg pools every axis per level: depth set by the low-res axis
    patch = plan.overlay["train"]["patch_size"]
    assert patch[2] < patch[0]  # fewer voxels along the thick axis (about equal mm per axis)
    assert all(p % 2**pools[i] == 0 for i, p in enumerate(patch))


def test_isotropic_dataset_keeps_median_spacing():
    fp = _fingerprint([(100, 100, 100)] * 3, [(1.0, 1.0, 1.5), (1.0, 1.0, 2.5), (1.0, 1.0, 2.0)])
    spacing, reason = target_spacing(fp)
    assert spacing == [1.0, 1.0, 2.0] and "low-resolution" not in reason


def test_tiny_volume_patch_is_the_padded_volume_and_the_net_is_shallow():
    fp = _fingerprint([(20, 24, 16)] * 4, [(1.0, 1.0, 1.0)] * 4)
    plan = plan_from_fingerprint(fp, _config(), GPU_8G)
    assert plan.overlay["train"]["patch_size"] == [20, 24, 16]
    assert plan.pools_per_axis == [2, 2, 2]
    assert plan.overlay["network"]["features"] == [32, 64, 128]
    # 5% of the dataset's voxels caps the batch at the minimum of 2 patches: 1 case x 2 samples per case
    assert plan.overlay["train"]["batch_size"] == 1
    one = plan_from_fingerprint(fp, _config(samples_per_case=1), GPU_8G)
    assert one.overlay["train"]["batch_size"] == 2 and one.cost.batch == plan.cost.batch == 2


def test_pool_props_follow_nnunet():
    # x/y: 160 -> 5 (pooled while >= 8); z (3x coarser) waits one level for x/y to reach its spacing, then
    # 48 -> 6 and stops (6 < 8)
    pools, padded, div = pool_props([1.0, 1.0, 3.0], [160, 160, 48])
    assert pools == [5, 5, 3] and padded == [160, 160, 48] and div == [32, 32, 8]
    pools, padded, _ = pool_props([1.0, 1.0, 1.0], [20, 24, 17])
    assert pools == [2, 2, 2] and padded == [20, 24, 20]


def test_ct_gets_dataset_clip_and_zscore():
    fp = _fingerprint([(96, 96, 64)] * 4, [(1.0, 1.0, 2.0)] * 4, ct=True, keep=0.5)
    plan = plan_from_fingerprint(fp, _config(), GPU_8G)
    [channel] = plan.overlay["data"]["channels"]
    assert channel["normalization"] == {"name": "ct_clip_zscore", "lower": -80.0, "upper": 240.0,
                                        "mean": 70.0, "std": 45.0}
    assert plan.value("(modality CT)") == "CT"
    # CT: crop to the body (air threshold in HU), on since the crop keeps half the volume
    assert plan.overlay["train"]["crop_foreground"] is True
    assert plan.overlay["train"]["foreground_threshold"] == -500.0
    _valid_overlay(plan, _config())


def test_mr_gets_per_image_zscore_and_ct_detection_needs_air():
    fp = _fingerprint([(96, 96, 64)] * 4, [(1.0, 1.0, 2.0)] * 4, ct=False, name="T2")
    plan = plan_from_fingerprint(fp, _config(channel="T2"), GPU_8G)
    assert plan.overlay["data"]["channels"][0]["normalization"] == {"name": "zscore"}
    assert plan.value("(modality T2)") == "MR"
    assert plan.overlay["train"]["crop_foreground"] is False  # nothing to crop
    # an unnamed channel: CT only when the image has air values (-1000 HU)
    ct_like = _fingerprint([(96, 96, 64)] * 4, [(1.0, 1.0, 2.0)] * 4, ct=True, name="image")
    assert plan_from_fingerprint(ct_like, _config(channel="image"), GPU_8G).value("(modality image)") == "CT"
    mr_like = _fingerprint([(96, 96, 64)] * 4, [(1.0, 1.0, 2.0)] * 4, ct=False, name="image")
    assert plan_from_fingerprint(mr_like, _config(channel="image"), GPU_8G).value("(modality image)") == "other"
    # --modality wins over the intensities
    forced = plan_from_fingerprint(ct_like, _config(channel="image"), GPU_8G, modality_overrides={"image": "MR"})
    assert forced.overlay["data"]["channels"][0]["normalization"] == {"name": "zscore"}


def test_masked_mr_uses_nonzero_zscore():
    fp = _fingerprint([(96, 96, 64)] * 4, [(1.0, 1.0, 1.0)] * 4, ct=False, name="FLAIR", keep=0.4)
    plan = plan_from_fingerprint(fp, _config(channel="FLAIR"), GPU_8G)
    assert plan.overlay["data"]["channels"][0]["normalization"] == {"name": "zscore", "nonzero": True}


def test_too_small_memory_budget_is_a_clear_error():
    fp = _fingerprint([(128, 128, 128)] * 4, [(1.0, 1.0, 1.0)] * 4)
    with pytest.raises(PlanError, match=r"memory budget is too small: 0.00 GiB \(test: 0.001 GiB\).*smallest "
                       r"candidate, patch \[8, 8, 8\] x batch 1 \(2 patches\)"):
        plan_from_fingerprint(fp, _config(), _budget(0.001))


def test_cpu_step_time_limit_shrinks_the_patch():
    fp = _fingerprint([(256, 256, 256)] * 8, [(1.0, 1.0, 1.0)] * 8)
    fast = _budget(16, device="cpu")
    slow = _budget(16, device="cpu", flops_per_second=50e9, max_step_seconds=2.0)
    free = plan_from_fingerprint(fp, _config(), fast)
    limited = plan_from_fingerprint(fp, _config(), slow)
    assert limited.overlay["network"]["features"][0] == 16  # CPU width
    assert np.prod(limited.overlay["train"]["patch_size"]) < np.prod(free.overlay["train"]["patch_size"])
    assert slow.predicted_seconds(limited.cost) <= 2.0


def test_unknown_modality_channel_is_named():
    fp = _fingerprint([(32, 32, 32)] * 2, [(1.0, 1.0, 1.0)] * 2)
    with pytest.raises(ValueError, match=r"--modality: unknown channel\(s\) \['MR'\]"):
        plan_from_fingerprint(fp, _config(), GPU_8G, modality_overrides={"MR": "MR"})


def test_estimator_counts_activations_linearly_and_the_table_has_reasons():
    config = _config()
    a = estimate_step(config.network, 1, 2, [32, 32, 32], 2, features=[16, 32, 64])
    b = estimate_step(config.network, 1, 2, [64, 32, 32], 2, features=[16, 32, 64])
    # feature maps scale with the voxels (per-channel norm statistics do not)
    assert 1.9 < b.activation_bytes / a.activation_bytes <= 2.0 and b.parameter_bytes == a.parameter_bytes
    fp = _fingerprint([(40, 40, 40)] * 2, [(1.0, 1.0, 1.0)] * 2)
    table = plan_table(plan_from_fingerprint(fp, config, GPU_8G).decisions)
    lines = table.splitlines()
    assert lines[0].split() == ["key", "value", "reason"]
    row = next(line for line in lines if line.startswith("data.spacing"))
    assert "1x1x1" in row and "median spacing" in row


def test_fingerprint_round_trip_and_axis_permutation():
    fp = _fingerprint([(20, 24, 16)] * 2, [(1.0, 1.0, 2.0)] * 2)
    again = fingerprint_from_dict(json.loads(json.dumps(fp.to_dict())))
    assert again == fp
    assert axis_permutation("LPS", "RAS") == [0, 1, 2]
    assert axis_permutation("SAR", "RAS") == [2, 1, 0]


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def ct_set(tmp_path_factory):
    from medseg.synthetic.dataset import write_ct_dataset

    root = tmp_path_factory.mktemp("ct_plan")
    return write_ct_dataset(root / "ct", 4, shape=(40, 40, 24), spacing=(1.5, 1.5, 2.5), seed=3, n_organs=2)


def test_medseg_plan_end_to_end(ct_set, tmp_path, capsys):
    from medseg.cli import main

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "data": {"channels": [{"name": "CT"}], "labels": {0: "background", 1: "liver", 2: "spleen"}},
        "train": {"val_fraction": 0.25, "num_workers": 0},
    }))
    out = tmp_path / "plan" / "plan.yaml"
    code = main(["plan", str(ct_set), "--config", str(base), "--device", "cpu", "--budget-minutes", "1",
                 "--calibration-steps", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    fingerprint = json.loads((out.parent / "fingerprint.json").read_text())
    assert fingerprint["n_cases"] == 4 and fingerprint["median_shape"] == [40, 40, 24]
    assert fingerprint["median_spacing"] == pytest.approx([1.5, 1.5, 2.5])
    assert fingerprint["cases"][0]["labels"]["1"]["volume_ml"] > 0
    assert fingerprint["foreground_intensity"]["CT"]["n"] > 0
    assert "case_000" not in json.dumps(fingerprint)  # no case ids
    overlay = yaml.safe_load(out.read_text())
    assert overlay["data"]["channels"][0]["normalization"]["name"] == "ct_clip_zscore"
    assert overlay["data"]["spacing"] == [1.5, 1.5, 2.5]
    assert overlay["train"]["budget_minutes"] == 1.0 and overlay["train"]["epochs"] >= 1
    # CT: cropped to the body (the phantom's air border), the patch within the cropped median shape
    assert overlay["train"]["crop_foreground"] is True and overlay["train"]["foreground_threshold"] == -500.0
    cropped = json.loads(json.dumps([c["crop_shapes"]["-500.0"] for c in fingerprint["cases"]]))
    assert all(8 <= p <= max(c[i] for c in cropped) for i, p in enumerate(overlay["train"]["patch_size"]))
    for key in ("data.spacing", "train.patch_size", "network.features", "train.batch_size", "train.epochs"):
        row = next(line for line in printed.splitlines() if line.startswith(key))
        assert len(row.split()) > 3, row  # key, value and a reason
    assert "(step time)" in printed and "measured on cpu" in printed

    # medseg train --plan merges it over the config (checked by loading; --set still wins)
    from medseg.cli import build_parser
    from medseg.config import load_config

    args = build_parser().parse_args(["train", "--config", str(base), "--plan", str(out), "--set", "x=1"])
    assert args.plan == str(out)

    config = load_config(base, ["train.batch_size=3"], [out])
    assert list(config.train.patch_size) == overlay["train"]["patch_size"]
    assert config.data.channels[0].normalization["name"] == "ct_clip_zscore"
    assert config.train.batch_size == 3
    assert config.network.features == overlay["network"]["features"]


def test_labels_that_are_one_object_in_every_case_get_the_largest_component_postprocessing():
    from dataclasses import replace

    from medseg.planning.rules import single_object_labels

    labels = {0: "background", 1: "brain", 2: "lesion"}
    fp = replace(_fingerprint([(128, 128, 96)] * 3, [(1.0, 1.0, 1.0)] * 3), labels=labels)
    for i, case in enumerate(fp.cases):
        case.labels.update({1: LabelStats(5000, 5.0, 1), 2: LabelStats(40, 0.04, 1 + 2 * (i == 1))})
    assert single_object_labels(fp)[0] == [1]
    config = from_dict(MedsegConfig, {
        "data": {"channels": [{"name": "CT", "normalization": {"name": "zscore"}}], "labels": labels},
        "network": {"name": "unet", "options": {"norm": "instance"}},
    })  # fmt: skip
    plan = plan_from_fingerprint(fp, config, GPU_8G)
    assert plan.overlay["inference"]["postprocess"]["largest_component"] == [1]
    assert "labels [2] have several objects" in next(
        d.reason for d in plan.decisions if d.key == "inference.postprocess.largest_component"
    )
    _valid_overlay(plan, config)
    # every label fragmented, or counts unmeasured (an older fingerprint): no postprocessing decided
    for case in fp.cases:
        case.labels.update({1: replace(case.labels[1], components=4), 2: replace(case.labels[2], components=None)})
    plan = plan_from_fingerprint(fp, config, GPU_8G)
    assert "postprocess" not in plan.overlay.get("inference", {})


def test_plan_names_the_training_precision_and_why():
    from medseg.training.precision import cpu_bf16_support

    fp = _fingerprint([(40, 40, 40)] * 2, [(1.0, 1.0, 1.0)] * 2)
    gpu = plan_from_fingerprint(fp, _config(), GPU_8G)
    assert gpu.overlay["train"]["precision"] == "fp16" and "CUDA" in next(
        d.reason for d in gpu.decisions if d.key == "train.precision"
    )
    native, why = cpu_bf16_support()
    cpu = plan_from_fingerprint(fp, _config(), _budget(16, device="cpu"))
    assert cpu.value("train.precision") == ("bf16" if native else "fp32")
    row = next(line for line in plan_table(cpu.decisions).splitlines() if line.startswith("train.precision"))
    assert why in row  # the table says which CPU flags decided it
    off = plan_from_fingerprint(fp, _config(amp=False), _budget(16, device="cpu"))
    assert off.value("train.precision") == "fp32"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        plan_from_fingerprint(fp, _config(precision="fp16"), _budget(16, device="cpu"))


def test_budget_epochs_count_one_step_per_batch_of_cases():
    from medseg.planning.calibrate import StepTiming, budget_epochs
    from medseg.planning.plan import Plan

    plan = Plan(n_train=4, n_val=0, full_median_shape=[64.0, 64.0, 64.0])
    plan.decide("train.batch_size", 2, "test")
    plan.decide("train.patch_size", [32, 32, 32], "test")
    budget_epochs(plan, _config(samples_per_case=2), StepTiming(1.5, 3, (1.5, 1.5, 1.5), "cpu"), 1.0)
    # an epoch visits the 4 cases once: 2 steps of 2 cases (x 2 patches each, which the timed step held);
    # 60 s / (2 x 1.5 s) = 20 epochs
    assert plan.value("train.epochs") == 20
