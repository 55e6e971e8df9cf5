"""Server-side SVG charts of a model card's tables (no JavaScript, CSP-clean: colours are SVG
presentation attributes). Drawn the way `review/charts.py` draws the dashboard's, which the
catalog cannot import (it sits below the console); every label is escaped.
"""

from __future__ import annotations

import math

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from catalog.cards import cell_text

PALETTE = ("#2456a6", "#1f7a3a", "#c47a16", "#a62424", "#6b4ea6", "#5b6472")
INK, GRID, MUTED = "#1d2330", "#d9dde3", "#5b6472"


def _axis_max(value: float, unit: str) -> float:
    if unit == "%" and 50 < value <= 100:
        return 100.0
    if value <= 0:
        return 1.0
    raw = value / 4
    exponent = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        if raw <= multiple * exponent:
            return multiple * exponent * 4
    return 40 * exponent


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]


def _x_label(label: str, *, x: float, y: float, slot: float) -> str:
    """A label under a group of bars; one too wide for its slot goes on two lines."""
    lines = [label]
    if len(label) * 6.2 > slot * 0.95 and (" " in label or "-" in label):
        cut = max(
            label.rfind(" ", 0, len(label) // 2 + 3), label.rfind("-", 0, len(label) // 2 + 3)
        )
        if cut > 0:
            lines = [label[: cut + (label[cut] == "-")].strip(), label[cut + 1 :].strip()]
    spans = "".join(
        f'<tspan x="{x:.1f}" dy="{0 if i == 0 else 13}">{escape(text)}</tspan>'
        for i, text in enumerate(lines)
    )
    return (
        f'<text x="{x:.1f}" y="{y}" text-anchor="middle" font-size="11" fill="{MUTED}">'
        f"{spans}</text>"
    )


def by_size(table: dict, *, highlight: str = "") -> SafeString | None:
    """Grouped bars: one group per benchmark (column), one bar per size (row). The card's own
    size is drawn solid, the others lighter."""
    columns, rows, unit = table["columns"][1:], table["rows"], table.get("unit", "")
    values = [[_number(v) for v in row[1:]] for row in rows]
    found = [v for row in values for v in row if v is not None]
    if not found:
        return None
    width, height, left, right, top, bottom = 760, 300, 48, 12, 16, 66
    plot_h, slot = height - top - bottom, (width - left - right) / len(columns)
    bar = slot * 0.8 / len(rows)
    y_max = _axis_max(max(found), unit)
    parts = _svg_open(width, height, table["title"])
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{MUTED}">{y_max * i / 4:g}{escape(unit)}</text>'
        )
    for c, column in enumerate(columns):
        for r, row in enumerate(rows):
            value = values[r][c]
            if value is None:
                continue
            h = plot_h * value / y_max
            x = left + slot * c + slot * 0.1 + bar * r
            opacity = "1" if not highlight or str(row[0]) == highlight else "0.45"
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" fill="{PALETTE[r % len(PALETTE)]}" fill-opacity="{opacity}">'
                f"<title>{escape(column)}, {escape(cell_text(row[0]))}: "
                f"{escape(cell_text(row[c + 1]))}{escape(unit)}</title></rect>"
            )
        parts.append(_x_label(column, x=left + slot * (c + 0.5), y=top + plot_h + 16, slot=slot))
    x = left
    for r, row in enumerate(rows):
        name = cell_text(row[0])
        parts.append(
            f'<rect x="{x}" y="{height - 22}" width="10" height="10" '
            f'fill="{PALETTE[r % len(PALETTE)]}"/>'
            f'<text x="{x + 14}" y="{height - 13}" font-size="12" fill="{INK}">'
            f"{escape(name)}</text>"
        )
        x += 28 + 7 * len(name)
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every label above is escaped)


def by_category(table: dict) -> SafeString | None:
    """Horizontal bars: one per row (a category), its first numeric column as the value."""
    rows, unit = table["rows"], table.get("unit", "")
    points = []
    for row in rows:
        cell = next((v for v in row[1:] if _number(v) is not None), None)
        if cell is not None:
            points.append((cell_text(row[0]), _number(cell), cell_text(cell)))
    if not points:
        return None
    width, left, right, top, line = 760, 190, 60, 8, 24
    height = top * 2 + line * len(points)
    x_max = _axis_max(max(v for _, v, _ in points), unit)
    scale = (width - left - right) / x_max
    parts = _svg_open(width, height, table["title"])
    for i, (label, value, text) in enumerate(points):
        y = top + line * i
        parts.append(
            f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" font-size="12" fill="{INK}">'
            f"{escape(label)}</text>"
            f'<rect x="{left}" y="{y + 4}" width="{value * scale:.1f}" height="{line - 8}" '
            f'fill="{PALETTE[0]}">'
            f"<title>{escape(label)}: {escape(text)}{escape(unit)}</title></rect>"
            f'<text x="{left + value * scale + 6:.1f}" y="{y + 16}" font-size="12" '
            f'fill="{INK}">{escape(text)}{escape(unit)}</text>'
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every label above is escaped)


def table_chart(table: dict, *, highlight: str = "") -> SafeString | None:
    if table.get("chart") == "by_size":
        return by_size(table, highlight=highlight)
    if table.get("chart") == "by_category":
        return by_category(table)
    return None
