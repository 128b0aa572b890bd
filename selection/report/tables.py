"""Plain-text tables fitted to a width: the terminal's, the report's default 100 columns.

Generic helpers of every text table the report prints (the leaderboard, the per-task tables,
the fine-tune accuracy table, the CLI's listings): :func:`fit_table` splits a table too wide for
the terminal into blocks of columns, each repeating the label columns.
"""

from __future__ import annotations

import math
import shutil

WIDTH = 100  # the default report's widest line


def terminal_width(cap: int | None = WIDTH) -> int:
    """The terminal's width (``COLUMNS``, else the tty's, else 100), at most ``cap``."""
    columns = shutil.get_terminal_size((WIDTH, 24)).columns
    return max(40, min(columns, cap) if cap else columns)


def number(value: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals, or ``-`` where there is none (None, NaN, inf, not a
    number): every table's empty cell."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "-"
    return f"{v:.{digits}f}" if math.isfinite(v) else "-"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def table_lines(header: list[str], rows: list[list[str]], n_labels: int, width: int) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    if over > 0 and n_labels > 1:  # shorten the widest label column (the strategy names)
        widths[n_labels - 1] = max(8, widths[n_labels - 1] - over)

    def line(cells: list[str]) -> str:
        return "  ".join(clip(c, w).ljust(w) if i < n_labels else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *map(line, rows)]


def fit_table(header: list[str], rows: list[list[str]], n_labels: int, width: int) -> str:
    """A plain table, split into blocks of columns (each repeating the ``n_labels`` label
    columns) so that no line is wider than ``width``."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    label_w = sum(widths[:n_labels]) + 2 * n_labels
    blocks, current, used = [], [], label_w
    for i in range(n_labels, len(header)):
        if current and used + widths[i] + 2 > width:
            blocks.append(current)
            current, used = [], label_w
        current.append(i)
        used += widths[i] + 2
    if current or not blocks:
        blocks.append(current)
    out = []
    for cols in blocks:
        keep = [*range(n_labels), *cols]
        out.append("\n".join(table_lines([header[i] for i in keep], [[r[i] for i in keep] for r in rows],
                                    n_labels, width)))
    return "\n\n".join(out)
