"""REST API of generation jobs under /api/v1/ (session or token with the `generate` scope).

GET  /api/v1/models                     sizes you may run
POST /api/v1/jobs                       submit        GET /api/v1/jobs   your jobs
GET  /api/v1/jobs/<id>                  one job       POST .../cancel    cancel it
GET  /api/v1/jobs/<id>/stream           server-sent events: token ..., end
"""

from __future__ import annotations

from collections.abc import Iterator

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication, require_scope
from accounts.selectors import variants_accessible
from catalog.selectors import variant_get, variants_availability
from core.api_values import api_datetime
from inference import streams
from inference.models import GenerationJob, JobSource, JobState
from inference.schema import JOB_EVENT_STREAM
from inference.selectors import job_get_for_user, jobs_for_user
from inference.services import Waiting, job_cancel, job_submit, job_waiting


class EventStreamRenderer(BaseRenderer):
    """Lets `Accept: text/event-stream` through content negotiation; errors become one
    `error` event."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        return streams.sse("error", data or {})


class JobOutput(serializers.ModelSerializer):
    model = serializers.CharField(source="variant.slug")
    size = serializers.CharField(source="variant.size")
    urls = serializers.SerializerMethodField()
    waiting_reason = serializers.SerializerMethodField(
        help_text=(
            "Why a queued job is not running yet: broker_unreachable (the portal sends it "
            "when the broker answers), no_worker (no live worker serves its size), no_files; "
            "null while it only waits its turn, and once it runs"
        )
    )
    waiting_message = serializers.SerializerMethodField(
        help_text="waiting_reason in words, to show while waiting; null with it"
    )

    class Meta:
        model = GenerationJob
        fields = [
            "id", "model", "size", "state", "source", "prompts", "params", "attempts",
            "cancel_requested", "outputs", "error", "prompt_tokens", "completion_tokens",
            "created_at", "started_at", "first_token_at", "finished_at", "queue_wait",
            "time_to_first_token", "decode_tokens_per_second", "worker", "waiting_reason",
            "waiting_message", "urls",
        ]  # fmt: skip

    def _waiting(self, job: GenerationJob) -> Waiting | None:
        # job_waiting reuses a size's availability for 2 s: a list of 200 jobs or many
        # clients polling cost one look-up per size.
        if job.state != JobState.QUEUED:
            return None
        return job_waiting(job)

    @extend_schema_field(
        serializers.ChoiceField(
            choices=["broker_unreachable", "no_worker", "no_files"], allow_null=True
        )
    )
    def get_waiting_reason(self, job: GenerationJob) -> str | None:
        waiting = self._waiting(job)
        return waiting.reason if waiting else None

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_waiting_message(self, job: GenerationJob) -> str | None:
        waiting = self._waiting(job)
        return waiting.message if waiting else None

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_urls(self, job: GenerationJob) -> dict:
        return _job_urls(job, self.context.get("request"))


def _job_urls(job: GenerationJob, request) -> dict:
    base = f"/api/v1/jobs/{job.pk}"
    build = request.build_absolute_uri if request is not None else (lambda u: u)
    return {
        "self": build(base),
        "stream": build(f"{base}/stream"),
        "cancel": build(f"{base}/cancel"),
    }


def job_output(job: GenerationJob, request) -> dict:
    """A job as JobOutput documents it, built as plain data: every submission and status
    poll answers with it, and the ModelSerializer spent more time building its fields than
    the two queries behind a poll took. `test_job_output.py` holds the two equal."""
    waiting = job_waiting(job) if job.state == JobState.QUEUED else None
    return {
        "id": str(job.pk),
        "model": job.variant.slug,
        "size": job.variant.size,
        "state": job.state,
        "source": job.source,
        "prompts": job.prompts,
        "params": job.params,
        "attempts": job.attempts,
        "cancel_requested": job.cancel_requested,
        "outputs": job.outputs,
        "error": job.error,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
        "created_at": api_datetime(job.created_at),
        "started_at": api_datetime(job.started_at),
        "first_token_at": api_datetime(job.first_token_at),
        "finished_at": api_datetime(job.finished_at),
        "queue_wait": job.queue_wait,
        "time_to_first_token": job.time_to_first_token,
        "decode_tokens_per_second": job.decode_tokens_per_second,
        "worker": job.worker,
        "waiting_reason": waiting.reason if waiting else None,
        "waiting_message": waiting.message if waiting else None,
        "urls": _job_urls(job, request),
    }


class _Api(APIView):
    authentication_classes = [TokenAuthentication, SessionAuthentication]

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        require_scope(request, "generate")


class GenerationModelsApi(_Api):
    """The model sizes you may run now."""

    @extend_schema_serializer(component_name="GenerationModel")
    class OutputSerializer(serializers.Serializer):
        slug = serializers.CharField()
        size = serializers.CharField()
        name = serializers.CharField(source="__str__")
        context_length = serializers.IntegerField()
        ready = serializers.BooleanField(help_text="Files published and a worker serves it now")
        unavailable_reason = serializers.CharField(
            allow_null=True, help_text="Why it cannot run now (null when ready)"
        )

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        variants = variants_accessible(user=request.user, purpose="generate")
        availability = variants_availability(variants)
        rows = [
            {
                "slug": v.slug,
                "size": v.size,
                "__str__": str(v),
                "context_length": v.context_length,
                "ready": availability[v.slug].runnable,
                "unavailable_reason": availability[v.slug].run_note or None,
            }
            for v in variants
        ]
        return Response(self.OutputSerializer(rows, many=True).data)


class JobsApi(_Api):
    """POST submits a job; GET lists yours, newest first."""

    class CreateInput(serializers.Serializer):
        model = serializers.CharField(help_text="Size or slug: demo, 7B, 13b ...")
        prompt = serializers.CharField(
            required=False, allow_blank=True, trim_whitespace=False, help_text="One prompt"
        )
        prompts = serializers.ListField(
            child=serializers.CharField(allow_blank=True, trim_whitespace=False),
            required=False,
            allow_empty=False,
            help_text="Several prompts, decoded together",
        )
        max_new_tokens = serializers.IntegerField(required=False)
        temperature = serializers.FloatField(required=False)
        top_p = serializers.FloatField(required=False)
        top_k = serializers.IntegerField(required=False)
        seed = serializers.IntegerField(required=False, allow_null=True)
        stop = serializers.ListField(
            child=serializers.CharField(trim_whitespace=False), required=False
        )
        logprobs = serializers.BooleanField(required=False)
        top_logprobs = serializers.IntegerField(
            required=False, help_text="With logprobs: the N likeliest tokens too (0-20)"
        )
        echo = serializers.BooleanField(
            required=False, help_text="Prompt in front of the text (max_new_tokens 0: score it)"
        )
        n = serializers.IntegerField(required=False, help_text="Choices per prompt")

        def validate(self, attrs: dict) -> dict:
            if ("prompt" in attrs) == ("prompts" in attrs):
                raise serializers.ValidationError("Give either `prompt` or `prompts`.")
            return attrs

    class ListQuery(serializers.Serializer):
        state = serializers.CharField(required=False, help_text="queued, running, succeeded ...")
        limit = serializers.IntegerField(
            required=False,
            min_value=1,
            max_value=200,
            default=50,
            help_text="At most this many (1-200, default 50)",
        )

    @extend_schema(request=CreateInput, responses={201: JobOutput})
    def post(self, request: Request) -> Response:
        data = self.CreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        variant = variant_get(size=values.pop("model"))
        prompts = values.pop("prompts", None) or [values.pop("prompt", "")]
        values.pop("prompt", None)
        token = request.auth if getattr(request.auth, "scopes", None) is not None else None
        job = job_submit(
            user=request.user,
            variant=variant,
            prompts=prompts,
            params=values,
            token=token,
            source=JobSource.API if token is not None else JobSource.PLAYGROUND,
        )
        body = job_output(job, request)
        return Response(
            body, status=status.HTTP_201_CREATED, headers={"Location": body["urls"]["self"]}
        )

    # The query serializer is the schema's too, so its bounds are stated where they are checked.
    @extend_schema(parameters=[ListQuery], responses=JobOutput(many=True))
    def get(self, request: Request) -> Response:
        query = self.ListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        jobs = jobs_for_user(user=request.user, **query.validated_data)
        return Response([job_output(job, request) for job in jobs])


class JobDetailApi(_Api):
    @extend_schema(responses=JobOutput)
    def get(self, request: Request, job_id: str) -> Response:
        job = job_get_for_user(user=request.user, job_id=job_id)
        return Response(job_output(job, request))


class JobCancelApi(_Api):
    """Cancel a queued job now, or stop a running one within a token or two (202: the
    worker will end it; poll or stream it to see the end)."""

    @extend_schema(request=None, responses={200: JobOutput, 202: JobOutput})
    def post(self, request: Request, job_id: str) -> Response:
        job = job_get_for_user(user=request.user, job_id=job_id)
        job = job_cancel(job=job)
        code = status.HTTP_202_ACCEPTED if job.is_active else status.HTTP_200_OK
        return Response(job_output(job, request), status=code)


WAITING_POLLS = 3  # idle polls of a stream between looks at why its queued job waits


class JobStreamApi(_Api):
    """Server-sent events: `state`, `token` ({index, text, token, logprob, finish_reason}),
    `reset` (the job is run again after its worker died: drop its text so far) and a last
    `end` carrying the whole job. Reconnects resume after `Last-Event-ID`."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]

    @extend_schema(responses={(200, "text/event-stream"): JOB_EVENT_STREAM})
    def get(self, request: Request, job_id: str) -> StreamingHttpResponse:
        job = job_get_for_user(user=request.user, job_id=job_id)
        after = request.headers.get("Last-Event-ID") or "0"
        response = StreamingHttpResponse(
            self._events(request, job, after), content_type="text/event-stream"
        )
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response

    @staticmethod
    def _events(request: Request, job: GenerationJob, after: str) -> Iterator[bytes]:
        idle, told = 0, ""  # "": nothing told yet on this stream
        for item in streams.job_events(job, after=after):
            if item is None:
                # Nothing happened for a poll (a second): a queued job says why it waits
                # (the broker down, no worker for its size) at the first look, whatever the
                # submission's answer said, then when that changes.
                if idle % WAITING_POLLS == 0:
                    job.refresh_from_db(fields=["state", "message_sent"])
                    waiting = job_waiting(job)
                    reason = waiting.reason if waiting else None
                    queued = job.state == JobState.QUEUED
                    if reason != told and (waiting or told or (told == "" and queued)):
                        told = reason
                        data = {"reason": reason, "message": waiting.message if waiting else None}
                        yield streams.sse("waiting", data)
                idle += 1
                if idle % streams.KEEPALIVE_POLLS == 0:
                    yield streams.KEEPALIVE
                continue
            entry_id, event, data = item
            if event in ("state", "token"):
                told = None  # it runs: a later wait is told afresh
            if event == "end":
                job.refresh_from_db()
                data = job_output(job, request)
            yield streams.sse(event, data, event_id=entry_id)
