"""Forms parse what the reviewer typed; the rules live in the services."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from django import forms
from django.utils import timezone
from django_countries import countries

from accounts.models import ApplicationState, OrganizationType
from accounts.selectors import user_list_reviewers
from catalog.models import ModelVariant
from review.models import FlagCode, ReasonKind, ReasonTemplate
from review.selectors import AWAITING_SECOND

PAGE_SIZES = (25, 50, 100)
AGE_CHOICES = [
    ("", "Any age"),
    ("lt1", "Under a day"),
    ("1to3", "1 to 3 days"),
    ("3tosla", "3 days to the service level"),
    ("overdue", "Overdue"),
]


def end_of_day(day: date) -> datetime:
    """A grant "until 2027-01-31" lasts through that day (UTC)."""
    return datetime.combine(day, time(23, 59, 59), tzinfo=timezone.get_current_timezone())


class QueueFilterForm(forms.Form):
    q = forms.CharField(label="Search", required=False, max_length=200)
    state = forms.ChoiceField(
        required=False,
        choices=[
            ("", "Submitted or returned"),
            (ApplicationState.SUBMITTED, "Submitted"),
            (ApplicationState.RETURNED, "Returned for changes"),
            (AWAITING_SECOND, "Waiting for a second approval"),
        ],
    )
    organization_type = forms.ChoiceField(
        label="Organization", required=False, choices=[("", "Any organization")]
    )
    country = forms.ChoiceField(required=False, choices=[("", "Any country")])
    size = forms.ChoiceField(required=False, choices=[("", "Any size")])
    flag = forms.ChoiceField(
        required=False,
        choices=[("", "Flags: any or none"), ("any", "Any flag"), ("none", "No flag")],
    )
    assigned = forms.ChoiceField(
        label="Claimed by",
        required=False,
        choices=[("", "Anyone or nobody"), ("none", "Nobody"), ("me", "Me")],
    )
    age = forms.ChoiceField(required=False, choices=AGE_CHOICES)
    order = forms.ChoiceField(
        required=False, choices=[("oldest", "Oldest first"), ("newest", "Newest first")]
    )
    per_page = forms.TypedChoiceField(
        label="Per page",
        required=False,
        coerce=int,
        empty_value=PAGE_SIZES[0],
        choices=[(n, str(n)) for n in PAGE_SIZES],
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["organization_type"].choices += OrganizationType.choices
        self.fields["country"].choices += list(countries)
        self.fields["size"].choices += [
            (v.slug, str(v)) for v in ModelVariant.objects.order_by("position", "slug")
        ]
        self.fields["flag"].choices += FlagCode.choices
        self.fields["assigned"].choices += [
            (str(u.pk), u.display_name) for u in user_list_reviewers()
        ]

    def filters(self) -> dict:
        """The valid filters (an invalid one is shown with its error and ignored)."""
        self.is_valid()
        data = getattr(self, "cleaned_data", {})
        keys = ("q", "state", "organization_type", "country", "size", "flag", "assigned")
        values = {key: data.get(key) or "" for key in keys}
        values["age"] = data.get("age") or ""
        values["order"] = data.get("order") or "oldest"
        return values

    def per_page_value(self) -> int:
        self.is_valid()
        return getattr(self, "cleaned_data", {}).get("per_page") or PAGE_SIZES[0]


class _ReasonMixin:
    """A reason picked from a template and edited: an empty text takes the template's."""

    reason_field = "reason"
    reason_kind = ReasonKind.REJECT

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = ReasonTemplate.objects.filter(
            kind=self.reason_kind, is_active=True
        )

    def clean(self):
        data = super().clean()
        template = data.get("template")
        if not (data.get(self.reason_field) or "").strip() and template is not None:
            data[self.reason_field] = template.text
        if not (data.get(self.reason_field) or "").strip():
            self.add_error(self.reason_field, "Write a reason or pick a template.")
        return data


class ApproveForm(forms.Form):
    size = forms.SlugField(widget=forms.HiddenInput)
    ends_on = forms.DateField(label="Access until", widget=forms.DateInput(attrs={"type": "date"}))
    message = forms.CharField(
        label="Message to the applicant (optional)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
    )
    note = forms.CharField(
        label="Internal note (optional)", required=False, widget=forms.Textarea(attrs={"rows": 3})
    )

    def clean_ends_on(self):
        value = self.cleaned_data["ends_on"]
        if value <= timezone.localdate():
            raise forms.ValidationError("The end date must be after today.")
        if value > timezone.localdate() + timedelta(days=3 * 366):
            raise forms.ValidationError("A grant lasts at most three years.")
        return value


class RejectForm(_ReasonMixin, forms.Form):
    size = forms.SlugField(widget=forms.HiddenInput)
    template = forms.ModelChoiceField(
        queryset=ReasonTemplate.objects.none(), required=False, label="Template"
    )
    reason = forms.CharField(
        label="Reason (shown to the applicant)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
    )
    note = forms.CharField(
        label="Internal note (optional)", required=False, widget=forms.Textarea(attrs={"rows": 3})
    )


class ReturnForm(_ReasonMixin, forms.Form):
    reason_field = "message"
    reason_kind = ReasonKind.RETURN
    template = forms.ModelChoiceField(
        queryset=ReasonTemplate.objects.none(), required=False, label="Template"
    )
    message = forms.CharField(
        label="What to change (shown to the applicant)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
    )
    note = forms.CharField(
        label="Internal note (optional)", required=False, widget=forms.Textarea(attrs={"rows": 3})
    )


class RevokeForm(_ReasonMixin, forms.Form):
    reason_kind = ReasonKind.REVOKE
    template = forms.ModelChoiceField(
        queryset=ReasonTemplate.objects.none(), required=False, label="Template"
    )
    reason = forms.CharField(
        label="Reason (shown to the grantee)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
    )


class NoteForm(forms.Form):
    text = forms.CharField(
        label="Internal note", widget=forms.Textarea(attrs={"rows": 3}), max_length=5000
    )


class TakeOverForm(forms.Form):
    note = forms.CharField(
        label="Why you take this application over",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=2000,
    )


class BulkForm(_ReasonMixin, forms.Form):
    action = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    # The queue's checkboxes choose these; the confirmation page carries them hidden.
    ids = forms.TypedMultipleChoiceField(
        coerce=int, label="Applications", widget=forms.MultipleHiddenInput
    )
    # The queue's filters (its query string), to go back to the same rows afterwards.
    query = forms.CharField(required=False, widget=forms.HiddenInput, max_length=2000)
    ends_on = forms.DateField(
        label="Access until (approval; empty: each size's default)",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    template = forms.ModelChoiceField(
        queryset=ReasonTemplate.objects.none(), required=False, label="Template"
    )
    reason = forms.CharField(
        label="Reason (rejection; shown to every applicant)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
    )

    MAX = 100

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Any id parses; the view loads only those in the queue.
        raw = self.data.getlist("ids") if hasattr(self.data, "getlist") else []
        self.fields["ids"].choices = [(value, value) for value in raw]

    def clean_ids(self):
        ids = self.cleaned_data["ids"]
        if len(ids) > self.MAX:
            raise forms.ValidationError(f"Decide at most {self.MAX} applications at once.")
        return ids

    def clean_ends_on(self):
        value = self.cleaned_data.get("ends_on")
        if value is not None and value <= timezone.localdate():
            raise forms.ValidationError("The end date must be after today.")
        return value

    def clean(self):
        if self.cleaned_data.get("action") == "reject":
            return super().clean()
        return forms.Form.clean(self)


class ExportForm(forms.Form):
    start = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To (inclusive)", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "The end date is before the start date.")
            elif (end - start).days > 5 * 366:
                self.add_error("end", "Export at most five years at once.")
        return data
