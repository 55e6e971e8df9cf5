from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.urls import reverse
from django.utils import timezone
from django_countries.fields import CountryField


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        email = self.normalize_email(email).lower()
        user = self.model(email=email, **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email: str, password: str | None = None, **extra_fields):
        extra_fields.setdefault("is_staff", True)
        extra_fields.setdefault("is_superuser", True)
        if not extra_fields["is_staff"] or not extra_fields["is_superuser"]:
            raise ValueError("A superuser must have is_staff and is_superuser set.")
        return self._create_user(email, password, **extra_fields)

    def get_by_natural_key(self, username: str):
        # Logins are case-insensitive on the email address.
        return self.get(email__iexact=username)


class User(AbstractUser):
    """A person with an account. The email address is the login; there is no username."""

    username = None
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    @property
    def display_name(self) -> str:
        return self.get_full_name() or self.email


# --- License acceptance (the licenses themselves are in the catalog) -----------------


class LicenseAcceptance(models.Model):
    """A person's acceptance of one license version: the record a dispute would look at."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="license_acceptances"
    )
    version = models.ForeignKey(
        "catalog.LicenseVersion", on_delete=models.PROTECT, related_name="acceptances"
    )
    text_sha256 = models.CharField(max_length=64)
    typed_name = models.CharField(max_length=200)
    accepted_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.TextField(blank=True)

    class Meta:
        ordering = ["-accepted_at"]
        constraints = [
            models.UniqueConstraint(fields=["user", "version"], name="acceptance_once_per_version")
        ]

    def __str__(self) -> str:
        return f"{self.user} accepted {self.version}"


# --- Applications ------------------------------------------------------------------------


class OrganizationType(models.TextChoices):
    ACADEMIC = "academic", "Academic"
    GOVERNMENT = "government", "Government"
    CIVIL_SOCIETY = "civil_society", "Civil society"
    INDUSTRY_LAB = "industry_lab", "Industry research lab"
    OTHER = "other", "Other"


class ApplicationState(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted, waiting for review"
    RETURNED = "returned", "Returned for changes"
    APPROVED = "approved", "Decided: approved"
    REJECTED = "rejected", "Decided: rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


S = ApplicationState
# The only allowed moves of an application. Every service that changes `state` checks here.
TRANSITIONS: dict[str, frozenset[str]] = {
    S.DRAFT: frozenset({S.SUBMITTED, S.WITHDRAWN}),
    S.SUBMITTED: frozenset({S.RETURNED, S.APPROVED, S.REJECTED, S.WITHDRAWN}),
    S.RETURNED: frozenset({S.SUBMITTED, S.WITHDRAWN}),
    S.APPROVED: frozenset(),
    S.REJECTED: frozenset(),
    S.WITHDRAWN: frozenset(),
}
OPEN_STATES = frozenset({S.DRAFT, S.SUBMITTED, S.RETURNED})
PENDING_STATES = frozenset({S.SUBMITTED, S.RETURNED})
FINAL_STATES = frozenset({S.APPROVED, S.REJECTED, S.WITHDRAWN})
del S


class Application(models.Model):
    """A request for access to one or more model sizes, decided size by size."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="applications"
    )
    state = models.CharField(
        max_length=16, choices=ApplicationState.choices, default=ApplicationState.DRAFT
    )
    previous = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="followups",
        help_text="The earlier application this one re-applies after",
    )
    full_name = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True, help_text="The verified address at submission")
    affiliation = models.CharField(max_length=300, blank=True)
    organization_type = models.CharField(
        max_length=16, choices=OrganizationType.choices, blank=True
    )
    country = CountryField(blank=True)
    position = models.CharField(max_length=200, blank=True)
    is_student = models.BooleanField(default=False)
    supervisor_name = models.CharField(max_length=200, blank=True)
    supervisor_email = models.EmailField(blank=True)
    orcid = models.CharField("ORCID iD", max_length=19, blank=True)
    web_page = models.URLField("institutional web page", max_length=500, blank=True)
    publications = models.TextField("relevant publications", blank=True)
    use_case = models.TextField("intended research use", blank=True)
    requested_variants = models.ManyToManyField(
        "catalog.ModelVariant", blank=True, related_name="+"
    )
    submitted_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(
        null=True, blank=True, help_text="First submission: the queue's order"
    )
    last_submitted_at = models.DateTimeField(null=True, blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "submitted_at"], name="application_queue_idx")]
        constraints = [
            # One open application per person: a second would split one review in two.
            models.UniqueConstraint(
                fields=["user"],
                condition=models.Q(state__in=["draft", "submitted", "returned"]),
                name="application_one_open_per_user",
            )
        ]

    def __str__(self) -> str:
        return f"Application #{self.pk} by {self.user}"

    def get_absolute_url(self) -> str:
        return reverse("access:status")

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    def can_move_to(self, state: str) -> bool:
        return state in TRANSITIONS[self.state]


class ApplicationEvent(models.Model):
    """One row per change of an application: a state move or a decision on one size."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty for the system (automatic approval, expiry)",
    )
    from_state = models.CharField(max_length=16, choices=ApplicationState.choices, blank=True)
    to_state = models.CharField(max_length=16, choices=ApplicationState.choices)
    variant = models.ForeignKey(
        "catalog.ModelVariant",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Set when the event is a decision on one size",
    )
    public_message = models.TextField(blank=True, help_text="Shown to the applicant")
    internal_note = models.TextField(blank=True, help_text="Never shown to the applicant")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.application_id}: {self.from_state or '-'} -> {self.to_state}"


class SizeOutcome(models.TextChoices):
    PENDING = "pending", "Waiting for review"
    AWAITING_SECOND = "awaiting_second", "Approved once, waiting for a second reviewer"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    WITHDRAWN = "withdrawn", "Withdrawn"


_O = SizeOutcome
# The only allowed moves of one size's decision. A first approval of a two-reviewer size is
# voided (back to pending) when the application goes back to its author: the second
# reviewer must approve the text as it is now, together with a new first approval.
SIZE_TRANSITIONS: dict[str, frozenset[str]] = {
    _O.PENDING: frozenset({_O.AWAITING_SECOND, _O.APPROVED, _O.REJECTED, _O.WITHDRAWN}),
    _O.AWAITING_SECOND: frozenset({_O.PENDING, _O.APPROVED, _O.REJECTED, _O.WITHDRAWN}),
    _O.APPROVED: frozenset(),
    _O.REJECTED: frozenset(),
    _O.WITHDRAWN: frozenset(),
}
UNDECIDED_OUTCOMES = frozenset({_O.PENDING, _O.AWAITING_SECOND})
del _O


class SizeDecision(models.Model):
    """The decision on one requested model size of an application."""

    application = models.ForeignKey(Application, on_delete=models.CASCADE, related_name="decisions")
    variant = models.ForeignKey("catalog.ModelVariant", on_delete=models.PROTECT, related_name="+")
    outcome = models.CharField(
        max_length=16, choices=SizeOutcome.choices, default=SizeOutcome.PENDING
    )
    reason = models.TextField(blank=True, help_text="Shown to the applicant on rejection")
    first_approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    first_approved_at = models.DateTimeField(null=True, blank=True)
    first_ends_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["application", "variant__position"]
        constraints = [
            models.UniqueConstraint(
                fields=["application", "variant"], name="size_decision_once_per_size"
            )
        ]

    def __str__(self) -> str:
        return f"{self.application_id} {self.variant_id}: {self.outcome}"

    @property
    def is_undecided(self) -> bool:
        return self.outcome in UNDECIDED_OUTCOMES


# --- Grants ------------------------------------------------------------------------------


class GrantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"
    EXPIRED = "expired", "Expired"


GRANT_TRANSITIONS: dict[str, frozenset[str]] = {
    GrantStatus.ACTIVE: frozenset({GrantStatus.REVOKED, GrantStatus.EXPIRED}),
    GrantStatus.REVOKED: frozenset(),
    GrantStatus.EXPIRED: frozenset(),
}


class Grant(models.Model):
    """Permission for one person to use one model size between two dates."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="grants"
    )
    variant = models.ForeignKey(
        "catalog.ModelVariant", on_delete=models.PROTECT, related_name="grants"
    )
    application = models.ForeignKey(
        Application, null=True, blank=True, on_delete=models.SET_NULL, related_name="grants"
    )
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    status = models.CharField(
        max_length=16, choices=GrantStatus.choices, default=GrantStatus.ACTIVE
    )
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoke_reason = models.TextField(blank=True)
    expiry_notified_at = models.DateTimeField(
        null=True, blank=True, help_text="When the 'expiring soon' email went out"
    )

    class Meta:
        ordering = ["-starts_at"]
        indexes = [models.Index(fields=["status", "ends_at"], name="grant_status_ends_idx")]
        constraints = [
            # At most one active grant per person and size: a renewal extends it.
            models.UniqueConstraint(
                fields=["user", "variant"],
                condition=models.Q(status="active"),
                name="grant_one_active_per_size",
            )
        ]

    def __str__(self) -> str:
        return f"{self.user} -> {self.variant} ({self.status})"

    def is_live(self, at: datetime | None = None) -> bool:
        at = at or timezone.now()
        return self.status == GrantStatus.ACTIVE and self.starts_at <= at < self.ends_at


# --- Personal access tokens --------------------------------------------------------------

TOKEN_PREFIX = "llp_"  # noqa: S105 (a marker, not a secret)


class TokenScope(models.TextChoices):
    DOWNLOAD = "download", "Download weights"
    GENERATE = "generate", "Run generation jobs"


class AccessToken(models.Model):
    """A personal access token. Only a SHA-256 of the key is stored; the key is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(
        max_length=16, unique=True, help_text="The key's first characters: lookup and display"
    )
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}...)"

    def has_scope(self, scope: str) -> bool:
        return scope in (self.scopes or [])

    def is_usable(self, at: datetime | None = None) -> bool:
        at = at or timezone.now()
        return self.revoked_at is None and at < self.expires_at


# --- Audit log ---------------------------------------------------------------------------


AUDIT_GENESIS = "0" * 64


class AuditEntry(models.Model):
    """An append-only, hash-chained record of a security-relevant action.

    `hash` is an HMAC (keyed by `settings.AUDIT_KEYS`, which the database never holds) over
    every field of the entry and the previous entry's hash, so editing, removing or
    re-chaining rows is found by `manage.py verify_audit`, and so is cutting the chain's tail
    (its head is anchored in S3 and the log). On PostgreSQL a trigger refuses UPDATE and
    DELETE (migration 0006). Entries written before the keyed hash have an empty `key_id`
    and a plain SHA-256 over fewer fields; they may only precede the keyed ones.
    """

    seq = models.PositiveBigIntegerField(unique=True, help_text="Position in the chain, from 1")
    created_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The actor's id and email as they were: the chain must not change when a user is deleted.
    actor_ref = models.CharField(max_length=300, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=300, blank=True)
    data = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    key_id = models.CharField(
        max_length=64, blank=True, help_text="Which AUDIT_KEYS key signed it (empty: legacy)"
    )
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["seq"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.target}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("Audit entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Audit entries are append-only.")

    def compute_hash(self, key: bytes | None) -> str:
        """The entry's hash: HMAC-SHA256 with `key` over every field, or (key None) the
        legacy plain SHA-256 of the entries written before the keyed hash."""
        content = {
            "prev": self.prev_hash,
            "at": self.created_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "actor": self.actor_ref,
            "action": self.action,
            "target": self.target,
            "data": self.data,
            "ip": self.ip or "",
        }
        if key is None:
            canonical = json.dumps(
                content, sort_keys=True, separators=(",", ":"), ensure_ascii=True
            )
            return hashlib.sha256(canonical.encode()).hexdigest()
        # The actor link is not hashed: it becomes NULL when the account is deleted. The hashed
        # actor_ref names who it was, and verification requires the link to agree with it.
        content.update({"seq": self.seq, "key_id": self.key_id})
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
