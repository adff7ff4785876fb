"""The plan as a text table: key, value, reason (one row per decision; informative rows in parentheses)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medseg.planning.plan import Decision

MAX_VALUE_WIDTH = 44


def format_value(value: Any) -> str:
    """Compact text of a decision's value: lists as ``a x b``, normalization specs as ``name(k=v, ...)``."""
    if isinstance(value, Mapping) and "name" in value:
        args = ", ".join(f"{k}={format_value(v)}" for k, v in value.items() if k != "name")
        return f"{value['name']}({args})"
    if isinstance(value, float):
        return f"{value:.5g}"
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = [format_value(v) for v in value]
        return ("x".join(items)) if all(isinstance(v, (int, float)) for v in value) else f"[{', '.join(items)}]"
    return str(value)


def plan_table(decisions: Sequence[Decision]) -> str:
    """The decisions as aligned columns ``key | value | reason``; long values wrap onto their own line."""
    rows = [(d.key, format_value(d.value), d.reason) for d in decisions]
    key_w = max(len("key"), *(len(r[0]) for r in rows))
    val_w = min(MAX_VALUE_WIDTH, max(len("value"), *(len(r[1]) for r in rows)))
    lines = [f"{'key':<{key_w}}  {'value':<{val_w}}  reason", f"{'-' * key_w}  {'-' * val_w}  {'-' * 6}"]
    for key, value, reason in rows:
        if len(value) > val_w:
            lines.append(f"{key:<{key_w}}  {value}")
            lines.append(f"{'':<{key_w}}  {'':<{val_w}}  {reason}")
        else:
            lines.append(f"{key:<{key_w}}  {value:<{val_w}}  {reason}")
    return "\n".join(lines)
