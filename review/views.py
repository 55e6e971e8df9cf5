"""The console's pages. Thin: parse input, call one service, render. Every view is wrapped
in `reviewer_required` (the one access check); every decision is declared once in
`DECISIONS` and served by `decide`: a confirmation page (no JavaScript needed), then one call
into `review.services`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import timedelta

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from accounts import services as accounts_services
from accounts.models import Application, Grant, SizeDecision, SizeOutcome
from catalog.models import AccessPolicy, ModelVariant
from catalog.selectors import variant_availability, variant_get
from core.errors import InvalidInput, NotFound
from core.exports import csv_cell
from review import charts, selectors, services, stats
from review.access import application_get_for_review, grant_get_for_review, reviewer_required
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


def _queue_url(query: str = "") -> str:
    """The queue, with the filters it had (`query`, its query string) when there are any."""
    return reverse("review:queue") + ("?" + query if query else "")


def _invalid(form) -> InvalidInput:
    fields = {name: [str(e) for e in errors] for name, errors in form.errors.items()}
    first = next(iter(fields.values()))[0] if fields else "The form is not valid."
    return InvalidInput(first, extra={"fields": fields})


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
def add_note(request: HttpRequest, application_id: int) -> HttpResponse:
    application = application_get_for_review(application_id)
    form = NoteForm(request.POST)
    if not form.is_valid():
        raise _invalid(form)
    services.note_add(application=application, author=request.user, text=form.cleaned_data["text"])
    messages.success(request, "Note added.")
    return redirect(_detail_url(application.pk) + "#notes")


# --- Decisions ------------------------------------------------------------------------------
# Each decision of the console is declared once, as a `Decision`: its form, what the
# confirmation page says, what it performs (one call into `review.services`) and what the
# reviewer reads afterwards. `decide` serves them all: the first POST shows the confirmation
# page, the confirmed one performs; a form that does not validate shows the same page again
# with its errors and everything that was chosen (the size, the selected applications).


@dataclass
class Subject:
    """What a decision is about, loaded once per request, and where the reviewer goes back."""

    back: str
    application: Application | None = None
    variant: ModelVariant | None = None
    size_decision: SizeDecision | None = None
    grant: Grant | None = None
    applications: list[Application] = field(default_factory=list)


class Decision:
    """One decision: its form, the confirmation page's title and summary, what it performs and
    the messages afterwards. By default it is about the application in the URL."""

    form_class: type[forms.Form]
    editable: tuple[str, ...] = ()  # the fields the confirmation page lets the reviewer edit
    danger = False

    def subject(self, request: HttpRequest, data: dict, **kwargs) -> Subject:
        application = application_get_for_review(kwargs["application_id"])
        return Subject(back=_detail_url(application.pk), application=application)

    def title(self, subject: Subject, data: dict) -> str:
        raise NotImplementedError

    def summary(self, subject: Subject, data: dict) -> list[str]:
        raise NotImplementedError

    def perform(self, subject: Subject, data: dict, *, reviewer):
        raise NotImplementedError

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        """The messages the reviewer reads on the page they go back to."""
        raise NotImplementedError


def _applicant(application: Application) -> str:
    return f"{application.full_name} ({application.email})"


class _SizeDecision(Decision):
    """A decision on one size of one application (the `size` field)."""

    def subject(self, request: HttpRequest, data: dict, **kwargs) -> Subject:
        subject = super().subject(request, data, **kwargs)
        if data.get("size"):
            subject.variant = variant_get(size=data["size"])
        return subject

    def size(self, subject: Subject) -> str:
        return str(subject.variant) if subject.variant else "this size"


class Approve(_SizeDecision):
    form_class = ApproveForm
    editable = ("ends_on", "message", "note")

    def subject(self, request: HttpRequest, data: dict, **kwargs) -> Subject:
        subject = super().subject(request, data, **kwargs)
        if subject.variant is not None:
            subject.size_decision = (
                subject.application.decisions.select_related("first_approved_by")
                .filter(variant=subject.variant)
                .first()
            )
        return subject

    def is_second(self, subject: Subject) -> bool:
        return (
            subject.size_decision is not None
            and subject.size_decision.outcome == SizeOutcome.AWAITING_SECOND
        )

    def title(self, subject: Subject, data: dict) -> str:
        second = " (second approval)" if self.is_second(subject) else ""
        return f"Approve {self.size(subject)}{second}"

    def summary(self, subject: Subject, data: dict) -> list[str]:
        until = f"{data['ends_on']:%Y-%m-%d}" if data.get("ends_on") else "the date below"
        lines = [
            f"Approve {self.size(subject)} for {_applicant(subject.application)}, "
            f"access until {until}."
        ]
        decision, variant = subject.size_decision, subject.variant
        if self.is_second(subject):
            first = decision.first_approved_by
            lines.append(
                "This is the second approval: "
                + (first.display_name if first else "another reviewer")
                + (
                    f" gave the first on {decision.first_approved_at:%Y-%m-%d}"
                    if decision.first_approved_at
                    else " gave the first"
                )
                + ". Yours completes it and the grant starts."
            )
        elif variant is not None and variant.access_policy == AccessPolicy.TWO_REVIEWERS:
            lines.append(
                f"{variant} needs two reviewers: yours is the first approval, and the grant "
                "waits for a second, different reviewer to confirm."
            )
        if variant is not None:
            # Approving a size that cannot be used yet is allowed; the reviewer should know.
            note = variant_availability(variant).run_note
            if note:
                lines.append(f"Note: {note}")
        return lines

    def perform(self, subject: Subject, data: dict, *, reviewer):
        return services.review_approve(
            application=subject.application,
            reviewer=reviewer,
            variants=[subject.variant],
            ends_at=end_of_day(data["ends_on"]),
            message=data["message"],
            note=data["note"],
        )

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        variant = subject.variant
        if result:
            text = f"{variant} approved until {result[0].ends_at:%Y-%m-%d}."
        else:
            text = f"First approval of {variant} recorded; a second reviewer must confirm."
        return [(messages.SUCCESS, text)]


class Reject(_SizeDecision):
    form_class = RejectForm
    editable = ("reason", "note")
    danger = True

    def title(self, subject: Subject, data: dict) -> str:
        return f"Reject {self.size(subject)}"

    def summary(self, subject: Subject, data: dict) -> list[str]:
        return [
            f"Reject {self.size(subject)} for {_applicant(subject.application)}. "
            "The applicant reads the reason below."
        ]

    def perform(self, subject: Subject, data: dict, *, reviewer):
        return services.review_reject(
            application=subject.application,
            reviewer=reviewer,
            variants=[subject.variant],
            reason=data["reason"],
            note=data["note"],
        )

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        return [(messages.SUCCESS, f"{subject.variant} rejected.")]


class Return(Decision):
    form_class = ReturnForm
    editable = ("message", "note")

    def title(self, subject: Subject, data: dict) -> str:
        return "Return for changes"

    def summary(self, subject: Subject, data: dict) -> list[str]:
        application = subject.application
        return [
            f"Return application #{application.pk} to {application.full_name}. They can "
            "edit and resubmit it; the message below tells them what to change."
        ]

    def perform(self, subject: Subject, data: dict, *, reviewer):
        return services.review_return(
            application=subject.application,
            reviewer=reviewer,
            message=data["message"],
            note=data["note"],
        )

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        return [(messages.SUCCESS, "Returned to the applicant for changes.")]


class TakeOver(Decision):
    form_class = TakeOverForm
    editable = ("note",)

    def title(self, subject: Subject, data: dict) -> str:
        return "Take over this application"

    def summary(self, subject: Subject, data: dict) -> list[str]:
        application = subject.application
        return [
            f"Take application #{application.pk} ({application.full_name}) over from the "
            "reviewer who claimed it. Your note is kept with the internal notes."
        ]

    def perform(self, subject: Subject, data: dict, *, reviewer):
        return services.claim_take_over(
            application=subject.application, reviewer=reviewer, note=data["note"]
        )

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        return [(messages.SUCCESS, "You took this application over.")]


class Revoke(Decision):
    form_class = RevokeForm
    editable = ("reason",)
    danger = True

    def subject(self, request: HttpRequest, data: dict, **kwargs) -> Subject:
        grant = grant_get_for_review(kwargs["grant_id"])
        back = _detail_url(grant.application_id) if grant.application_id else _queue_url()
        return Subject(back=back, grant=grant)

    def title(self, subject: Subject, data: dict) -> str:
        return f"Revoke access to {subject.grant.variant}"

    def summary(self, subject: Subject, data: dict) -> list[str]:
        grant = subject.grant
        return [
            f"Revoke {grant.user.email}'s access to {grant.variant} now. Download links, "
            "personal access tokens and running jobs stop at once; the grantee reads the "
            "reason below."
        ]

    def perform(self, subject: Subject, data: dict, *, reviewer):
        return services.review_revoke_grant(
            grant=subject.grant, reviewer=reviewer, reason=data["reason"]
        )

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        return [(messages.SUCCESS, f"Access to {subject.grant.variant} revoked.")]


class _Bulk(Decision):
    """A decision on the applications selected in the queue (the `ids` field)."""

    form_class = BulkForm
    verb = ""

    def subject(self, request: HttpRequest, data: dict, **kwargs) -> Subject:
        subject = Subject(back=_queue_url(data.get("query", "")))
        if data.get("ids"):
            subject.applications = list(
                selectors.queue_applications(reviewer=request.user)
                .filter(pk__in=data["ids"])
                .select_related("user")
            )
            if not subject.applications:
                raise NotFound("None of the chosen applications is in the queue any more.")
        return subject

    def summary(self, subject: Subject, data: dict) -> list[str]:
        return [self.what(subject, data)] + [
            f"#{a.pk} {a.full_name} ({a.affiliation})" for a in subject.applications
        ]

    def what(self, subject: Subject, data: dict) -> str:
        raise NotImplementedError

    def done(self, subject: Subject, data: dict, result) -> list[tuple[int, str]]:
        said = [(messages.ERROR, f"#{a.pk} not changed: {why}") for a, why in result.failed]
        if result.done:
            done = ", ".join(f"#{a.pk}" for a in result.done)
            said.insert(0, (messages.SUCCESS, f"{self.verb}: {done}."))
        return said


class BulkApprove(_Bulk):
    editable = ("ends_on",)
    verb = "Approved"

    def title(self, subject: Subject, data: dict) -> str:
        return "Bulk approval"

    def what(self, subject: Subject, data: dict) -> str:
        term = (
            f", until {data['ends_on']:%Y-%m-%d}."
            if data.get("ends_on")
            else ", for each size's default term."
        )
        return (
            f"Approve every size these {len(subject.applications)} applications still wait "
            f"for{term}"
        )

    def perform(self, subject: Subject, data: dict, *, reviewer):
        ends_on = data.get("ends_on")
        return services.review_bulk_approve(
            applications=subject.applications,
            reviewer=reviewer,
            ends_at=end_of_day(ends_on) if ends_on else None,
        )


class BulkReject(_Bulk):
    editable = ("reason",)
    danger = True
    verb = "Rejected"

    def title(self, subject: Subject, data: dict) -> str:
        return "Bulk rejection"

    def what(self, subject: Subject, data: dict) -> str:
        return f"Reject every undecided size of these {len(subject.applications)} applications."

    def perform(self, subject: Subject, data: dict, *, reviewer):
        return services.review_bulk_reject(
            applications=subject.applications, reviewer=reviewer, reason=data["reason"]
        )


DECISIONS: dict[str, Decision] = {
    "approve": Approve(),
    "reject": Reject(),
    "return": Return(),
    "take_over": TakeOver(),
    "revoke": Revoke(),
    "bulk_approve": BulkApprove(),
    "bulk_reject": BulkReject(),
}


def _shown_form(decision: Decision, form: forms.Form) -> tuple[forms.Form, tuple[str, ...]]:
    """The form the confirmation page shows, and which of its fields it lets the reviewer edit.

    The editable fields show their parsed values, so a reason filled in from a template is
    text the reviewer reads and edits; a field in error is editable too (unless it is one the
    reviewer chose on the page before, such as the selection), so it can be put right here.
    """
    data = form.data.copy()
    for name in decision.editable:
        if name in form.cleaned_data:
            data[name] = form.cleaned_data[name]
    shown = form.__class__(data)
    shown.is_valid()
    fixable = tuple(
        name
        for name in shown.errors
        if name in shown.fields
        and name not in decision.editable
        and not shown.fields[name].widget.is_hidden
    )
    return shown, decision.editable + fixable


@require_POST
@reviewer_required
def decide(request: HttpRequest, decision: str, **kwargs) -> HttpResponse:
    """Every decision of the console (see `DECISIONS`); `decision` comes from the URL. The bulk
    form names its decision in its `action` field."""
    if decision == "bulk":
        decision = "bulk_reject" if request.POST.get("action") == "reject" else "bulk_approve"
    action = DECISIONS[decision]
    form = action.form_class(request.POST)
    valid = form.is_valid()
    data = form.cleaned_data
    subject = action.subject(request, data, **kwargs)
    if valid and request.POST.get("confirmed") == "1":
        result = action.perform(subject, data, reviewer=request.user)
        for level, text in action.done(subject, data, result):
            messages.add_message(request, level, text)
        return redirect(subject.back)
    shown, editable = _shown_form(action, form)
    return render(
        request,
        "review/confirm.html",
        {
            "title": action.title(subject, data),
            "summary": action.summary(subject, data),
            "form": shown,
            "editable": editable,
            "back": subject.back,
            "danger": action.danger,
        },
        # The page that asks again, with the errors marked; 400 says the input was not taken.
        status=200 if valid else 400,
    )


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
                    csv_cell(value)
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
