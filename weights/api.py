"""JSON API for scripts: `GET /api/v1/models/<slug>/links` (token with the `download` scope).

download.sh asks for `?format=txt`: one file a line, `<sha256> <size> <path> <url>`, which
POSIX sh reads without a JSON parser.
"""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication, require_scope
from catalog.selectors import variant_availability
from core.api_values import api_datetime
from core.errors import NotFound
from weights.services import download_links_for_slug


class LinksTextRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if "error" in data:
            error = data["error"]
            return f"error {error.get('code')}: {error.get('message')}\n".encode()
        lines = [f"{f['sha256']} {f['size']} {f['path']} {f['url']}" for f in data["files"]]
        return ("\n".join(lines) + "\n").encode()


class DownloadLinkOutput(serializers.Serializer):
    path = serializers.CharField(source="file.path")
    size = serializers.IntegerField(source="file.size")
    sha256 = serializers.CharField(source="file.sha256")
    md5 = serializers.CharField(source="file.md5")
    url = serializers.SerializerMethodField()
    expires_at = serializers.DateTimeField()
    uses_left = serializers.SerializerMethodField()

    def get_url(self, link) -> str:
        return self.context["request"].build_absolute_uri(link.get_absolute_url())

    def get_uses_left(self, link) -> int:
        return max(link.max_uses - link.use_count, 0)


class VariantLinksOutput(serializers.Serializer):
    model = serializers.CharField()
    size = serializers.CharField()
    slug = serializers.CharField()
    shard_count = serializers.IntegerField()
    files = DownloadLinkOutput(many=True)
    checklist_url = serializers.URLField()
    manifest_url = serializers.URLField()


class VariantLinksApi(APIView):
    """A usable download link for every file of a size, with its size and checksums."""

    authentication_classes = [TokenAuthentication, SessionAuthentication]
    renderer_classes = [JSONRenderer, LinksTextRenderer]

    @extend_schema(
        summary="Personal download links for every file of a model size",
        parameters=[
            OpenApiParameter(
                "format", str, enum=["json", "txt"], description="txt: `sha256 size path url`"
            )
        ],
        responses={200: VariantLinksOutput},
    )
    def get(self, request: Request, slug: str) -> Response:
        require_scope(request, "download")
        variant, links = download_links_for_slug(user=request.user, slug=slug)
        if not links:
            # A client must not report "0 files downloaded, all verified" for an empty size.
            raise NotFound(variant_availability(variant).download_note, code="not_stored")
        # Built as plain data (the shape VariantLinksOutput documents;
        # test_links_reuse.py holds the two equal): the serializer took more time than the
        # queries behind it. One absolute base for every URL: `build_absolute_uri` checks
        # the host against ALLOWED_HOSTS at each call.
        base = request.build_absolute_uri("/")[:-1]
        # One reverse for every link's URL: the id (URL-safe base64) goes in its place.
        link_url = base + reverse("download", kwargs={"link_id": _LINK_ID})
        return Response(
            {
                "model": str(variant),
                "size": variant.size,
                "slug": variant.slug,
                "shard_count": variant.shard_count,
                "files": [_link_output(link, link_url) for link in links],
                "checklist_url": base + reverse("weights:checklist", args=[variant.slug]),
                "manifest_url": base + reverse("weights:manifest", args=[variant.slug]),
            }
        )


_LINK_ID = "LINK-ID"


def _link_output(link, link_url: str) -> dict:
    file = link.file
    return {
        "path": file.path,
        "size": file.size,
        "sha256": file.sha256,
        "md5": file.md5,
        "url": link_url.replace(_LINK_ID, link.id),
        "expires_at": api_datetime(link.expires_at),
        "uses_left": max(link.max_uses - link.use_count, 0),
    }
