"""OpenAI-compatible endpoints: `GET /v1/models`, `GET /v1/models/<id>`, `POST /v1/completions`,
and vLLM's `POST /v1/tokenize` / `POST /v1/detokenize`.

The official `openai` client and evaluation harnesses (lm-evaluation-harness's
`local-completions`) work unchanged with `base_url=<portal>/v1` and a personal access token
(scope `generate`) as the API key. Each completion request is one generation job, so it
obeys the same access check, limits and queue as the REST API, and shows up in the owner's
job history. Errors use OpenAI's shape: {"error": {message, type, param, code}}, with
`param` naming the OpenAI field; every answer under /v1/ is JSON, 404 and 405 included.

Scoring: `echo` with `logprobs: N` (up to 20, as vLLM) returns the prompt's tokens, their
log-probabilities (the first null), the N likeliest alternatives at every position and
`text_offset`; `max_tokens: 0` with `echo` scores without generating. `prompt` may be a
string, a list of strings, a list of token ids or a list of such lists. A request whose
prompts get at most one new token is a scoring job: one batched forward pass on the worker,
limited by its tokens rather than by sequences.

Refused with a 400 that names them rather than ignored: unknown parameters, `suffix`,
`logit_bias`, non-zero `presence_penalty` / `frequency_penalty`, `best_of` other than n.
Supported extension: `top_k`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import FileResponse, Http404, JsonResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication, require_scope
from accounts.selectors import access_require, variants_accessible
from catalog.models import ModelVariant
from catalog.selectors import Availability, variant_availability, variant_get, variants_availability
from core.errors import PortalError, ServiceUnavailable
from inference import streams
from inference.models import GenerationJob, JobSource, JobState
from inference.services import job_cancel, job_submit
from inference.tokens import tokenizer_file, tokenizer_get

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
            "type": _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"),
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
            retry_after = getattr(exc, "retry_after", None)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
            param = exc.extra.get("param")
            return openai_error(
                status,
                exc.message,
                code=code,
                param=_OPENAI_PARAM.get(param, param),
                headers=headers,
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


# The job service's parameter names -> OpenAI's, for `param` in errors.
_OPENAI_PARAM = {"max_new_tokens": "max_tokens", "top_logprobs": "logprobs", "prompts": "prompt"}


def _first_error(
    detail: Any, param: str | None = None, where: str | None = None
) -> tuple[str | None, str]:
    """(the top-level parameter, "where: message") of the first error. A list field's
    errors are keyed by item index: `param` stays the parameter, `where` says `tokens[16]`."""
    if isinstance(detail, dict):
        key, value = next(iter(detail.items()))
        if key == "non_field_errors":
            return _first_error(value, param, where)
        if param is None:
            return _first_error(value, str(key), str(key))
        return _first_error(value, param, f"{where}[{key}]")
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], param, where)
    message = str(detail)
    return param, f"{where}: {message}" if where else message


def _model_object(variant: ModelVariant, availability: Availability) -> dict:
    return {
        "id": variant.slug,
        "object": "model",
        "created": int(variant.created_at.timestamp()),
        "owned_by": "llama-research-portal",
        "max_model_len": variant.context_length,
        # Extensions (clients ignore fields they do not know): can it run now, and if not, why.
        "ready": availability.runnable,
        "unavailable_reason": availability.run_note or None,
        # How it is served: live workers, and the tensor-parallel ranks (GPUs) of the widest.
        "workers": availability.workers,
        "tensor_parallel_ranks": max(availability.ranks, default=None),
    }


def _variant_for(model: str) -> ModelVariant:
    name = (model or "").strip().lower().removeprefix("llama-")
    return variant_get(size=name)


class ModelsApi(_OpenAIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, tags=["openai"])
    def get(self, request: Request) -> Response:
        variants = variants_accessible(user=request.user, purpose="generate")
        availability = variants_availability(variants)
        return Response(
            {"object": "list", "data": [_model_object(v, availability[v.slug]) for v in variants]}
        )


class ModelDetailApi(_OpenAIView):
    @extend_schema(responses=OpenApiTypes.OBJECT, tags=["openai"], operation_id="v1_model_retrieve")
    def get(self, request: Request, model: str) -> Response:
        variant = _variant_for(model)
        if variant not in variants_accessible(user=request.user, purpose="generate"):
            return openai_error(
                404,
                f"The model '{model}' does not exist or you have no access to it.",
                code="model_not_found",
                param="model",
            )
        return Response(_model_object(variant, variant_availability(variant)))


MAX_PROMPTS = 1024  # per request; the job service bounds them by tokens


def _is_id(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class PromptField(serializers.JSONField):
    """A string, a list of strings, a list of token ids, or a list of lists of ids, as
    OpenAI and vLLM accept; always a list of prompts inside."""

    def to_internal_value(self, data: Any) -> list[str | list[int]]:
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and data:
            if all(isinstance(x, str) for x in data):
                prompts: list = data
            elif all(_is_id(x) for x in data):
                prompts = [data]
            elif all(isinstance(x, list) and x and all(_is_id(t) for t in x) for x in data):
                prompts = data
            else:
                prompts = []
            if prompts:
                if len(prompts) > MAX_PROMPTS:
                    raise serializers.ValidationError(
                        f"Give at most {MAX_PROMPTS} prompts in one request."
                    )
                return prompts
        raise serializers.ValidationError(
            "Must be a string, a list of strings, a list of token ids or a list of lists of "
            "token ids (none empty)."
        )


class StopField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> list[str] | None:
        if data is None:
            return None
        if isinstance(data, str):
            return [data]
        if isinstance(data, list) and all(isinstance(x, str) for x in data) and len(data) <= 4:
            return data
        raise serializers.ValidationError("Must be a string or a list of up to 4 strings.")


class _Strict(serializers.Serializer):
    """Unknown fields are refused by name: a harness must not believe that an option it
    sent was applied."""

    def validate(self, attrs: dict) -> dict:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {
                    unknown[0]: f"Unknown parameter(s): {', '.join(unknown)}; this portal does "
                    "not support them."
                }
            )
        return attrs


class CompletionsApi(_OpenAIView):
    @extend_schema_serializer(component_name="CompletionRequest")
    class InputSerializer(_Strict):
        model = serializers.CharField()
        prompt = PromptField()
        max_tokens = serializers.IntegerField(
            required=False, allow_null=True, default=16, min_value=0
        )
        temperature = serializers.FloatField(required=False, allow_null=True, default=1.0)
        top_p = serializers.FloatField(required=False, allow_null=True, default=1.0)
        top_k = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=-1,
            help_text="Extension (as vLLM): sample from the k likeliest tokens; 0 or -1: all",
        )
        n = serializers.IntegerField(required=False, allow_null=True, default=1, min_value=1)
        stop = StopField(required=False, allow_null=True, default=None)
        seed = serializers.IntegerField(required=False, allow_null=True, default=None)
        logprobs = serializers.IntegerField(
            required=False, allow_null=True, default=None, min_value=0, max_value=20
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
            attrs = super().validate(attrs)
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

    @extend_schema(
        request=InputSerializer,
        responses={(200, "application/json"): OpenApiTypes.OBJECT},
        tags=["openai"],
        description="OpenAI's completions (text_completion objects; SSE with stream=true).",
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        variant = _variant_for(v["model"])
        prompts = v["prompt"]
        logprobs = v["logprobs"]
        params = {
            "max_new_tokens": v["max_tokens"] if v["max_tokens"] is not None else 16,
            "temperature": v["temperature"] if v["temperature"] is not None else 1.0,
            "top_p": v["top_p"] if v["top_p"] is not None else 1.0,
            "n": v["n"] or 1,
            "stop": v["stop"] or [],
            "seed": v["seed"],
            "top_k": max(v["top_k"] or 0, 0),
            "logprobs": logprobs is not None,
            "top_logprobs": logprobs or 0,
            "echo": bool(v["echo"]),
        }
        # A synchronous request would wait for a worker that is not there, and a client's
        # retries would pile up queued jobs: refuse at once, create nothing.
        job = job_submit(
            require_worker=True,
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


def _logprobs(output: dict, *, echo: bool) -> dict:
    tokens = output.get("tokens") or []
    lps = output.get("logprobs") or []
    tops = output.get("top_logprobs") or [{t: lp} for t, lp in zip(tokens, lps, strict=False)]
    offsets = output.get("text_offset")
    if offsets is None:  # a job from before offsets were stored
        offsets, at = [], 0
        for token in tokens:
            offsets.append(at)
            at += len(token)
    if echo and output.get("prompt_tokens") is not None:
        prompt_tokens = output["prompt_tokens"]
        prompt_lps = output.get("prompt_logprobs") or [None] * len(prompt_tokens)
        prompt_tops = output.get("prompt_top_logprobs") or [
            None if lp is None else {t: lp}
            for t, lp in zip(prompt_tokens, prompt_lps, strict=False)
        ]
        tokens = prompt_tokens + tokens
        lps = prompt_lps + lps
        tops = prompt_tops + tops
        offsets = output["prompt_text_offset"] + offsets
    return {
        "tokens": tokens,
        "token_logprobs": lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _completion_body(job: GenerationJob) -> dict:
    echo = bool(job.params.get("echo"))
    choices = [
        {
            "text": output["text"],
            "index": output["index"],
            "logprobs": _logprobs(output, echo=echo) if job.params.get("logprobs") else None,
            "finish_reason": FINISH_REASONS.get(output["finish_reason"], "stop"),
        }
        for output in job.outputs
    ]
    return {
        **_head(job),
        "choices": choices,
        "usage": {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + job.completion_tokens,
        },
    }


def _prompt_text(job: GenerationJob, prompt_index: int) -> str:
    prompt = job.prompts[prompt_index]
    if isinstance(prompt, str):
        return prompt
    processor = tokenizer_get(job.variant)
    return processor.decode(prompt) if processor is not None else ""


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
                "top_logprobs": [token.get("top_logprobs") or {piece: token.get("logprob")}],
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
                    text = _prompt_text(job, index // n) + text
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


def _tokenizer(request: Request, model: str):
    variant = _variant_for(model)
    access_require(user=request.user, variant=variant, purpose="generate")
    processor = tokenizer_get(variant)
    if processor is None:
        raise ServiceUnavailable(
            f"The tokenizer of {variant} cannot be loaded right now; try again later.",
            code="tokenizer_unavailable",
        )
    return variant, processor


class TokenizeApi(_OpenAIView):
    """vLLM's `/tokenize`: the ids the model sees for a text (with BOS unless
    `add_special_tokens` is false)."""

    @extend_schema_serializer(component_name="TokenizeRequest")
    class InputSerializer(_Strict):
        model = serializers.CharField()
        prompt = serializers.CharField(trim_whitespace=False, allow_blank=True)
        add_special_tokens = serializers.BooleanField(required=False, default=True)
        return_token_strs = serializers.BooleanField(required=False, allow_null=True, default=False)

    @extend_schema_serializer(component_name="TokenizeResponse")
    class OutputSerializer(serializers.Serializer):
        count = serializers.IntegerField()
        max_model_len = serializers.IntegerField()
        tokens = serializers.ListField(child=serializers.IntegerField())
        token_strs = serializers.ListField(child=serializers.CharField(), allow_null=True)

    @extend_schema(request=InputSerializer, responses=OutputSerializer, tags=["openai"])
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        variant, processor = _tokenizer(request, v["model"])
        ids = processor.encode(v["prompt"])
        if v["add_special_tokens"]:
            ids = [processor.bos_id(), *ids]
        strs = [processor.id_to_piece(t) for t in ids] if v["return_token_strs"] else None
        return Response(
            {
                "count": len(ids),
                "max_model_len": variant.context_length,
                "tokens": ids,
                "token_strs": strs,
            }
        )


class DetokenizeApi(_OpenAIView):
    """vLLM's `/detokenize`: the text of a list of token ids."""

    @extend_schema_serializer(component_name="DetokenizeRequest")
    class InputSerializer(_Strict):
        model = serializers.CharField()
        tokens = serializers.ListField(child=serializers.IntegerField(min_value=0))

    @extend_schema_serializer(component_name="DetokenizeResponse")
    class OutputSerializer(serializers.Serializer):
        prompt = serializers.CharField()

    @extend_schema(request=InputSerializer, responses=OutputSerializer, tags=["openai"])
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        _, processor = _tokenizer(request, v["model"])
        vocab = processor.vocab_size()
        if any(t >= vocab for t in v["tokens"]):
            raise serializers.ValidationError({"tokens": f"Token ids must be below {vocab}."})
        return Response({"prompt": processor.decode(v["tokens"])})


class _BinaryRenderer(BaseRenderer):
    """Lets `Accept: application/octet-stream` through; an error still renders as JSON."""

    media_type = "application/octet-stream"
    format = "bin"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return JSONRenderer().render(data)


class TokenizerFileApi(_OpenAIView):
    """The size's SentencePiece `tokenizer.model`, for anyone who may run it, so a harness can
    tokenize locally (`python -m inference.llama export-hf` makes a transformers tokenizer of
    it with the weights; the file alone loads with `sentencepiece`)."""

    renderer_classes = [JSONRenderer, _BinaryRenderer]

    @extend_schema(
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY}, tags=["openai"]
    )
    def get(self, request: Request, model: str) -> FileResponse:
        variant = _variant_for(model)
        access_require(user=request.user, variant=variant, purpose="generate")
        path = tokenizer_file(variant)
        if path is None:
            raise ServiceUnavailable(
                f"The tokenizer of {variant} cannot be loaded right now; try again later.",
                code="tokenizer_unavailable",
            )
        return FileResponse(
            path.open("rb"),
            as_attachment=True,
            filename="tokenizer.model",
            content_type="application/octet-stream",
        )


class ChatCompletionsApi(_OpenAIView):
    """There is no chat format to apply: say so, in OpenAI's shape."""

    @extend_schema(request=None, responses={400: OpenApiTypes.OBJECT}, tags=["openai"])
    def post(self, request: Request) -> Response:
        return openai_error(
            400,
            "The models served here are LLaMA base models: they have no chat format, so "
            "/v1/chat/completions is not offered. Use /v1/completions with a plain-text "
            "prompt (write the dialogue into the prompt yourself).",
            code="chat_not_supported",
            param="messages",
        )


def not_found(request, *args, **kwargs) -> JsonResponse:
    """Any other path under /v1/: JSON, as an OpenAI client expects."""
    return JsonResponse(
        {
            "error": {
                "message": f"There is no {request.method} {request.path} here. The routes are "
                "/v1/models, /v1/completions, /v1/tokenize and /v1/detokenize.",
                "type": "invalid_request_error",
                "param": None,
                "code": "unknown_url",
            }
        },
        status=404,
    )
