from django import template

from catalog.cards import cell_text

register = template.Library()


@register.filter
def card_cell(value) -> str:
    return cell_text(value)
