"""Turn a nested configuration into MLflow parameters: dotted keys, text values within MLflow's limits."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

# MLflow's limits (mlflow.utils.validation): parameter values up to 6000 characters, keys up to 250.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_KEY_LENGTH = 250
TRUNCATION_MARK = "...[truncated]"
# Characters MLflow accepts in keys on every platform (colons are refused on Windows, so we never use them).
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


def sanitize_key(key: str) -> str:
    """A key MLflow accepts: unsupported characters become ``_``; over-long keys keep a hash of the original."""
    clean = _BAD_KEY_CHARS.sub("_", key).strip("/ ")
    clean = re.sub(r"/{2,}", "/", clean)
    clean = "/".join("_" if part in (".", "..") else part for part in clean.split("/")) or "_"
    if len(clean) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        clean = f"{clean[: MAX_KEY_LENGTH - 9]}~{digest}"
    return clean


def cap_value(text: str, limit: int = MAX_PARAM_VALUE_LENGTH) -> str:
    """``text`` cut to ``limit`` characters, ending with a visible truncation mark when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK


def _is_nested(value: Any) -> bool:
    if isinstance(value, Mapping):
        return True
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return True
    if isinstance(value, list | tuple):
        return any(_is_nested(v) for v in value)
    return False


def _as_mapping(value: Any) -> Mapping[Any, Any]:
    if isinstance(value, Mapping):
        return value
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def stringify(value: Any) -> str:
    """Text form of a parameter value: strings as they are, scalars via ``str``, sequences as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
        return json.dumps(
            [v if isinstance(v, int | float | bool | str) or v is None else str(v) for v in items]
        )
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return str(item())
    return str(value)


def flatten_params(
    params: Mapping[str, Any] | Any, max_value_length: int = MAX_PARAM_VALUE_LENGTH
) -> dict[str, str]:
    """Flatten nested mappings / dataclasses to ``{"a.b.c": "text"}``.

    Lists of scalars stay one parameter (JSON text); lists holding mappings are indexed (``data.channels.0.name``).
    Empty mappings become ``"{}"``. Values are cut to ``max_value_length`` characters with a truncation mark.
    """
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            mapping = _as_mapping(value)
            if not mapping and prefix:
                flat[sanitize_key(prefix)] = "{}"
            for key, sub in mapping.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, list | tuple) and _is_nested(value):
            for i, sub in enumerate(value):
                walk(f"{prefix}.{i}" if prefix else str(i), sub)
        else:
            flat[sanitize_key(prefix)] = cap_value(stringify(value), max_value_length)

    if not (isinstance(params, Mapping) or dataclasses.is_dataclass(params)):
        raise TypeError(f"params must be a mapping or a dataclass, got {type(params).__name__}")
    walk("", params)
    return flat
