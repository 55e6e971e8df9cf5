from django import template

from catalog.cards import cell_text
from catalog.selectors import card_versions_seen

register = template.Library()


@register.filter
def card_cell(value) -> str:
    return cell_text(value)


@register.simple_tag
def cards_seen(application) -> list:
    """The card versions an application was (last) submitted with, in catalog order."""
    seen = card_versions_seen(application_id=application.pk).values()
    return sorted(seen, key=lambda v: (v.variant.position, v.variant.slug))
