"""OpenAPI description of the portal's token authentication (for drf-spectacular)."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerExtension
from drf_spectacular.plumbing import get_class


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


class JobCreateInputScheme(OpenApiSerializerExtension):
    """A job takes `prompt` or `prompts`, exactly one: the serializer checks it in
    `validate`, which drf-spectacular cannot see, so the schema says it with `oneOf`."""

    target_class = "inference.api.JobsApi.CreateInput"

    @classmethod
    def _matches(cls, target) -> bool:
        # A nested class: drf-spectacular's import of the dotted path cannot reach it.
        target = get_class(target)
        return f"{target.__module__}.{target.__qualname__}" == cls.target_class

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["oneOf"] = [{"required": ["prompt"]}, {"required": ["prompts"]}]
        return schema


# --- The job event stream (GET /api/v1/jobs/{id}/stream) ------------------------------------
# The schema of a `text/event-stream` body describes one event (as OpenAPI 3.2's
# `itemSchema` does; schemathesis validates each event against it): its name, and its
# `data`, a JSON document whose own schema is stated with `contentSchema`.


def sse_event(name: str, data: dict) -> dict:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": [name]},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": data,
            },
            "id": {"type": "string", "description": "Resume after it with Last-Event-ID"},
        },
    }


_TOKEN_DATA = {
    "type": "object",
    "required": ["index", "text"],
    "properties": {
        "index": {"type": "integer", "minimum": 0, "description": "Which choice"},
        "text": {"type": "string", "description": "The text this token adds"},
        "token": {"type": "integer", "description": "The token id"},
        "logprob": {"type": "number", "nullable": True},
        "finish_reason": {"type": "string", "nullable": True},
    },
}
JOB_EVENT_STREAM = {
    "description": (
        "Server-sent events, each `id: <entry>`, `event: <name>`, `data: <JSON>` and a blank "
        "line; a `: keepalive` comment while nothing happens. `state` ({state, attempt}) "
        "when the job starts; `token`, one per generated token; `reset` ({}: the job runs "
        "again after its worker died, drop its text so far); `waiting` ({reason, message}, "
        "reason null when it clears) while a queued job waits for something other than its "
        "turn (the job broker unreachable, no worker serving its size); `end` (the whole "
        "job, as GET /api/v1/jobs/{id}) last. Reconnect with `Last-Event-ID` to resume "
        "after an entry."
    ),
    "oneOf": [
        sse_event(
            "state",
            {
                "type": "object",
                "properties": {"state": {"type": "string"}, "attempt": {"type": "integer"}},
            },
        ),
        sse_event("token", _TOKEN_DATA),
        sse_event("reset", {"type": "object"}),
        sse_event(
            "waiting",
            {
                "type": "object",
                "properties": {
                    "reason": {
                        "type": "string",
                        "nullable": True,
                        "enum": ["broker_unreachable", "no_worker", "no_files", None],
                    },
                    "message": {"type": "string", "nullable": True},
                },
            },
        ),
        sse_event("end", {"$ref": "#/components/schemas/JobOutput"}),
        sse_event("error", {"$ref": "#/components/schemas/Error"}),
    ],
}


# --- Error answers, for every operation (a drf-spectacular postprocessing hook) ----------
#
# The views answer errors from one place (core.errors, and OpenAI's shape under /v1/), so
# the schema states them by rule rather than view by view: what any request may get (a
# refused token, invalid input, a busy database), what an id or a model name may get
# (404), and what a write may get (conflict, too large, rate limited). The fuzz test
# (portal/tests/test_schema_fuzz.py) fails when a view answers something else.

_MESSAGE = {"type": "string", "minLength": 1, "description": "For a person: what to do"}

PORTAL_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "minLength": 1},
                "message": _MESSAGE,
                "field": {"type": "string", "description": "The parameter at fault"},
                "fields": {"type": "object", "description": "Messages by field"},
            },
        }
    },
}
OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": _MESSAGE,
                "type": {"type": "string", "minLength": 1},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}

_ANY = ("400", "401", "403", "503")
_ID_OR_WRITE = ("404",)
_WRITE = ("409", "413", "429")
_DESCRIPTIONS = {
    "400": "Invalid input (the message names the parameter)",
    "401": "No token, or a token that is invalid, expired or revoked",
    "403": "No access: no live grant, license not accepted, or the token lacks the scope",
    "404": "No such object, or not yours; or no such model size",
    "409": "The object is not in a state that allows this",
    "413": "Too large: too many prompts or tokens",
    "429": "Too many jobs at once, or the daily token quota is used up",
    "503": "A service is unavailable (database busy, file store or job broker down)",
    "504": "The job did not finish in time and was cancelled",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _error_statuses(path: str, method: str) -> list[str]:
    statuses = list(_ANY)
    if "{" in path or method == "post":
        statuses += _ID_OR_WRITE
    if method == "post":
        statuses += _WRITE
        if path.startswith("/v1/"):
            statuses.append("504")  # a non-streaming completion waits for its job
    return statuses


def document_error_responses(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = PORTAL_ERROR
    schemas["OpenAIError"] = OPENAI_ERROR
    for path, operations in result.get("paths", {}).items():
        name = "OpenAIError" if path.startswith("/v1/") else "Error"
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            # An error is rendered by the renderer the client asked for: JSON, or the
            # operation's own text format (the links' text lines, the event stream).
            other_types = {
                content_type
                for status, response in responses.items()
                if status.startswith("2")
                for content_type in response.get("content", {})
                if content_type != "application/json"
            }
            for status in _error_statuses(path, method):
                if status in responses:
                    continue
                content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}
                for content_type in sorted(other_types):
                    content[content_type] = {
                        "schema": sse_event("error", {"$ref": f"#/components/schemas/{name}"})
                        if content_type == "text/event-stream"
                        else {"type": "string", "minLength": 1}
                    }
                response = {"description": _DESCRIPTIONS[status], "content": content}
                if status in ("429", "503"):
                    response["headers"] = _RETRY_AFTER
                responses[status] = response
    return result
