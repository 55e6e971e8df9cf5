"""The researcher's pages under /access/. Each view parses input, calls one service, renders."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from accounts import selectors, services
from accounts.forms import ApplicationForm, LicenseAcceptForm, TokenCreateForm
from accounts.models import ApplicationState
from catalog.models import DEFAULT_LICENSE_SLUG, License, LicenseVersion
from core.errors import InvalidInput, NotFound


def _ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")


@login_required
@require_http_methods(["GET"])
def status(request: HttpRequest) -> HttpResponse:
    status = selectors.applicant_status(user=request.user)
    # Accepting the license is a step of applying: offer it from the moment there is an
    # application, not only once a grant makes it a blocker.
    version = _license_version_to_show(request.user) if status.application else None
    if version is not None and request.user.license_acceptances.filter(version=version).exists():
        version = None
    context = {"status": status, "license_to_accept": version}
    return render(request, "accounts/status.html", context)


def _initial(application) -> dict:
    initial = {name: getattr(application, name) for name in services.APPLICANT_FIELDS}
    initial["country"] = application.country.code or ""
    initial["requested_variants"] = list(application.requested_variants.all())
    return initial


@login_required
@require_http_methods(["GET", "POST"])
def apply(request: HttpRequest) -> HttpResponse:
    latest = selectors.application_latest_for_user(user=request.user)
    if latest is not None and not latest.is_open and request.method == "GET":
        # A decided application stays as it is; a new one starts from the status page.
        return redirect("access:status")
    application = services.application_start(user=request.user)
    if application.state not in (ApplicationState.DRAFT, ApplicationState.RETURNED):
        messages.info(request, "Your application is with the reviewers; you can follow it here.")
        return redirect("access:status")
    if request.method == "GET":
        form = ApplicationForm(initial=_initial(application))
        return _render_apply(request, form, application)

    form = ApplicationForm(request.POST)
    form.is_valid()
    services.application_save_draft(
        application=application,
        user=request.user,
        data=form.valid_data(),
        variants=form.cleaned_data.get("requested_variants")
        if "requested_variants" not in form.errors
        else None,
    )
    if request.POST.get("action") != "submit":
        if form.errors:
            messages.warning(request, "Draft saved, except the fields marked below.")
            return _render_apply(request, form, application, status=400)
        messages.success(request, "Draft saved. Submit it when it is complete.")
        return redirect("access:apply")
    if form.errors:
        return _render_apply(request, form, application, status=400)
    try:
        services.application_submit(application=application, user=request.user, ip=_ip(request))
    except InvalidInput as exc:
        for field, problems in exc.extra.get("fields", {}).items():
            for problem in problems:
                form.add_error(field or None, problem)
        return _render_apply(request, form, application, status=400)
    messages.success(request, "Application submitted. We emailed you a confirmation.")
    return redirect("access:status")


def _render_apply(request, form, application, status: int = 200) -> HttpResponse:
    form.fields["use_case"].help_text = (
        "What will you study with the model, how, and what will you publish? "
        f"At least {services.use_case_min_chars()} characters."
    )
    context = {
        "form": form,
        "application": application,
        "use_case_min_chars": services.use_case_min_chars(),
        "returned_message": application.events.filter(to_state=ApplicationState.RETURNED)
        .values_list("public_message", flat=True)
        .last()
        if application.state == ApplicationState.RETURNED
        else "",
    }
    return render(request, "accounts/apply.html", context, status=status)


@login_required
@require_POST
def withdraw(request: HttpRequest) -> HttpResponse:
    application = selectors.application_latest_for_user(user=request.user)
    if application is None:
        raise NotFound("You have no application to withdraw.")
    services.application_withdraw(application=application, user=request.user)
    messages.success(request, "Your application is withdrawn.")
    return redirect("access:status")


@login_required
@require_POST
def reapply(request: HttpRequest) -> HttpResponse:
    services.application_start(user=request.user)
    return redirect("access:apply")


def _license_version_to_show(user) -> LicenseVersion | None:
    pending = selectors.license_versions_pending(user=user)
    if pending:
        return pending[0]
    license = License.objects.filter(slug=DEFAULT_LICENSE_SLUG).first()
    return selectors.license_current_version(license) if license else None


@require_http_methods(["GET", "POST"])
def license_page(request: HttpRequest) -> HttpResponse:
    """The license, readable by anyone before signing up; accepting it needs an account."""
    if not request.user.is_authenticated:
        if request.method == "POST":
            return redirect_to_login(request.get_full_path())
        license = License.objects.filter(slug=DEFAULT_LICENSE_SLUG).first()
        version = selectors.license_current_version(license) if license else None
        if version is None:
            raise NotFound("No license is published yet.")
        return render(request, "accounts/license.html", {"version": version, "form": None})
    version = _license_version_to_show(request.user)
    if version is None:
        raise NotFound("No license is published yet.")
    form = LicenseAcceptForm(
        request.POST or None,
        initial={"version": version.pk, "typed_name": ""},
    )
    status_code = 200
    if request.method == "POST":
        if form.is_valid():
            chosen = LicenseVersion.objects.filter(pk=form.cleaned_data["version"]).first()
            if chosen is None:
                raise NotFound("There is no such license version.")
            try:
                services.license_accept(
                    user=request.user,
                    version=chosen,
                    typed_name=form.cleaned_data["typed_name"],
                    ip=_ip(request),
                    user_agent=request.headers.get("User-Agent", ""),
                )
            except InvalidInput as exc:
                form.add_error(exc.extra.get("field"), exc.message)
            else:
                messages.success(request, f"You accepted version {chosen.version} of the license.")
                return redirect("access:status")
        status_code = 400
    accepted = request.user.license_acceptances.filter(version=version).first()
    context = {
        "version": version,
        "form": form,
        "accepted": accepted,
        "expected_name": services.user_full_name(request.user),
    }
    return render(request, "accounts/license.html", context, status=status_code)


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenCreateForm(request.POST or None)
    new_key = None
    status_code = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                _, new_key = services.token_create(
                    user=request.user,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_in_days=form.cleaned_data["expires_in_days"],
                )
            except InvalidInput as exc:
                form.add_error(
                    exc.extra.get("field") if exc.extra.get("field") in form.fields else None,
                    exc.message,
                )
                status_code = 400
            else:
                form = TokenCreateForm()
        else:
            status_code = 400
    context = {
        "form": form,
        "new_key": new_key,
        "tokens": selectors.token_list_for_user(user=request.user),
    }
    return render(request, "accounts/tokens.html", context, status=status_code)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = selectors.token_get_for_user(user=request.user, token_id=token_id)
    services.token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token '{token.name}' is revoked.")
    return redirect("access:tokens")
