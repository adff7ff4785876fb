"""Network registry: build a network from its name and options, and describe a built network for checkpoints."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from torch import nn

from medseg.errors import ConfigError
from medseg.nets.unet import UNet
from medseg.nets.unetpp import UNetPlusPlus

logger = logging.getLogger(__name__)

#: Canonical name -> network class.
NETWORKS: dict[str, type[nn.Module]] = {
    UNet.registry_name: UNet,
    UNetPlusPlus.registry_name: UNetPlusPlus,
}

#: Other accepted spellings -> canonical name.
ALIASES: dict[str, str] = {
    "unetplusplus": UNetPlusPlus.registry_name,
    "unet++": UNetPlusPlus.registry_name,
}


def available_networks() -> list[str]:
    """The canonical names of the registered networks (aliases excluded), sorted."""
    return sorted(NETWORKS)


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"network name must be a string, got {name!r}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in NETWORKS:
        valid = ", ".join(available_networks() + sorted(ALIASES))
        raise ConfigError(f"unknown network {name!r}; valid names: {valid}")
    return key


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build the network registered as ``name`` (case-insensitive; aliases allowed) with ``kwargs``.

    ``build_network(**net.config)`` rebuilds a network with the same architecture (weights are not included).

    Raises:
        medseg.errors.ConfigError: (a ``ValueError``) for an unknown name (the message lists the valid names), an
            option the network does not accept (the message lists the accepted ones) or an invalid option value.
    """
    cls = NETWORKS[_canonical(name)]
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for network {name!r}: {', '.join(unknown)}; accepted: {', '.join(accepted)}"
        )
    missing = [
        p
        for p, spec in params.items()
        if p != "self" and spec.default is inspect.Parameter.empty and p not in kwargs
    ]
    if missing:
        raise ConfigError(f"missing option(s) for network {name!r}: {', '.join(missing)}")
    return cls(**kwargs)


def network_config(model: nn.Module) -> dict[str, Any]:
    """The ``{"name": ..., **options}`` dict of a registered network, such that ``build_network(**cfg)`` rebuilds it."""
    config = getattr(model, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise ConfigError(
            f"{type(model).__name__} is not a registered medseg network (no config with a name)"
        )
    return dict(config)
