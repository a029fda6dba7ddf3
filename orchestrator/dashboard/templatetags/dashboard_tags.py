"""Template filters for agent-written data: always plain text (auto-escaped by the template)."""

from __future__ import annotations

import json
from typing import Any

from django import template

register = template.Library()


@register.filter
def as_json(value: Any, indent: int | None = None) -> str:
    """``value`` as JSON text (compact, or indented by ``indent``)."""
    separators = (",", ": ") if indent else (",", ":")
    return json.dumps(
        value, ensure_ascii=False, indent=indent or None, separators=separators, default=str
    )


@register.filter
def tool_arguments(call: dict[str, Any]) -> str:
    """The arguments of an assistant's tool call, pretty if they are JSON."""
    raw = (call.get("function") or {}).get("arguments", "")
    try:
        return json.dumps(json.loads(raw), ensure_ascii=False, indent=2)
    except (TypeError, ValueError):
        return str(raw)


@register.filter
def tool_name(call: dict[str, Any]) -> str:
    return str((call.get("function") or {}).get("name", ""))
