"""Filters for the console's own pages. The site nav asks `accounts.context_processors`."""

from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils.html import format_html_join

register = template.Library()


@register.filter
def age(value: timedelta | None) -> str:
    """'3 d 4 h', '5 h', '12 min'."""
    if value is None:
        return ""
    minutes = int(value.total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h"
    return f"{minutes} min"


@register.filter
def days(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} days"


@register.filter
def select_options(field) -> str:
    """A bound choice field's <option>s, built in Python: Django's select widget renders each
    of the 250 countries through a template include, which cost more than the queue's SQL."""
    current = "" if field.value() is None else str(field.value())
    return format_html_join(
        "",
        '<option value="{}"{}>{}</option>',
        (
            (value, " selected" if str(value) == current else "", label)
            for value, label in field.field.choices
        ),
    )
