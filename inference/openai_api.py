"""OpenAI-compatible endpoints: `GET /v1/models`, `GET /v1/models/<id>`, `POST /v1/completions`.

The official `openai` client works unchanged with `base_url=<portal>/v1` and a personal
access token (scope `generate`) as its API key. Each completion request is one generation
job, so it obeys the same access check, limits and queue as the REST API, and shows up in
the owner's job history. Errors use OpenAI's shape: {"error": {message, type, param, code}}.

Differences from OpenAI, each refused with a 400 that says so rather than ignored:
`suffix`, `logit_bias`, non-zero `presence_penalty` / `frequency_penalty`, `best_of` other
than n, and token-id prompts. `logprobs` (0-5) reports the sampled token's log-probability;
`top_logprobs` holds that token only (the engine does not keep the alternatives).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import Http404, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication, require_scope
from accounts.selectors import variants_accessible
from catalog.models import ModelVariant
from core.errors import PortalError, RateLimited
from inference import streams
from inference.models import GenerationJob, JobSource, JobState
from inference.services import job_cancel, job_submit

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_TOKEN_CODES = {"token_invalid", "token_revoked", "token_expired", "anonymous"}
FINISH_REASONS = {"length": "length", "stop": "stop", "eos": "stop", "cancelled": "stop"}


def openai_error(
    status: int, message: str, *, code: str | None = None, param: str | None = None, headers=None
) -> Response:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }
    return Response(body, status=status, headers=headers)


class _OpenAIView(APIView):
    """Token auth only (no session: no CSRF exposure), errors in OpenAI's shape."""

    authentication_classes = [TokenAuthentication]
    permission_classes = [IsAuthenticated]
    renderer_classes = [JSONRenderer]

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        require_scope(request, "generate")

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, PortalError):
            status = exc.status_code
            code = exc.code
            if status == 403 and code in _TOKEN_CODES:
                status, code = 401, "invalid_api_key"
            if status == 404 and code == "unknown_size":
                code = "model_not_found"
            headers = (
                {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
            )
            return openai_error(
                status, exc.message, code=code, param=exc.extra.get("param"), headers=headers
            )
        if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
            return openai_error(
                401,
                "Send a portal personal access token with the 'generate' scope as the API key "
                "(Authorization: Bearer llp_...). Create one on /access/tokens/.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": 'Bearer realm="api"'},
            )
        if isinstance(exc, drf_exceptions.ValidationError):
            param, message = _first_error(exc.detail)
            return openai_error(400, message, param=param, code="invalid_value")
        if isinstance(exc, drf_exceptions.APIException):
            return openai_error(exc.status_code, str(exc.detail), code=exc.default_code)
        if isinstance(exc, Http404):
            return openai_error(404, "Not found.", code="not_found")
        return super().handle_exception(exc)


def _first_error(detail: Any, param: str | None = None) -> tuple[str | None, str]:
    if isinstance(detail, dict):
        key, value = next(iter(detail.items()))
        name = None if key == "non_field_errors" else key
        return _first_error(value, name or param)
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], param)
    message = str(detail)
    return param, f"{param}: {message}" if param else message


def _model_object(variant: ModelVariant) -> dict:
    return {
        "id": variant.slug,
        "object": "model",
        "created": int(variant.created_at.timestamp()),
        "owned_by": "llama-research-portal",
    }


def _variant_for(model: str) -> ModelVariant:
    from catalog.selectors import variant_get

    name = (model or "").strip().lower().removeprefix("llama-")
    return variant_get(size=name)


class ModelsApi(_OpenAIView):
    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        variants = variants_accessible(user=request.user, purpose="generate")
        return Response({"object": "list", "data": [_model_object(v) for v in variants]})


class ModelDetailApi(_OpenAIView):
    @extend_schema(exclude=True)
    def get(self, request: Request, model: str) -> Response:
        variant = _variant_for(model)
        if variant not in variants_accessible(user=request.user, purpose="generate"):
            return openai_error(
                404,
                f"The model '{model}' does not exist or you have no access to it.",
                code="model_not_found",
                param="model",
            )
        return Response(_model_object(variant))


class _StrOrList(serializers.JSONField):
    def __init__(self, *, max_items: int, **kwargs):
        self.max_items = max_items
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> list[str] | None:
        if data is None:
            return None
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and all(isinstance(x, str) for x in data):
            if not data or len(data) > self.max_items:
                raise serializers.ValidationError(f"Give between 1 and {self.max_items} strings.")
            return data
        if isinstance(data, list) and data and all(isinstance(x, int | list) for x in data):
            raise serializers.ValidationError(
                "Token-id prompts are not supported; send the prompt as text."
            )
        raise serializers.ValidationError("Must be a string or a list of strings.")


class CompletionsApi(_OpenAIView):
    class InputSerializer(serializers.Serializer):
        model = serializers.CharField()
        prompt = _StrOrList(max_items=64, required=False, default="")
        max_tokens = serializers.IntegerField(required=False, allow_null=True, default=16)
        temperature = serializers.FloatField(required=False, allow_null=True, default=1.0)
        top_p = serializers.FloatField(required=False, allow_null=True, default=1.0)
        n = serializers.IntegerField(required=False, allow_null=True, default=1)
        stop = _StrOrList(max_items=4, required=False, allow_null=True, default=None)
        seed = serializers.IntegerField(required=False, allow_null=True, default=None)
        logprobs = serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=0, max_value=5
        )
        echo = serializers.BooleanField(required=False, allow_null=True, default=False)
        stream = serializers.BooleanField(required=False, allow_null=True, default=False)
        stream_options = serializers.DictField(required=False, allow_null=True, default=None)
        user = serializers.CharField(required=False, allow_blank=True, max_length=256)
        suffix = serializers.CharField(required=False, allow_null=True, default=None)
        best_of = serializers.IntegerField(required=False, allow_null=True, default=None)
        presence_penalty = serializers.FloatField(required=False, allow_null=True, default=0)
        frequency_penalty = serializers.FloatField(required=False, allow_null=True, default=0)
        logit_bias = serializers.DictField(required=False, allow_null=True, default=None)

        def validate(self, attrs: dict) -> dict:
            unsupported = {
                "suffix": attrs.get("suffix") is not None,
                "logit_bias": bool(attrs.get("logit_bias")),
                "presence_penalty": bool(attrs.get("presence_penalty")),
                "frequency_penalty": bool(attrs.get("frequency_penalty")),
                "best_of": attrs.get("best_of") not in (None, attrs.get("n") or 1),
            }
            for name, used in unsupported.items():
                if used:
                    raise serializers.ValidationError({name: "This portal does not support it."})
            return attrs

    @extend_schema(exclude=True)
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        variant = _variant_for(v["model"])
        prompts = v["prompt"] if isinstance(v["prompt"], list) else [v["prompt"]]
        params = {
            "max_new_tokens": v["max_tokens"] if v["max_tokens"] is not None else 16,
            "temperature": v["temperature"] if v["temperature"] is not None else 1.0,
            "top_p": v["top_p"] if v["top_p"] is not None else 1.0,
            "n": v["n"] or 1,
            "stop": v["stop"] or [],
            "seed": v["seed"],
            "logprobs": v["logprobs"] is not None,
            "echo": bool(v["echo"]),
        }
        job = job_submit(
            user=request.user,
            variant=variant,
            prompts=prompts,
            params=params,
            token=request.auth,
            source=JobSource.OPENAI,
            external_user=v.get("user", ""),
        )
        if v["stream"]:
            include_usage = bool((v["stream_options"] or {}).get("include_usage"))
            response = StreamingHttpResponse(
                _stream(job, include_usage=include_usage), content_type="text/event-stream"
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        deadline = time.monotonic() + settings.JOBS_SYNC_WAIT_SECONDS
        for item in streams.job_events(job, deadline=deadline):
            if item is not None and item[1] == "timeout":
                job_cancel(job=job, reason="The request waited too long and was abandoned.")
                return openai_error(
                    504,
                    "The job did not finish in time; it was cancelled. Try fewer tokens, or "
                    "use stream=true.",
                    code="timeout",
                )
        job.refresh_from_db()
        if job.state != JobState.SUCCEEDED:
            return _job_error(job)
        return Response(_completion_body(job))


def _job_error(job: GenerationJob) -> Response:
    if job.state == JobState.CANCELLED:
        return openai_error(400, job.error or "The job was cancelled.", code="job_cancelled")
    return openai_error(500, job.error or "The job failed.", code="job_failed")


def _head(job: GenerationJob) -> dict:
    return {
        "id": f"cmpl-{job.pk.hex}",
        "object": "text_completion",
        "created": int(job.created_at.timestamp()),
        "model": job.variant.slug,
        "system_fingerprint": None,
    }


def _logprobs(output: dict, offset: int) -> dict:
    tokens = output.get("tokens") or []
    lps = output.get("logprobs") or []
    offsets, at = [], offset
    for token in tokens:
        offsets.append(at)
        at += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": [{t: lp} for t, lp in zip(tokens, lps, strict=False)],
        "text_offset": offsets,
    }


def _completion_body(job: GenerationJob) -> dict:
    choices = []
    for output in job.outputs:
        prompt = job.prompts[output["prompt_index"]]
        echo_len = len(prompt) if job.params.get("echo") else 0
        choices.append(
            {
                "text": output["text"],
                "index": output["index"],
                "logprobs": _logprobs(output, echo_len) if job.params.get("logprobs") else None,
                "finish_reason": FINISH_REASONS.get(output["finish_reason"], "stop"),
            }
        )
    return {
        **_head(job),
        "choices": choices,
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens,
        },
    }


def _stream(job: GenerationJob, *, include_usage: bool) -> Iterator[bytes]:
    """Job events as OpenAI completion chunks, then `data: [DONE]`. If the client goes away
    before the end, the job is cancelled (as OpenAI stops generating)."""
    head = _head(job)
    echo, want_logprobs = job.params.get("echo"), job.params.get("logprobs")
    n = int(job.params.get("n", 1))
    sent_text: dict[int, str] = {}
    sent_tokens: dict[int, int] = {}
    skip: dict[int, int] = {}
    finished = False

    def chunk(index: int, text: str, finish: str | None, token: dict | None) -> bytes:
        logprobs = None
        if want_logprobs and token is not None:
            piece = token.get("piece", "")
            logprobs = {
                "tokens": [piece],
                "token_logprobs": [token.get("logprob")],
                "top_logprobs": [{piece: token.get("logprob")}],
                "text_offset": [len(sent_text.get(index, ""))],
            }
        body = {
            **head,
            "choices": [
                {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}
            ],
        }
        return streams.sse(None, body)

    try:
        idle = 0
        for item in streams.job_events(job):
            if item is None:
                idle += 1
                if idle % streams.KEEPALIVE_POLLS == 0:
                    yield streams.KEEPALIVE
                continue
            _, event, data = item
            if event == "reset":
                # The job runs again with the same seed: skip what was already sent.
                skip = dict(sent_tokens)
                continue
            if event == "token":
                index = data["index"]
                if skip.get(index, 0) > 0:
                    skip[index] -= 1
                    continue
                text = data["text"]
                if echo and index not in sent_text:
                    text = job.prompts[index // n] + text
                sent_tokens[index] = sent_tokens.get(index, 0) + 1
                finish = data.get("finish_reason")
                yield chunk(index, text, FINISH_REASONS.get(finish) if finish else None, data)
                sent_text[index] = sent_text.get(index, "") + text
                continue
            if event == "end":
                job.refresh_from_db()
                if job.state != JobState.SUCCEEDED:
                    err = _job_error(job).data
                    yield streams.sse(None, err)
                else:
                    # Whatever the stream missed (Redis was down, the stream expired) comes
                    # from the database's record.
                    for output in job.outputs:
                        index = output["index"]
                        have = sent_text.get(index, "")
                        full = output["text"]
                        if full != have and full.startswith(have):
                            yield chunk(
                                index,
                                full[len(have) :],
                                FINISH_REASONS.get(output["finish_reason"], "stop"),
                                None,
                            )
                    if include_usage:
                        usage = _completion_body(job)["usage"]
                        yield streams.sse(None, {**head, "choices": [], "usage": usage})
                finished = True
                yield b"data: [DONE]\n\n"
                return
    finally:
        if not finished:
            job.refresh_from_db()
            if job.is_active:
                job_cancel(job=job, reason="Cancelled: the client closed the stream.")
