"""Config sections for training: where the cases are, the network, the loss, the loop, augmentation, inference.

Each section is a frozen dataclass validated on construction (errors name the key); :func:`check_consistency`
checks what depends on several sections (patch size vs spatial dims, rotation axes, ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from medseg.errors import ConfigError

#: network options set by the trainer from the data contract, not by the ``network.options`` mapping
DERIVED_NETWORK_OPTIONS = (
    "name",
    "spatial_dims",
    "in_channels",
    "out_channels",
    "features",
    "deep_supervision",
)
#: losses whose region part takes class indices through ``to_onehot_y``
_REGION_LOSSES = ("dice", "dice_ce")
_COMPOUND_LOSSES = ("dice_boundary", "dice_ce_boundary")


def _check_probability(key: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{key}: must be a probability in [0, 1], got {value}")


def _check_positive(key: str, value: float, *, strict: bool = True) -> None:
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        raise ConfigError(f"{key}: must be {'> 0' if strict else '>= 0'}, got {value}")


@dataclass(frozen=True)
class DatalistConfig:
    """Where the training cases are.

    Attributes:
        path: a folder (one sub-folder per case, files named after the channels plus the label file), a CSV file
            (columns ``case_id``, one per channel, the label column) or a JSON file (``{"cases": [...]}`` as
            written by :func:`medseg.synthetic.dataset.write_perfusion_dataset`, or a list of cases). Relative
            paths inside the list are relative to the list's folder. ``None``: must be given to ``train()``.
        format: ``auto`` picks from the path (folder with a ``dataset.json`` -> json).
        label: the label file's stem (folder layout) or the label column / key (CSV, JSON).
        splits: an nnU-Net style splits file (``splits_final.json``: a list of ``{"train": [case ids], "val":
            [case ids]}``, one per fold, or a single such mapping); fold ``fold`` of it picks the training and
            validation cases. Without it, a ``split`` column (CSV) or key (JSON) with ``train`` / ``val`` per case
            gives the roles; without either, ``train.val_fraction`` / ``train.folds`` split the cases by seed.
        fold: the entry of ``splits`` to use.
    """

    path: str | None = None
    format: Literal["auto", "folder", "csv", "json"] = "auto"
    label: str = "label"
    splits: str | None = None
    fold: int = 0

    def __post_init__(self) -> None:
        if self.fold < 0:
            raise ConfigError(f"datalist.fold: must be >= 0, got {self.fold}")


@dataclass(frozen=True)
class NetworkConfig:
    """The network: a registered name, encoder widths and deep supervision; other options in ``options``.

    Spatial dims and channel counts come from ``data`` (channels in, labels out).
    """

    name: str = "unet"
    features: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    deep_supervision: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from medseg.nets.registry import ALIASES, available_networks

        if self.name.strip().lower() not in set(available_networks()) | set(ALIASES):
            valid = ", ".join(available_networks() + sorted(ALIASES))
            raise ConfigError(f"network.name: unknown network {self.name!r}; valid names: {valid}")
        if len(self.features) < 2 or any(f < 1 for f in self.features):
            raise ConfigError(f"network.features: at least two positive widths, got {list(self.features)}")
        clash = sorted(set(self.options) & set(DERIVED_NETWORK_OPTIONS))
        if clash:
            raise ConfigError(
                f"network.options: {clash} are set elsewhere (network.name/features/deep_supervision, or derived "
                "from data.channels, data.labels and data.spatial_dims)"
            )

    def build_kwargs(self, spatial_dims: int, in_channels: int, out_channels: int) -> dict[str, Any]:
        """The keyword arguments of :func:`medseg.nets.build_network` for this data contract."""
        return {
            "name": self.name,
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": list(self.features),
            "deep_supervision": self.deep_supervision,
            **self.options,
        }


@dataclass(frozen=True)
class LossConfig:
    """The loss: a name of :data:`medseg.losses.LOSSES` and its options.

    Training targets are class indices, so the region loss gets ``to_onehot_y: true`` unless set (``false`` is
    refused). ``deep_supervision_weights``: one weight per network output (None: 1, 1/2, 1/4, ... normalised).
    """

    name: str = "dice_ce"
    options: dict[str, Any] = field(default_factory=dict)
    deep_supervision_weights: list[float] | None = None

    def __post_init__(self) -> None:
        try:
            self.build()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"loss: {exc}") from exc

    def build(self) -> Any:
        """The loss module of these settings (without the deep supervision wrapper)."""
        from medseg.losses import build_loss

        return build_loss(self.name, **self.build_options())

    def build_options(self) -> dict[str, Any]:
        """``options`` with ``to_onehot_y`` set for class-index targets."""
        options = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.options.items()}
        if self.name in _REGION_LOSSES:
            region, where = options, "loss.options.to_onehot_y"
        elif self.name in _COMPOUND_LOSSES:
            region = options.setdefault("dice", {})
            if not isinstance(region, dict):
                raise ConfigError(f"loss.options.dice: expected a mapping, got {region!r}")
            where = "loss.options.dice.to_onehot_y"
        else:
            return options
        if region.setdefault("to_onehot_y", True) is not True:
            raise ConfigError(f"{where}: training targets are class indices, so it must be true")
        return options


@dataclass(frozen=True)
class TrainConfig:
    """The training loop and its data sampling.

    One step sees ``batch_size`` cases x ``samples_per_case`` patches. One epoch visits every training case once.
    ``num_threads``: torch CPU threads while training (None: torch's default; the previous value is restored).
    A patch is centred on foreground with probability ``pos_fraction`` (foreground oversampling).
    The learning rate follows ``lr * (1 - epoch / epochs) ** poly_power``.

    ``budget_minutes``: a wall-clock budget for the training loop (epochs, validations and checkpoints; the data
    loading and caching before the first epoch are not counted). Training stops when the time left would not hold
    the final validation (estimated from the last one), ``epochs`` becomes an upper bound, and the learning rate
    follows ``lr * (1 - p) ** poly_power`` step by step, ``p`` being the fraction of the run done (the larger of
    time used / time available and steps done / ``epochs`` steps), so it reaches its final value (0) as the run
    ends. ``val_every: 0`` turns validation off (``best.pt`` is then the final weights).

    ``precision``: autocast of the training step (see :mod:`medseg.training.precision`): ``auto`` is fp16 on CUDA,
    bf16 on a CPU with native bfloat16 (``avx512_bf16`` or ``amx_bf16``), else fp32; ``amp: false`` makes ``auto``
    fp32. ``fp16`` needs CUDA.
    """

    seed: int = 0
    epochs: int = 50
    batch_size: int = 2
    samples_per_case: int = 2
    patch_size: list[int] = field(default_factory=lambda: [96, 96, 96])
    pos_fraction: float = 0.67
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.99
    nesterov: bool = True
    poly_power: float = 0.9
    grad_clip: float | None = 12.0
    val_every: int = 1
    budget_minutes: float | None = None
    val_fraction: float = 0.2
    folds: int | None = None
    fold: int = 0
    cache: Literal["memory", "disk", "none"] = "memory"
    cache_dir: str | None = None
    num_workers: int = 0
    num_threads: int | None = None
    amp: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    deterministic: bool = True
    crop_foreground: bool = True
    foreground_threshold: float = 0.0
    foreground_margin: int = 2
    qc_cases: int = 2

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "samples_per_case"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}: must be >= 1, got {getattr(self, key)}")
        if self.val_every < 0:
            raise ConfigError(f"train.val_every: must be >= 1, or 0 for no validation, got {self.val_every}")
        if self.budget_minutes is not None:
            _check_positive("train.budget_minutes", self.budget_minutes)
        if not self.patch_size or any(p < 1 for p in self.patch_size):
            raise ConfigError(f"train.patch_size: positive sizes required, got {list(self.patch_size)}")
        _check_probability("train.pos_fraction", self.pos_fraction)
        _check_positive("train.lr", self.lr)
        _check_positive("train.weight_decay", self.weight_decay, strict=False)
        _check_probability("train.momentum", self.momentum)
        _check_positive("train.poly_power", self.poly_power, strict=False)
        if self.grad_clip is not None:
            _check_positive("train.grad_clip", self.grad_clip)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.folds is not None:
            if self.folds < 2:
                raise ConfigError(
                    f"train.folds: at least 2 folds (or null for a val_fraction split), got {self.folds}"
                )
            if not 0 <= self.fold < self.folds:
                raise ConfigError(f"train.fold: must be in 0..{self.folds - 1}, got {self.fold}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads: must be >= 1 or null, got {self.num_threads}")
        if self.num_workers < 0 or self.foreground_margin < 0 or self.qc_cases < 0:
            raise ConfigError("train.num_workers, train.foreground_margin and train.qc_cases must be >= 0")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"train.device: 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


@dataclass(frozen=True)
class AugmentationConfig:
    """Random augmentation of training patches.

    Flips along ``flip_axes`` (None: every spatial axis), each with ``flip_prob``. With ``rotate_prob`` a rotation
    by up to ``rotate_deg`` degrees about each axis (MONAI's order; in 2D only the first value is used) and, with
    ``scale_prob``, one isotropic zoom factor from ``scale_range`` (distance maps are rescaled with it). Intensity:
    a random factor ``1 + U(-intensity_scale, intensity_scale)``, a shift ``U(-intensity_shift, intensity_shift)``
    and Gaussian noise of standard deviation up to ``noise_std`` (normalised units).
    """

    enabled: bool = True
    flip_prob: float = 0.5
    flip_axes: list[int] | None = None
    rotate_prob: float = 0.2
    rotate_deg: list[float] = field(default_factory=lambda: [0.0, 0.0, 15.0])
    scale_prob: float = 0.2
    scale_range: tuple[float, float] = (0.85, 1.15)
    intensity_scale_prob: float = 0.15
    intensity_scale: float = 0.1
    intensity_shift_prob: float = 0.15
    intensity_shift: float = 0.1
    noise_prob: float = 0.15
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        for key in (
            "flip_prob",
            "rotate_prob",
            "scale_prob",
            "intensity_scale_prob",
            "intensity_shift_prob",
            "noise_prob",
        ):
            _check_probability(f"augmentation.{key}", getattr(self, key))
        if any(not 0 <= abs(a) <= 180 for a in self.rotate_deg):
            raise ConfigError(f"augmentation.rotate_deg: angles in [-180, 180], got {list(self.rotate_deg)}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"augmentation.scale_range: need 0 < low <= high, got {list(self.scale_range)}")
        for key in ("intensity_scale", "intensity_shift", "noise_std"):
            _check_positive(f"augmentation.{key}", getattr(self, key), strict=False)


@dataclass(frozen=True)
class PostprocessConfig:
    """Clean-up of predicted label maps, applied on the study's own grid (see :mod:`medseg.inference.postprocess`).

    ``largest_component``: true (every label), false, or the label values to reduce to their largest connected
    component. ``min_volume_mm3``: remove objects below this volume, one number for every label or
    ``{label: mm^3}``; null or 0 disables it. ``connectivity``: 1 (faces) .. number of axes (full, the default).
    """

    largest_component: bool | list[int] = False
    min_volume_mm3: float | dict[int, float] | None = None
    connectivity: int | None = None

    def __post_init__(self) -> None:
        self.build()

    def build(self) -> Any:
        """The :class:`medseg.inference.postprocess.Postprocess` of these settings (ConfigError when invalid)."""
        from medseg.config.validate import to_dict
        from medseg.inference.postprocess import Postprocess

        return Postprocess.from_config(to_dict(self), "inference.postprocess")


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window settings for validation and inference (the window is ``train.patch_size``), and the
    postprocessing of predicted label maps."""

    overlap: float = 0.5
    sw_batch_size: int = 4
    mode: Literal["gaussian", "constant"] = "gaussian"
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"inference.overlap: must be in [0, 1), got {self.overlap}")
        if self.sw_batch_size < 1:
            raise ConfigError(f"inference.sw_batch_size: must be >= 1, got {self.sw_batch_size}")


def check_postprocess_labels(postprocess: PostprocessConfig, labels: Mapping[int, str]) -> None:
    """Refuse postprocessing settings that name label values the model does not have."""
    unknown = sorted(postprocess.build().label_values - set(labels))
    if unknown:
        raise ConfigError(f"inference.postprocess: label value(s) {unknown} are not in data.labels {sorted(labels)}")


def check_consistency(config: Any) -> None:
    """Checks across sections of a :class:`medseg.config.MedsegConfig`."""
    dims = config.data.spatial_dims
    if len(config.train.patch_size) != dims:
        raise ConfigError(
            f"train.patch_size: expected {dims} sizes for data.spatial_dims={dims}, got {list(config.train.patch_size)}"
        )
    check_postprocess_labels(config.inference.postprocess, config.data.labels)
    if config.inference.postprocess.connectivity not in (None, *range(1, dims + 1)):
        raise ConfigError(
            f"inference.postprocess.connectivity: must be 1..{dims} for data.spatial_dims={dims} (or null), got "
            f"{config.inference.postprocess.connectivity}"
        )
    axes = config.augmentation.flip_axes
    if axes is not None and any(not 0 <= a < dims for a in axes):
        raise ConfigError(f"augmentation.flip_axes: axes must be in 0..{dims - 1}, got {list(axes)}")
    needed = 1 if dims == 2 else 3
    if len(config.augmentation.rotate_deg) < needed:
        raise ConfigError(
            f"augmentation.rotate_deg: expected {needed} angle(s) for {dims}D, got "
            f"{list(config.augmentation.rotate_deg)}"
        )
