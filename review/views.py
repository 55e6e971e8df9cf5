"""The console's pages. Thin: parse input, call one service, render. Every view is wrapped
in `reviewer_required` (the one access check); every decision goes through a confirmation
page (no JavaScript needed) and then through `review.services`.
"""

from __future__ import annotations

import csv
from datetime import timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts import services as accounts_services
from accounts.models import Application, Grant, SizeOutcome
from catalog.selectors import variant_get
from core.errors import InvalidInput, NotFound
from review import charts, selectors, services, stats
from review.access import application_get_for_review, reviewer_required
from review.forms import (
    ApproveForm,
    BulkForm,
    ExportForm,
    NoteForm,
    QueueFilterForm,
    RejectForm,
    ReturnForm,
    RevokeForm,
    TakeOverForm,
    end_of_day,
)
from review.models import ReasonKind


def _detail_url(application_id: int) -> str:
    return reverse("review:detail", kwargs={"application_id": application_id})


def _invalid(form) -> InvalidInput:
    fields = {name: [str(e) for e in errors] for name, errors in form.errors.items()}
    first = next(iter(fields.values()))[0] if fields else "The form is not valid."
    return InvalidInput(first, extra={"fields": fields})


def _confirm(
    request: HttpRequest,
    form,
    *,
    title: str,
    summary: list[str],
    back: str,
    editable: tuple[str, ...] = (),
    danger: bool = False,
    overrides: dict | None = None,
) -> HttpResponse | None:
    """The confirmation step: None when the reviewer confirmed, else the page that asks."""
    if request.POST.get("confirmed") == "1":
        return None
    data = request.POST.copy()
    for key, value in (overrides or {}).items():
        data[key] = value
    shown = form.__class__(data)
    shown.is_valid()
    return render(
        request,
        "review/confirm.html",
        {
            "title": title,
            "summary": summary,
            "form": shown,
            "editable": editable,
            "back": back,
            "danger": danger,
        },
    )


# --- Queue ----------------------------------------------------------------------------------


@require_GET
@reviewer_required
def queue(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    form = QueueFilterForm(request.GET)
    filters = form.filters()
    applications = selectors.queue_applications(reviewer=request.user, now=now, **filters)
    # Page through ids first: PostgreSQL answers that from the queue index alone, even deep
    # in the queue; then the page's rows are loaded with everything they show.
    paginator = Paginator(applications.values_list("pk", flat=True), form.per_page_value())
    page = paginator.get_page(request.GET.get("page"))
    params = request.GET.copy()
    params.pop("page", None)
    return render(
        request,
        "review/queue.html",
        {
            "form": form,
            "page": page,
            "rows": selectors.queue_decorate(selectors.queue_page(list(page.object_list)), now=now),
            "query": params.urlencode(),
            "sla_days": selectors.sla_days(),
            "bulk_form": BulkForm(),
            "reject_templates": selectors.reason_templates(ReasonKind.REJECT),
        },
    )


@require_POST
@reviewer_required
def bulk(request: HttpRequest) -> HttpResponse:
    form = BulkForm(request.POST)
    back = reverse("review:queue") + (
        "?" + request.POST["query"] if request.POST.get("query") else ""
    )
    if not form.is_valid():
        raise _invalid(form)
    data = form.cleaned_data
    applications = list(
        selectors.queue_applications(reviewer=request.user)
        .filter(pk__in=data["ids"])
        .select_related("user")
    )
    if not applications:
        raise NotFound("None of the chosen applications is in the queue any more.")
    approve = data["action"] == "approve"
    ends_at = end_of_day(data["ends_on"]) if data.get("ends_on") else None
    names = [f"#{a.pk} {a.full_name} ({a.affiliation})" for a in applications]
    summary = [
        (
            f"Approve every size these {len(applications)} applications still wait for"
            + (
                f", until {data['ends_on']:%Y-%m-%d}."
                if ends_at
                else ", for each size's default term."
            )
        )
        if approve
        else f"Reject every undecided size of these {len(applications)} applications.",
        *names,
    ]
    asked = _confirm(
        request,
        form,
        title="Bulk approval" if approve else "Bulk rejection",
        summary=summary,
        back=back,
        editable=() if approve else ("reason",),
        danger=not approve,
        overrides={} if approve else {"reason": data["reason"]},
    )
    if asked:
        return asked
    if approve:
        result = services.review_bulk_approve(
            applications=applications, reviewer=request.user, ends_at=ends_at
        )
    else:
        result = services.review_bulk_reject(
            applications=applications, reviewer=request.user, reason=data["reason"]
        )
    verb = "Approved" if approve else "Rejected"
    if result.done:
        messages.success(request, f"{verb}: " + ", ".join(f"#{a.pk}" for a in result.done) + ".")
    for application, why in result.failed:
        messages.error(request, f"#{application.pk} not changed: {why}")
    return redirect(back)


# --- Detail ---------------------------------------------------------------------------------


@require_GET
@reviewer_required
def detail(request: HttpRequest, application_id: int) -> HttpResponse:
    now = timezone.now()
    file = selectors.application_review_file(application_id=application_id, now=now)
    application = file.application
    mine = file.claim is not None and file.claim.reviewer_id == request.user.pk
    rows = []
    for decision in file.decisions:
        can_approve = decision.outcome == SizeOutcome.PENDING or (
            decision.outcome == SizeOutcome.AWAITING_SECOND
            and decision.first_approved_by_id != request.user.pk
        )
        default_end = (
            decision.first_ends_at.date()
            if decision.first_ends_at
            else (now + timedelta(days=decision.variant.grant_days)).date()
        )
        rows.append(
            {
                "decision": decision,
                "can_approve": can_approve,
                "can_reject": decision.is_undecided,
                "default_end": default_end,
            }
        )
    return render(
        request,
        "review/detail.html",
        {
            "file": file,
            "application": application,
            "rows": rows,
            "mine": mine,
            "decidable": application.state == "submitted" and (file.claim is None or mine),
            "age": now - application.submitted_at,
            "overdue": selectors.is_overdue(application, now),
            "note_form": NoteForm(),
            "takeover_form": TakeOverForm(),
            "return_form": ReturnForm(),
            "now": now,
        },
    )


@require_POST
@reviewer_required
def claim(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    services.claim_take(application=application, reviewer=request.user)
    messages.success(request, "You claimed this application.")
    return redirect(_detail_url(application.pk))


@require_POST
@reviewer_required
def release(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    services.claim_release(application=application, reviewer=request.user)
    messages.success(request, "You released this application.")
    return redirect(_detail_url(application.pk))


@require_POST
@reviewer_required
def take_over(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    form = TakeOverForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    asked = _confirm(
        request,
        form,
        title="Take over this application",
        summary=[
            f"Take application #{application.pk} ({application.full_name}) over from the "
            "reviewer who claimed it. Your note is kept with the internal notes."
        ],
        back=_detail_url(application.pk),
        editable=("note",),
    )
    if asked:
        return asked
    services.claim_take_over(
        application=application, reviewer=request.user, note=form.cleaned_data["note"]
    )
    messages.success(request, "You took this application over.")
    return redirect(_detail_url(application.pk))


@require_POST
@reviewer_required
def add_note(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    form = NoteForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    services.note_add(application=application, author=request.user, text=form.cleaned_data["text"])
    messages.success(request, "Note added.")
    return redirect(_detail_url(application.pk) + "#notes")


@require_POST
@reviewer_required
def approve(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    form = ApproveForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    data = form.cleaned_data
    variant = variant_get(size=data["size"])
    asked = _confirm(
        request,
        form,
        title=f"Approve {variant}",
        summary=[
            f"Approve {variant} for {application.full_name} ({application.email}), "
            f"access until {data['ends_on']:%Y-%m-%d}.",
            "Where this size needs two reviewers, yours is the first approval unless "
            "another reviewer already gave it.",
        ],
        back=_detail_url(application.pk),
        editable=("ends_on", "message", "note"),
    )
    if asked:
        return asked
    grants = services.review_approve(
        application=application,
        reviewer=request.user,
        variants=[variant],
        ends_at=end_of_day(data["ends_on"]),
        message=data["message"],
        note=data["note"],
    )
    if grants:
        messages.success(request, f"{variant} approved until {grants[0].ends_at:%Y-%m-%d}.")
    else:
        messages.success(
            request, f"First approval of {variant} recorded; a second reviewer must confirm."
        )
    return redirect(_detail_url(application.pk))


@require_POST
@reviewer_required
def reject(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    form = RejectForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    data = form.cleaned_data
    variant = variant_get(size=data["size"])
    asked = _confirm(
        request,
        form,
        title=f"Reject {variant}",
        summary=[
            f"Reject {variant} for {application.full_name} ({application.email}). "
            "The applicant reads the reason below."
        ],
        back=_detail_url(application.pk),
        editable=("reason", "note"),
        danger=True,
        overrides={"reason": data["reason"]},
    )
    if asked:
        return asked
    services.review_reject(
        application=application,
        reviewer=request.user,
        variants=[variant],
        reason=data["reason"],
        note=data["note"],
    )
    messages.success(request, f"{variant} rejected.")
    return redirect(_detail_url(application.pk))


@require_POST
@reviewer_required
def return_for_changes(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    form = ReturnForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    data = form.cleaned_data
    asked = _confirm(
        request,
        form,
        title="Return for changes",
        summary=[
            f"Return application #{application.pk} to {application.full_name}. They can "
            "edit and resubmit it; the message below tells them what to change."
        ],
        back=_detail_url(application.pk),
        editable=("message", "note"),
        overrides={"message": data["message"]},
    )
    if asked:
        return asked
    services.review_return(
        application=application, reviewer=request.user, message=data["message"], note=data["note"]
    )
    messages.success(request, "Returned to the applicant for changes.")
    return redirect(_detail_url(application.pk))


@require_POST
@reviewer_required
def revoke(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = (
        Grant.objects.select_related("user", "variant", "application").filter(pk=grant_id).first()
    )
    if grant is None:
        raise NotFound(f"There is no grant #{grant_id}.")
    form = RevokeForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    back = _detail_url(grant.application_id) if grant.application_id else reverse("review:queue")
    asked = _confirm(
        request,
        form,
        title=f"Revoke access to {grant.variant}",
        summary=[
            f"Revoke {grant.user.email}'s access to {grant.variant} now. Download links, "
            "personal access tokens and running jobs stop at once; the grantee reads the "
            "reason below."
        ],
        back=back,
        editable=("reason",),
        danger=True,
        overrides={"reason": form.cleaned_data["reason"]},
    )
    if asked:
        return asked
    services.review_revoke_grant(
        grant=grant, reviewer=request.user, reason=form.cleaned_data["reason"]
    )
    messages.success(request, f"Access to {grant.variant} revoked.")
    return redirect(back)


# --- Dashboard and export -------------------------------------------------------------------

COLORS = {
    "approved": "#1f7a3a",
    "rejected": "#a62424",
    "withdrawn": "#8a93a3",
    "pending": "#2456a6",
}


@require_GET
@reviewer_required
def dashboard(request: HttpRequest) -> HttpResponse:
    data = stats.dashboard_stats(weeks=12)
    labels = [f"{w:%d %b}" for w in data.weeks]
    per_week = charts.stacked_bars(
        "Applications per week of submission, by outcome",
        labels,
        [charts.Series(name, COLORS[name], values) for name, values in data.outcomes.items()],
    )
    times = charts.lines(
        "Days from submission to decision, per week of decision",
        labels,
        [
            charts.Series("median", "#2456a6", data.median_days),
            charts.Series("90th percentile", "#c47a16", data.p90_days),
        ],
        unit="d",
        minimum=1.0,
    )
    queue_chart = charts.lines(
        "Applications in the queue at the end of each week",
        labels,
        [charts.Series("in the queue", "#2456a6", data.queue_sizes)],
        integer=True,
    )
    sizes = charts.grouped_bars(
        f"Active grants, and downloads in the last {data.download_days} days, per size",
        [v.size for v in data.sizes],
        [
            charts.Series("active grants", "#1f7a3a", data.active_grants),
            charts.Series("downloads", "#2456a6", data.downloads),
        ],
    )
    return render(
        request,
        "review/dashboard.html",
        {
            "data": data,
            "per_week": per_week,
            "times": times,
            "queue_chart": queue_chart,
            "sizes_chart": sizes,
            "size_rows": list(zip(data.sizes, data.active_grants, data.downloads, strict=True)),
        },
    )


def _csv_cell(value) -> str:
    # A cell starting with = + - @ would be run as a formula by a spreadsheet.
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


EXPORT_COLUMNS = [
    "decided_at",
    "application",
    "applicant_email",
    "full_name",
    "affiliation",
    "organization_type",
    "country",
    "size",
    "outcome",
    "decided_by",
    "first_approved_by",
    "grant_ends_at",
    "reason",
]


@require_GET
@reviewer_required
def export(request: HttpRequest) -> HttpResponse:
    if "start" not in request.GET:
        today = timezone.localdate()
        form = ExportForm(initial={"start": today - timedelta(days=30), "end": today})
        return render(request, "review/export.html", {"form": form})
    form = ExportForm(request.GET)
    if not form.is_valid():
        return render(request, "review/export.html", {"form": form}, status=400)
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    rows = selectors.decisions_in_range(start=start, end=end)
    accounts_services.audit_record(
        actor=request.user,
        action="review.decisions_exported",
        target="decisions",
        data={"start": start.isoformat(), "end": end.isoformat()},
        ip=request.META.get("REMOTE_ADDR"),
    )
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(EXPORT_COLUMNS)
        for d in rows.iterator(chunk_size=1000):
            a: Application = d.application
            yield writer.writerow(
                [
                    _csv_cell(value)
                    for value in (
                        d.decided_at.isoformat(),
                        a.pk,
                        a.email,
                        a.full_name,
                        a.affiliation,
                        a.organization_type,
                        str(a.country or ""),
                        d.variant.slug,
                        d.outcome,
                        d.decided_by.email if d.decided_by else "",
                        d.first_approved_by.email if d.first_approved_by else "",
                        d.grant_ends_at.isoformat() if d.grant_ends_at else "",
                        d.reason,
                    )
                ]
            )

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    filename = f"decisions-{start:%Y%m%d}-{end:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
