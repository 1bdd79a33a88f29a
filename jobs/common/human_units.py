"""Figures as people read them: "13.9 MB", "1 min 18 s". Pure functions for the pages."""

from __future__ import annotations

SIZE_UNITS = ("bytes", "KB", "MB", "GB", "TB")


def _short(value: float) -> str:
    """One decimal under 100, none above, and no trailing ".0" (13.9, 20, 512)."""
    text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return text[:-2] if text.endswith(".0") else text


def size_words(n: float) -> str:
    """A byte count in the unit that keeps it short, 1024 to the next unit: 14566388 -> "13.9 MB"."""
    value, unit = float(max(n, 0)), 0
    while value >= 1024 and unit < len(SIZE_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{int(value)} bytes" if unit == 0 else f"{_short(value)} {SIZE_UNITS[unit]}"


def duration_words(seconds: float) -> str:
    """Seconds as hours, minutes and seconds, the two largest parts: 78 -> "1 min 18 s", 43200 -> "12 h"."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "min"), (secs, "s")]
    first = next((i for i, (v, _) in enumerate(parts) if v), 2)
    return " ".join(f"{v} {unit}" for v, unit in parts[first : first + 2] if v) or "0 s"


def number_words(value: float) -> str:
    """A setting's number as people write it, the same way every time: 2.0 -> "2", 0.0002 -> "0.0002",
    0.00005 -> "5e-5" (no Python "5e-05"), 1000000 -> "1000000"."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    text = f"{value:g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text
