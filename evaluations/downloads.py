"""The per-item download of an evaluation, as JSON or CSV (one row per item)."""

from __future__ import annotations

import csv
import io
import json

from django.http import HttpResponse

from core.exports import csv_cell
from evaluations.models import Evaluation
from evaluations.services import evaluation_summary_rows


def items_json(evaluation: Evaluation) -> str:
    document = {
        "evaluation": str(evaluation.pk),
        "task": evaluation.task.name,
        "kind": evaluation.task.kind,
        "task_sha256": evaluation.task_sha256,
        "model": evaluation.variant.slug,
        "engine_version": evaluation.engine_version,
        "state": evaluation.state,
        "results": evaluation.results,
        "items": evaluation_summary_rows(evaluation),
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def items_csv(evaluation: Evaluation) -> str:
    rows = evaluation_summary_rows(evaluation)
    item_keys: list[str] = []
    score_keys: list[str] = []
    for row in rows:
        for key in row:
            if key not in ("scores", "index") and key not in item_keys:
                item_keys.append(key)
        for key in row["scores"]:
            if key != "line" and key not in score_keys:
                score_keys.append(key)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", *item_keys, *score_keys])
    for row in rows:
        writer.writerow(
            [row["index"]]
            + [csv_cell(row.get(k)) for k in item_keys]
            + [csv_cell(row["scores"].get(k)) for k in score_keys]
        )
    return out.getvalue()


def items_response(evaluation: Evaluation, *, fmt: str) -> HttpResponse:
    name = f"evaluation-{evaluation.pk}-items"
    if fmt == "csv":
        response = HttpResponse(items_csv(evaluation), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    else:
        response = HttpResponse(items_json(evaluation), content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{name}.json"'
    return response
