"""Quoting a bad value back in an error: a config problem line, a tool's error answer.

The value may be anything a file or a model sent: a 1 MB string, or an integer of thousands
of digits, whose repr raises ValueError past Python's int-to-str digit limit (also when it
sits inside a list or a table). The quote is always short and never raises.
"""

from __future__ import annotations

from typing import Any


def short_repr(value: Any, limit: int) -> str:
    """``repr(value)`` cut to ``limit`` characters, or a description when it has none."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except ValueError:  # a huge integer inside a list or table
        return "a value too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."
