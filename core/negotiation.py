"""Content negotiation for the REST API: an empty `?format=` is an unknown format.

DRF ignores `?format=` when its value is empty and answers with the default renderer, so
the parameter's documented enum (json, txt, ...) was not what the API accepted. An empty
value now gets DRF's answer to any other unknown format: 404.
"""

from __future__ import annotations

from django.http import Http404
from rest_framework.negotiation import DefaultContentNegotiation


class StrictContentNegotiation(DefaultContentNegotiation):
    def select_renderer(self, request, renderers, format_suffix=None):
        name = self.settings.URL_FORMAT_OVERRIDE
        if not format_suffix and name and request.query_params.get(name, None) == "":
            raise Http404("Unknown format ''; leave `format` out or give one the API lists.")
        return super().select_renderer(request, renderers, format_suffix)
