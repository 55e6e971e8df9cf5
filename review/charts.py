"""Small server-side SVG charts for the dashboard (no JavaScript, no CDN, CSP-clean: colours
are SVG presentation attributes, not inline styles).

Each function takes plain numbers and returns safe SVG markup; every label is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 28, 44


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    values: Sequence[float | None]


def _axis_max(value: float, *, integer: bool) -> float:
    """The top of the y axis: four round steps (whole numbers when counting people)."""
    if value <= 0:
        return 4.0 if integer else 1.0
    raw = value / 4
    exponent = 10 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * exponent
        if integer and (step < 1 or step != int(step)):
            continue
        if raw <= step:
            return step * 4
    return 40 * exponent


def _fmt(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _frame(title: str, y_max: float, unit: str) -> list[str]:
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):
        value = y_max * i / 4
        y = TOP + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#d9dde3" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="#5b6472">{escape(_fmt(value))}{escape(unit)}</text>'
        )
    return parts


def _x_labels(labels: Sequence[str], slot: float) -> list[str]:
    parts = []
    every = max(1, math.ceil(len(labels) / 12))
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = LEFT + slot * (i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" font-size="11" '
            f'fill="#5b6472">{escape(label)}</text>'
        )
    return parts


def _legend(series: Sequence[Series]) -> list[str]:
    parts, x = [], LEFT
    for s in series:
        parts.append(f'<rect x="{x}" y="{HEIGHT - 18}" width="10" height="10" fill="{s.color}"/>')
        parts.append(
            f'<text x="{x + 14}" y="{HEIGHT - 9}" font-size="12" fill="#1d2330">'
            f"{escape(s.name)}</text>"
        )
        x += 24 + 7 * len(s.name)
    return parts


def stacked_bars(title: str, labels: Sequence[str], series: Sequence[Series]) -> SafeString:
    totals = [sum((s.values[i] or 0) for s in series) for i in range(len(labels))]
    y_max = _axis_max(max(totals, default=0), integer=True)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    parts = _frame(title, y_max, "")
    for i, label in enumerate(labels):
        base = 0.0
        for s in series:
            value = s.values[i] or 0
            if value <= 0:
                continue
            h = plot_h * value / y_max
            y = TOP + plot_h - plot_h * (base + value) / y_max
            parts.append(
                f'<rect x="{LEFT + slot * i + slot * 0.15:.1f}" y="{y:.1f}" '
                f'width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{s.color}">'
                f"<title>{escape(label)}: {escape(s.name)} {value:g}</title></rect>"
            )
            base += value
    parts += _x_labels(labels, slot) + _legend(series) + ["</svg>"]
    return mark_safe("".join(parts))  # noqa: S308 (every label above is escaped)


def lines(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    unit: str = "",
    *,
    integer: bool = False,
    minimum: float = 0.0,
) -> SafeString:
    values = [v for s in series for v in s.values if v is not None]
    y_max = _axis_max(max([minimum, *values]), integer=integer)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    parts = _frame(title, y_max, unit)
    for s in series:
        points = [
            (LEFT + slot * (i + 0.5), TOP + plot_h - plot_h * v / y_max)
            for i, v in enumerate(s.values)
            if v is not None
        ]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>'
            )
        for (x, y), (i, v) in zip(
            points, [(i, v) for i, v in enumerate(s.values) if v is not None], strict=True
        ):
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}">'
                f"<title>{escape(labels[i])}: {escape(s.name)} {_fmt(v)}{escape(unit)}</title>"
                "</circle>"
            )
    parts += _x_labels(labels, slot) + _legend(series) + ["</svg>"]
    return mark_safe("".join(parts))  # noqa: S308 (every label above is escaped)


def grouped_bars(title: str, labels: Sequence[str], series: Sequence[Series]) -> SafeString:
    values = [v or 0 for s in series for v in s.values]
    y_max = _axis_max(max(values, default=0), integer=True)
    plot_h = HEIGHT - TOP - BOTTOM
    slot = (WIDTH - LEFT - RIGHT) / max(1, len(labels))
    width = slot * 0.7 / max(1, len(series))
    parts = _frame(title, y_max, "")
    for i, label in enumerate(labels):
        for j, s in enumerate(series):
            value = s.values[i] or 0
            h = plot_h * value / y_max
            x = LEFT + slot * i + slot * 0.15 + width * j
            parts.append(
                f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{width:.1f}" '
                f'height="{h:.1f}" fill="{s.color}">'
                f"<title>{escape(label)}: {escape(s.name)} {value:g}</title></rect>"
            )
            parts.append(
                f'<text x="{x + width / 2:.1f}" y="{TOP + plot_h - h - 4:.1f}" '
                f'text-anchor="middle" font-size="11" fill="#1d2330">{value:g}</text>'
            )
    parts += _x_labels(labels, slot) + _legend(series) + ["</svg>"]
    return mark_safe("".join(parts))  # noqa: S308 (every label above is escaped)
