"""OpenAPI description of the portal's token authentication (for drf-spectacular)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.TokenAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "llp_...",
            "description": "A personal access token from /access/tokens/ (scope `generate` "
            "for jobs, `download` for links).",
        }
