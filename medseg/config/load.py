"""Load a YAML config: a file may name a ``base`` it overlays; ``--set key.sub=value`` overrides come last."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from medseg.config.schema import MedsegConfig
from medseg.config.validate import from_dict
from medseg.errors import ConfigError

MAX_BASE_DEPTH = 8


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``overlay`` merged in: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_raw(path: str | os.PathLike, _depth: int = 0) -> dict[str, Any]:
    """The merged mapping of ``path`` and its chain of ``base`` files (paths relative to each file)."""
    path = Path(path)
    if _depth > MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: 'base' chain deeper than {MAX_BASE_DEPTH} (a cycle?)")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name, got {base!r}")
    return deep_merge(load_raw(path.parent / base, _depth + 1), data)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; the value is parsed as YAML (``3``, ``1e-3``, ``[1, 2]``, ``true``)."""
    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        dotted, raw = item.split("=", 1)
        keys = [k for k in dotted.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: invalid value ({exc})") from exc
        node = out
        for i, k in enumerate(keys[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(keys[: i + 1])} is not a section")
            node = nxt
        node[keys[-1]] = value
    return out


def load_config(
    path: str | os.PathLike, overrides: Iterable[str] = (), overlays: Iterable[str | os.PathLike] = ()
) -> MedsegConfig:
    """Load, merge and validate a config file into a :class:`MedsegConfig`.

    ``overlays`` (e.g. a ``medseg plan`` output) are YAML files merged over the config in order, before the
    ``key.sub=value`` overrides.
    """
    data = load_raw(path)
    sources = [str(path)]
    for overlay in overlays:
        data = deep_merge(data, load_raw(overlay))
        sources.append(str(overlay))
    data = apply_overrides(data, overrides)
    try:
        return from_dict(MedsegConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{' + '.join(sources)}: {exc}") from exc
