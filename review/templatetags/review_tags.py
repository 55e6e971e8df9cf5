from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils.html import format_html_join

from accounts.selectors import user_is_reviewer

register = template.Library()


@register.filter
def is_reviewer(user) -> bool:
    """For the nav link. Cached on the user, so a console page asks the database once."""
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_staff:
        return False
    cached = getattr(user, "_review_is_reviewer", None)
    if cached is None:
        cached = user_is_reviewer(user)
        user._review_is_reviewer = cached
    return cached


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
