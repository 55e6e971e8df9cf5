"""Reads of the evaluations app. Load-and-authorise helpers answer 404 for another
person's task or evaluation (staff see every one), so ids reveal nothing."""

from __future__ import annotations

import uuid

from django.db.models import Q, QuerySet

from catalog.models import ModelCardVersion, ModelVariant
from catalog.selectors import card_current_versions
from core.errors import NotFound
from evaluations.models import Evaluation, EvaluationItem, EvaluationTask


def tasks_visible(*, user) -> QuerySet[EvaluationTask]:
    tasks = EvaluationTask.objects.select_related("owner").defer("content", "items")
    if user.is_staff:
        return tasks
    return tasks.filter(Q(owner=user) | Q(shared=True))


def task_get_for_user(*, user, task_id) -> EvaluationTask:
    try:
        pk = int(task_id)
    except (TypeError, ValueError):
        pk = None
    task = None
    if pk is not None and getattr(user, "is_authenticated", False):
        base = EvaluationTask.objects.all()
        if not user.is_staff:
            base = base.filter(Q(owner=user) | Q(shared=True))
        task = base.filter(pk=pk).first()
    if task is None:
        raise NotFound("There is no such task that you can see.", code="task_not_found")
    return task


def evaluations_visible(*, user) -> QuerySet[Evaluation]:
    rows = Evaluation.objects.select_related("task__owner", "variant", "owner").defer(
        "task__content", "task__items"
    )
    return rows if user.is_staff else rows.filter(owner=user)


def evaluation_get_for_user(*, user, evaluation_id) -> Evaluation:
    try:
        pk = uuid.UUID(str(evaluation_id))
    except ValueError:
        pk = None
    found = None
    if pk is not None and getattr(user, "is_authenticated", False):
        found = evaluations_visible(user=user).filter(pk=pk).first()
    if found is None:
        raise NotFound("There is no such evaluation that you can see.", code="evaluation_not_found")
    return found


def evaluation_items(*, evaluation: Evaluation) -> list[EvaluationItem]:
    return list(evaluation.items.order_by("index"))


# --- The published figures a task can be set beside ----------------------------------------


def _norm(text: str) -> str:
    return "".join(ch for ch in str(text).lower() if ch.isalnum())


# CrowS-Pairs' bias_type values -> the card's category names.
CROWS_CATEGORIES = {
    "race-color": "Race/Color",
    "race": "Race/Color",
    "socioeconomic": "Socioeconomic status",
    "gender": "Gender",
    "disability": "Disability",
    "nationality": "Nationality",
    "sexual-orientation": "Sexual orientation",
    "physical-appearance": "Physical appearance",
    "religion": "Religion",
    "age": "Age",
}


def _card_tables() -> tuple[dict[str, dict], ModelCardVersion | None]:
    variants = list(ModelVariant.objects.filter(is_published=True).order_by("position"))
    current = card_current_versions(variants)
    for variant in reversed(variants):  # the largest size's card lists every size's figures
        card = current.get(variant.pk)
        if card is not None and card.tables:
            return {t["key"]: t for t in card.tables}, card
    return {}, None


def published_figures(*, task: EvaluationTask) -> dict | None:
    """The card's published figures that this task can be compared with: a common-sense
    benchmark whose name the task's name contains (multiple choice), or the bias table by
    category (paired sentences). None when nothing matches."""
    tables, card = _card_tables()
    if card is None:
        return None
    source = {"card_variant": card.variant.slug, "card_version": card.version}
    if task.kind == "multiple_choice":
        name = _norm(task.name)
        for key in ("common_sense", "grouped", "safety"):
            table = tables.get(key)
            if table is None:
                continue
            for c, column in enumerate(table["columns"][1:], start=1):
                if _norm(column) and _norm(column) in name:
                    return {
                        **source,
                        "kind": "benchmark",
                        "benchmark": column,
                        "title": table["title"],
                        "source": table["source"],
                        "unit": table.get("unit", ""),
                        "rows": [[row[0], row[c]] for row in table["rows"]],
                    }
        return None
    if task.kind == "paired_sentences":
        table = tables.get("bias")
        if table is None:
            return None
        return {
            **source,
            "kind": "bias",
            "title": table["title"],
            "source": table["source"],
            "unit": table.get("unit", ""),
            "column": table["columns"][1],
            "categories": {str(row[0]): row[1] for row in table["rows"]},
        }
    return None


def card_category(bias_type: str) -> str:
    """A task's bias_type as the card names the category (itself when the card has no such)."""
    return CROWS_CATEGORIES.get(bias_type.strip().lower().replace("_", "-"), bias_type)
