"""The evaluations pages: tasks and upload, an evaluation's progress and results side by
side with the card's published figures, its per-item downloads. Thin: services do the work,
`presentation` shapes the results for the template."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts.selectors import variants_accessible
from catalog.selectors import variant_get
from core.errors import InvalidInput, PortalError, TooLarge
from evaluations import downloads
from evaluations.models import TaskKind
from evaluations.presentation import results_view
from evaluations.selectors import (
    evaluation_get_for_user,
    evaluations_visible,
    task_get_for_user,
    tasks_visible,
)
from evaluations.services import evaluation_cancel, evaluation_resume, evaluation_start, task_upload


class UploadForm(forms.Form):
    name = forms.CharField(max_length=100)
    kind = forms.ChoiceField(choices=TaskKind.choices)
    file = forms.FileField(help_text="JSONL: one item per line")
    description = forms.CharField(required=False, max_length=2000, widget=forms.Textarea)
    shared = forms.BooleanField(required=False, help_text="Staff: every researcher may run it")


def _index_context(request: HttpRequest, form: UploadForm | None = None) -> dict:
    user = request.user
    return {
        "tasks": list(tasks_visible(user=user)[:200]),
        "evaluations": list(evaluations_visible(user=user).filter(owner=user)[:50]),
        "variants": variants_accessible(user=user, purpose="generate"),
        "form": form or UploadForm(),
        "line_errors": [],
        "quota": settings.EVAL_TASKS_PER_USER,
        "max_items": settings.EVAL_TASK_MAX_ITEMS,
    }


@login_required
def index(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return render(request, "evaluations/index.html", _index_context(request))
    form = UploadForm(request.POST, request.FILES)
    context = _index_context(request, form)
    if form.is_valid():
        data = form.cleaned_data
        try:
            task = task_upload(
                user=request.user,
                name=data["name"],
                kind=data["kind"],
                data=data["file"].read(),
                description=data["description"],
                shared=data["shared"],
            )
        except (InvalidInput, TooLarge) as exc:
            form.add_error("file", exc.message)
            context["line_errors"] = exc.extra.get("errors", [])
        else:
            messages.success(request, f"Task {task.name!r} uploaded: {task.item_count} items.")
            return redirect("evaluations:index")
    return render(request, "evaluations/index.html", context, status=400)


@require_POST
@login_required
def start(request: HttpRequest) -> HttpResponse:
    task = task_get_for_user(user=request.user, task_id=request.POST.get("task"))
    variant = variant_get(size=request.POST.get("model", ""))
    evaluation = evaluation_start(user=request.user, task=task, variant=variant)
    return redirect(evaluation.get_absolute_url())


@require_GET
@login_required
def task_file(request: HttpRequest, task_id: str) -> HttpResponse:
    task = task_get_for_user(user=request.user, task_id=task_id)
    response = HttpResponse(task.content, content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="task-{task.pk}.jsonl"'
    return response


@require_GET
@login_required
def detail(request: HttpRequest, evaluation_id: str) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
    return render(
        request,
        "evaluations/detail.html",
        {"evaluation": evaluation, "view": results_view(evaluation)},
    )


@require_GET
@login_required
def status(request: HttpRequest, evaluation_id: str) -> JsonResponse:
    evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
    return JsonResponse(
        {
            "id": str(evaluation.pk),
            "state": evaluation.state,
            "items_done": evaluation.items_done,
            "items_total": evaluation.items_total,
            "progress": evaluation.progress,
            "note": evaluation.note,
            "error": evaluation.error,
        }
    )


@require_POST
@login_required
def cancel(request: HttpRequest, evaluation_id: str) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
    try:
        evaluation_cancel(evaluation=evaluation)
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect(evaluation.get_absolute_url())


@require_POST
@login_required
def resume(request: HttpRequest, evaluation_id: str) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
    try:
        if evaluation.owner_id != request.user.pk:
            raise InvalidInput("Only its owner may resume an evaluation.")
        evaluation_resume(evaluation=evaluation, user=request.user)
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect(evaluation.get_absolute_url())


@require_GET
@login_required
def items(request: HttpRequest, evaluation_id: str, fmt: str) -> HttpResponse:
    evaluation = evaluation_get_for_user(user=request.user, evaluation_id=evaluation_id)
    return downloads.items_response(evaluation, fmt=fmt)
