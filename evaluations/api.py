"""REST API of evaluations under /api/v1/evaluations/ (session, or a token with the
`generate` scope: an evaluation runs scoring jobs on its owner's account).

GET  /api/v1/evaluations/tasks              tasks you can run   POST  upload one (JSONL)
GET  /api/v1/evaluations/tasks/<id>         one task            DELETE  delete it
GET  /api/v1/evaluations                    your evaluations    POST  start one {task, model}
GET  /api/v1/evaluations/<id>               state, progress, results, provenance
POST /api/v1/evaluations/<id>/cancel        POST .../resume
GET  /api/v1/evaluations/<id>/items         per-item scores (JSON; items.csv: CSV)
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication, require_scope
from catalog.selectors import variant_get
from core.errors import PermissionDenied
from evaluations import downloads
from evaluations.models import Evaluation, EvaluationTask, TaskKind
from evaluations.selectors import (
    evaluation_get_for_user,
    evaluations_visible,
    published_figures,
    task_get_for_user,
    tasks_visible,
)
from evaluations.services import (
    evaluation_cancel,
    evaluation_resume,
    evaluation_start,
    task_delete,
    task_upload,
)


class _Api(APIView):
    authentication_classes = [TokenAuthentication, SessionAuthentication]

    def initial(self, request: Request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        require_scope(request, "generate")


class TaskOutput(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.email")
    url = serializers.SerializerMethodField()

    class Meta:
        model = EvaluationTask
        fields = [
            "id", "name", "kind", "description", "owner", "shared", "sha256", "item_count",
            "created_at", "url",
        ]  # fmt: skip

    @extend_schema_field(OpenApiTypes.STR)
    def get_url(self, task: EvaluationTask) -> str:
        request = self.context.get("request")
        path = f"/api/v1/evaluations/tasks/{task.pk}"
        return request.build_absolute_uri(path) if request is not None else path


class EvaluationOutput(serializers.ModelSerializer):
    task = TaskOutput()
    model = serializers.CharField(source="variant.slug")
    size = serializers.CharField(source="variant.size")
    progress = serializers.FloatField()
    urls = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = [
            "id", "task", "model", "size", "state", "scored_by", "progress", "items_done",
            "items_total", "results", "error", "note", "params", "task_sha256",
            "checkpoint_manifest", "engine_version", "created_at", "started_at", "finished_at",
            "urls",
        ]  # fmt: skip

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_urls(self, evaluation: Evaluation) -> dict:
        request = self.context.get("request")
        base = f"/api/v1/evaluations/{evaluation.pk}"
        build = request.build_absolute_uri if request is not None else (lambda u: u)
        return {
            "self": build(base),
            "page": build(evaluation.get_absolute_url()),
            "cancel": build(f"{base}/cancel"),
            "resume": build(f"{base}/resume"),
            "items": build(f"{base}/items"),
            "items_csv": build(f"{base}/items.csv"),
        }


class TasksApi(_Api):
    """GET: the tasks you can run (yours, and those staff shared). POST: upload a JSONL task
    file, as multipart (`file`) or JSON (`content`); every line is checked, and a 400 lists
    the errors by line and field."""

    parser_classes = [JSONParser, MultiPartParser, FormParser]

    @extend_schema_serializer(component_name="EvaluationTaskUpload")
    class CreateInput(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        kind = serializers.ChoiceField(choices=TaskKind.choices)
        description = serializers.CharField(required=False, allow_blank=True, max_length=2000)
        shared = serializers.BooleanField(required=False, default=False)
        content = serializers.CharField(
            required=False, trim_whitespace=False, help_text="The JSONL text (or send `file`)"
        )
        file = serializers.FileField(required=False, help_text="The JSONL file (multipart)")

        def validate(self, attrs: dict) -> dict:
            if ("content" in attrs) == ("file" in attrs):
                raise serializers.ValidationError("Give either `file` or `content`.")
            return attrs

    @extend_schema(responses=TaskOutput(many=True))
    def get(self, request: Request) -> Response:
        tasks = tasks_visible(user=request.user)[:200]
        return Response(TaskOutput(tasks, many=True, context={"request": request}).data)

    @extend_schema(request=CreateInput, responses={201: TaskOutput})
    def post(self, request: Request) -> Response:
        data = self.CreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        raw = v["file"].read() if "file" in v else v["content"]
        task = task_upload(
            user=request.user,
            name=v["name"],
            kind=v["kind"],
            data=raw,
            description=v.get("description", ""),
            shared=v["shared"],
        )
        body = TaskOutput(task, context={"request": request}).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": body["url"]})


class TaskDetailApi(_Api):
    @extend_schema(responses=TaskOutput)
    def get(self, request: Request, task_id: str) -> Response:
        task = task_get_for_user(user=request.user, task_id=task_id)
        return Response(TaskOutput(task, context={"request": request}).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    def delete(self, request: Request, task_id: str) -> Response:
        """Delete the task and its evaluations (running ones are cancelled first)."""
        task = task_get_for_user(user=request.user, task_id=task_id)
        deleted = {"deleted": task.pk, "evaluations": task.evaluations.count()}
        task_delete(task=task, user=request.user)
        return Response(deleted)


class EvaluationsApi(_Api):
    """GET: your evaluations, newest first. POST: evaluate a task on a size."""

    @extend_schema_serializer(component_name="EvaluationStart")
    class CreateInput(serializers.Serializer):
        task = serializers.IntegerField(help_text="The task's id")
        model = serializers.CharField(help_text="Size or slug: demo, 7B ...")

    @extend_schema(responses=EvaluationOutput(many=True))
    def get(self, request: Request) -> Response:
        rows = evaluations_visible(user=request.user).filter(owner=request.user)[:100]
        return Response(EvaluationOutput(rows, many=True, context={"request": request}).data)

    @extend_schema(request=CreateInput, responses={201: EvaluationOutput})
    def post(self, request: Request) -> Response:
        data = self.CreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        task = task_get_for_user(user=request.user, task_id=data.validated_data["task"])
        variant = variant_get(size=data.validated_data["model"])
        evaluation = evaluation_start(user=request.user, task=task, variant=variant)
        body = EvaluationOutput(evaluation, context={"request": request}).data
        return Response(
            body, status=status.HTTP_201_CREATED, headers={"Location": body["urls"]["self"]}
        )


class EvaluationDetailApi(_Api):
    @extend_schema(responses=EvaluationOutput)
    def get(self, request: Request, evaluation_id: str) -> Response:
        evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
        body = EvaluationOutput(evaluation, context={"request": request}).data
        body["published"] = published_figures(task=evaluation.task)
        return Response(body)


class EvaluationCancelApi(_Api):
    @extend_schema(request=None, responses=EvaluationOutput)
    def post(self, request: Request, evaluation_id: str) -> Response:
        evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
        evaluation = evaluation_cancel(evaluation=evaluation)
        evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation.pk)
        return Response(EvaluationOutput(evaluation, context={"request": request}).data)


class EvaluationResumeApi(_Api):
    @extend_schema(request=None, responses=EvaluationOutput)
    def post(self, request: Request, evaluation_id: str) -> Response:
        evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
        if evaluation.owner_id != request.user.pk:
            raise PermissionDenied("Only its owner may resume an evaluation.", code="not_owner")
        evaluation_resume(evaluation=evaluation, user=request.user)
        evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation.pk)
        return Response(EvaluationOutput(evaluation, context={"request": request}).data)


class EvaluationItemsApi(_Api):
    """Every scored item: its line of the task file and its scores."""

    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, evaluation_id: str, fmt: str = "json") -> HttpResponse:
        evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
        return downloads.items_response(evaluation, fmt=fmt)
