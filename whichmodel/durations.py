"""Durations as people write and read them: ``2h``, ``90m``, ``3600s``, ``1h30m`` in, and
``4.2s``, ``3m05s``, ``2h10m``, ``822 h`` out (compute budgets, costs, progress)."""

from __future__ import annotations

import re

from whichmodel.errors import WhichModelError

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str, what: str = "--compute-budget") -> float:
    """Seconds of ``2h``, ``90m``, ``3600s``, ``1h30m`` or ``1.5h`` (a bare number: seconds);
    anything else is a one-line :class:`~whichmodel.errors.WhichModelError` naming ``what``."""
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise WhichModelError(f"{what} {text!r}: write a duration such as 2h, 90m, 3600s or "
                                  "1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise WhichModelError(f"{what} {text!r}: a duration above zero, e.g. 2h")
    return seconds


def format_duration(seconds: float | None) -> str:
    """``-`` (unknown), ``4.2s``, ``45s``, ``3m05s``, ``2h10m``, ``822 h``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    total = int(round(seconds))
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 100 * 3600:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{seconds / 3600:,.0f} h"
