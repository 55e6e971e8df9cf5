"""Forms parse what people type; the rules (what a complete application is, who may accept
what) are in accounts.services, whose errors the views place beside the fields."""

from __future__ import annotations

from django import forms
from django_countries import countries

from accounts.models import OrganizationType, TokenScope
from catalog.models import ModelVariant
from catalog.selectors import variant_list_published


class ApplicationForm(forms.Form):
    """Every field is optional here: a draft may be incomplete. Submission checks the rest."""

    full_name = forms.CharField(max_length=200, required=False, label="Full name")
    affiliation = forms.CharField(
        max_length=300, required=False, help_text="University, institute, agency or lab"
    )
    organization_type = forms.ChoiceField(
        choices=[("", "Choose one"), *list(OrganizationType.choices)],
        required=False,
        label="Type of organization",
    )
    country = forms.ChoiceField(required=False)
    position = forms.CharField(
        max_length=200,
        required=False,
        help_text="For example: PhD student, professor, research scientist",
    )
    is_student = forms.BooleanField(required=False, label="I am a student")
    supervisor_name = forms.CharField(
        max_length=200, required=False, label="Supervisor's name", help_text="Students only"
    )
    supervisor_email = forms.EmailField(
        required=False, label="Supervisor's email", help_text="Students only"
    )
    orcid = forms.CharField(
        max_length=40, required=False, label="ORCID iD", help_text="Like 0000-0002-1825-0097"
    )
    web_page = forms.URLField(
        max_length=500, required=False, label="Institutional web page", assume_scheme="https"
    )
    publications = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}), required=False, label="Relevant publications"
    )
    use_case = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        required=False,
        label="Intended research use",
        help_text="What will you study with the model, how, and what will you publish?",
    )
    requested_variants = forms.ModelMultipleChoiceField(
        queryset=ModelVariant.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Model sizes",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["country"].choices = [("", "Choose a country"), *list(countries)]
        self.fields["requested_variants"].queryset = variant_list_published()

    def valid_data(self) -> dict:
        """The fields that parsed, for a draft: one bad field must not lose the others."""
        data = {}
        for name in self.fields:
            if name == "requested_variants" or name in self.errors:
                continue
            if name in self.cleaned_data:
                value = self.cleaned_data[name]
                data[name] = value if value is not None else ""
        return data


class LicenseAcceptForm(forms.Form):
    version = forms.IntegerField(widget=forms.HiddenInput)
    agree = forms.BooleanField(
        required=True,
        label="I have read this license and agree to its terms",
        error_messages={"required": "Tick the box to show you agree to the license."},
    )
    typed_name = forms.CharField(
        max_length=200,
        label="Type your full name",
        help_text="As on your application; this is your signature.",
        error_messages={"required": "Type your full name to sign."},
    )


class TokenCreateForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Where you will use it: 'laptop', 'cluster'")
    scopes = forms.MultipleChoiceField(
        choices=TokenScope.choices,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one scope."},
    )
    expires_in_days = forms.TypedChoiceField(
        coerce=int,
        choices=[(30, "30 days"), (90, "90 days"), (180, "180 days"), (365, "1 year")],
        initial=90,
        label="Expires in",
    )
