"""train.precision: the auto rule reads the CPU's flags, bf16 steps track fp32, bad settings are refused."""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import tiny_config

from medseg.errors import ConfigError
from medseg.losses import DeepSupervisionLoss
from medseg.nets import build_network
from medseg.training.loop import Trainer
from medseg.training.optim import build_optimizer, build_poly_schedule
from medseg.training.precision import cpu_bf16_support, cpu_flags, resolve_precision
from medseg.training.run import build_model_spec

NATIVE_BF16, WHY = cpu_bf16_support()

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
bugs\t\t: spectre_v1

processor\t: 1
flags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}
"""


@pytest.mark.parametrize(
    ("extra", "native", "named"),
    [("", False, "none of avx512_bf16, amx_bf16"), ("avx512_bf16", True, "avx512_bf16"),
     ("amx_tile amx_bf16", True, "amx_bf16")],
)
def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, extra, native, named):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(extra=extra))
    assert "avx512f" in cpu_flags(info) and ("avx512_bf16" in cpu_flags(info)) == ("avx512_bf16" in extra)
    ok, why = cpu_bf16_support(info)
    assert ok is (native and torch.backends.mkldnn.is_available())
    assert named in why


def test_unreadable_cpu_flags_mean_no_bf16(tmp_path):
    ok, why = cpu_bf16_support(tmp_path / "missing")
    assert not ok and "cannot be read" in why


def test_auto_precision_per_device():
    cpu = resolve_precision("auto", "cpu")
    assert cpu.name == ("bf16" if NATIVE_BF16 else "fp32") and cpu.reason == WHY
    assert resolve_precision("auto", "cpu", amp=False).name == "fp32"
    assert resolve_precision("auto", "cuda", amp=True).name == "fp16"
    assert resolve_precision("auto", "cuda", amp=True).needs_scaler
    assert resolve_precision("auto", "cuda", amp=False).name == "fp32"
    assert resolve_precision("fp32", "cpu").dtype is None
    assert resolve_precision("bf16", "cpu").dtype is torch.bfloat16


def test_bad_precision_settings_are_refused():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="expected one of auto, fp32, bf16, fp16, got 'fp8'"):
        resolve_precision("fp8", "cpu")
    with pytest.raises(ConfigError, match="train.precision"):
        tiny_config(train={"precision": "fp8"})


def _losses(precision: str, steps: int = 3) -> tuple[list[float], list[torch.dtype]]:
    """Losses of ``steps`` training steps of the tiny UNet on fixed random batches, and the network's output
    dtype seen inside each step."""
    config = tiny_config(train={"precision": precision, "lr": 1e-3})
    d, tc = config.data, config.train
    torch.manual_seed(0)
    model = build_network(**config.network.build_kwargs(d.spatial_dims, len(d.channels), d.num_classes))
    dtypes: list[torch.dtype] = []
    model.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    optimizer = build_optimizer(model.parameters(), tc.optimizer, tc.lr, tc.weight_decay, tc.momentum, tc.nesterov)
    trainer = Trainer(
        model, DeepSupervisionLoss(config.loss.build()), optimizer, build_poly_schedule(optimizer, 10, 0.9),
        spec=build_model_spec(config, model), loaders=lambda epoch: [], validate=lambda epoch: ({}, []),
        checkpoint_dir=".", epochs=10, device="cpu", amp=True, precision=precision,
    )
    gen = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        image = torch.randn((2, len(d.channels), 16, 16, 8), generator=gen)
        label = (image[:, :1] + 0.3 * torch.randn((2, 1, 16, 16, 8), generator=gen) > 0.5).float()
        losses.append(trainer.train_step({"image": image, "label": label}, 0, step)["loss"])
    return losses, dtypes


@pytest.mark.skipif(not NATIVE_BF16, reason=f"no native bfloat16 on this CPU: {WHY}")
def test_bf16_steps_track_fp32():
    fp32, fp32_dtypes = _losses("fp32")
    bf16, bf16_dtypes = _losses("bf16")
    assert set(fp32_dtypes) == {torch.float32} and set(bf16_dtypes) == {torch.bfloat16}  # autocast really ran
    assert fp32[-1] < fp32[0]  # it learns
    for a, b in zip(fp32, bf16, strict=True):
        assert b == pytest.approx(a, rel=5e-3), (fp32, bf16)  # measured: ~5e-4
    assert bf16 != fp32  # and it is not silently fp32
