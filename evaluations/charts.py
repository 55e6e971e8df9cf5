"""The results page's charts: horizontal bars with their 95% intervals as whiskers, this
evaluation's measurements beside the card's published figures. Server-side SVG drawn with
the catalog's palette and axis rule (no JavaScript, CSP-clean); every label is escaped."""

from __future__ import annotations

from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from catalog.charts import GRID, INK, MUTED, PALETTE, _axis_max


@dataclass(frozen=True)
class Bar:
    label: str
    value: float  # in the chart's unit (percent)
    low: float | None = None
    high: float | None = None
    published: bool = False


def bars(title: str, rows: list[Bar], *, unit: str = "%") -> SafeString | None:
    if not rows:
        return None
    width, left, right, top, line = 860, 330, 70, 8, 26
    height = top * 2 + line * len(rows) + 18
    x_max = _axis_max(max(max(r.value, r.high or 0) for r in rows), unit)
    scale = (width - left - right) / x_max
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    plot_bottom = top + line * len(rows)
    for i in range(5):
        x = left + (width - left - right) * i / 4
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{plot_bottom}" stroke="{GRID}"/>'
            f'<text x="{x:.1f}" y="{plot_bottom + 14}" text-anchor="middle" font-size="11" '
            f'fill="{MUTED}">{x_max * i / 4:g}{escape(unit)}</text>'
        )
    for i, row in enumerate(rows):
        y = top + line * i
        colour = PALETTE[5] if row.published else PALETTE[0]
        interval = ""
        if row.low is not None and row.high is not None:
            interval = f" (95% CI {row.low:.1f}-{row.high:.1f})"
        text = f"{row.value:.1f}{unit}{interval}"
        parts.append(
            f'<text x="{left - 8}" y="{y + 17}" text-anchor="end" font-size="12" fill="{INK}">'
            f"{escape(row.label)}</text>"
            f'<rect x="{left}" y="{y + 5}" width="{max(row.value, 0) * scale:.1f}" '
            f'height="{line - 10}" fill="{colour}"><title>{escape(row.label)}: '
            f"{escape(text)}</title></rect>"
        )
        end = max(row.value, row.high or 0) * scale
        if row.low is not None and row.high is not None:
            x1, x2, mid = left + row.low * scale, left + row.high * scale, y + line / 2
            parts.append(
                f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{mid:.1f}" y2="{mid:.1f}" '
                f'stroke="{INK}" stroke-width="1.5"/>'
                f'<line x1="{x1:.1f}" x2="{x1:.1f}" y1="{mid - 5:.1f}" y2="{mid + 5:.1f}" '
                f'stroke="{INK}" stroke-width="1.5"/>'
                f'<line x1="{x2:.1f}" x2="{x2:.1f}" y1="{mid - 5:.1f}" y2="{mid + 5:.1f}" '
                f'stroke="{INK}" stroke-width="1.5"/>'
            )
        parts.append(
            f'<text x="{left + end + 6:.1f}" y="{y + 17}" font-size="12" fill="{INK}">'
            f"{escape(f'{row.value:.1f}{unit}')}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 (every label above is escaped)
