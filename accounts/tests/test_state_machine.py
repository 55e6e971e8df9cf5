"""A property-based model of a researcher's life with the portal: random sequences of every
action by the applicant and two reviewers (edit and untick sizes, submit, return, resubmit,
approve, reject, withdraw, revoke, apply again, new license versions and their acceptance),
checked step by step against a plain-Python model of the rules.

After every step, besides the model agreeing with the database: every grant in force passes
`grant_problems` (the one statement of what justifies a grant), and `access_check` lets the
researcher in exactly when a grant is in force and the license in force is accepted.
"""

from __future__ import annotations

import itertools

import pytest
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from accounts import services
from accounts.models import TRANSITIONS, Application, Grant, GrantStatus, SizeOutcome
from accounts.selectors import (
    access_check,
    audit_first_broken,
    grant_problems,
    license_current_version,
    license_for_variant,
)
from accounts.tests.factories import USE_CASE, ReviewerFactory, UserFactory, application_fill
from catalog.models import ModelVariant
from core.errors import Conflict, InvalidInput

# One reviewer; two reviewers; automatic (approved on submission for a clean history).
SIZES = ("7b", "33b", "demo")
UNDECIDED = {SizeOutcome.PENDING, SizeOutcome.AWAITING_SECOND}
FINAL = {"approved", "rejected", "withdrawn"}


class ResearcherLife(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()  # each run is rolled back in teardown
        self.user = UserFactory()
        self.reviewers = [ReviewerFactory(), ReviewerFactory()]
        self.variants = {slug: ModelVariant.objects.get(slug=slug) for slug in SIZES}
        self.license = license_for_variant(self.variants["7b"])
        self.app = application_fill(self.user, *SIZES, submit=False)
        self.state = "draft"
        self.requested: set[str] = set(SIZES)
        self.sizes: dict[str, str] = {}  # slug -> outcome in the current application
        self.first: dict[str, int] = {}  # slug -> index of the first approver
        self.active: dict[str, int] = {}  # slug -> pk of the application whose grant is live
        self.refused = False  # a rejection, or access revoked by a reviewer, ever
        self.accepted = False  # the license version in force is accepted

    def teardown(self):
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # --- the model's own rules ---------------------------------------------------------
    def _settle(self):
        if self.sizes and all(o not in UNDECIDED for o in self.sizes.values()):
            approved = any(o == SizeOutcome.APPROVED for o in self.sizes.values())
            self.state = "approved" if approved else "rejected"

    def _grant(self, slug):
        self.active.setdefault(slug, self.app.pk)  # a live grant is extended, not replaced

    def _expect(self, allowed: bool, action, error=services.InvalidTransition):
        if allowed:
            action()
        else:
            with pytest.raises(error):
                action()

    # --- the applicant -----------------------------------------------------------------
    @rule()
    def submit(self):
        allowed = "submitted" in TRANSITIONS[self.state]
        error = services.InvalidTransition
        if allowed and not self.requested:
            allowed, error = False, InvalidInput  # at least one size
        self._expect(
            allowed,
            lambda: services.application_submit(application=self.app, user=self.user),
            error=error,
        )
        if not allowed:
            return
        self.state = "submitted"
        for slug in list(self.sizes):
            if self.sizes[slug] == SizeOutcome.AWAITING_SECOND:
                self.sizes[slug] = SizeOutcome.PENDING  # a new text voids first approvals
                self.first.pop(slug, None)
            if slug not in self.requested and self.sizes[slug] in UNDECIDED:
                del self.sizes[slug]  # no longer requested: never decided, never granted
        for slug in self.requested:
            self.sizes.setdefault(slug, SizeOutcome.PENDING)
        if self.sizes.get("demo") == SizeOutcome.PENDING and not self.refused:
            self.sizes["demo"] = SizeOutcome.APPROVED
            self._grant("demo")
        self._settle()

    @rule(slug=st.sampled_from(SIZES))
    def toggle_size(self, slug):
        allowed = self.state in ("draft", "returned")
        wanted = self.requested ^ {slug}
        self._expect(
            allowed,
            lambda: services.application_save_draft(
                application=self.app,
                user=self.user,
                data={"position": "Professor"},
                variants=[self.variants[s] for s in wanted],
            ),
        )
        if allowed:
            self.requested = wanted

    @rule()
    def withdraw(self):
        allowed = "withdrawn" in TRANSITIONS[self.state]
        self._expect(
            allowed, lambda: services.application_withdraw(application=self.app, user=self.user)
        )
        if allowed:
            self.state = "withdrawn"
            for slug, outcome in self.sizes.items():
                if outcome in UNDECIDED:
                    self.sizes[slug] = SizeOutcome.WITHDRAWN
            for slug, app_pk in list(self.active.items()):
                if app_pk == self.app.pk:
                    del self.active[slug]  # its grants end with it (not a refusal)

    @precondition(lambda self: self.state in FINAL)
    @rule()
    def apply_again(self):
        self.app = services.application_start(user=self.user)
        services.application_save_draft(
            application=self.app,
            user=self.user,
            data={"use_case": USE_CASE},
            variants=list(self.variants.values()),
        )
        self.state, self.requested, self.sizes, self.first = "draft", set(SIZES), {}, {}

    @rule()
    def accept_license(self):
        version = license_current_version(self.license)
        services.license_accept(
            user=self.user, version=version, typed_name=services.user_full_name(self.user)
        )
        self.accepted = True

    # --- the reviewers -----------------------------------------------------------------
    @rule(who=st.integers(0, 1))
    def return_for_changes(self, who):
        allowed = "returned" in TRANSITIONS[self.state]
        self._expect(
            allowed,
            lambda: services.application_return(
                application=self.app, reviewer=self.reviewers[who], message="Change it."
            ),
        )
        if allowed:
            self.state = "returned"
            for slug, outcome in self.sizes.items():
                if outcome == SizeOutcome.AWAITING_SECOND:
                    self.sizes[slug] = SizeOutcome.PENDING
                    self.first.pop(slug, None)

    @rule(slug=st.sampled_from(SIZES), who=st.integers(0, 1))
    def approve(self, slug, who):
        outcome = self.sizes.get(slug)
        if self.state != "submitted":
            error, allowed = services.InvalidTransition, False
        elif outcome is None:
            error, allowed = InvalidInput, False  # not requested
        elif outcome not in UNDECIDED or self.first.get(slug) == who:
            error, allowed = Conflict, False
        else:
            error, allowed = None, True
        self._expect(
            allowed,
            lambda: services.application_approve(
                application=self.app, reviewer=self.reviewers[who], variants=[self.variants[slug]]
            ),
            error=error,
        )
        if allowed:
            if slug == "33b" and outcome == SizeOutcome.PENDING:
                self.sizes[slug] = SizeOutcome.AWAITING_SECOND
                self.first[slug] = who
            else:
                self.sizes[slug] = SizeOutcome.APPROVED
                self._grant(slug)
            self._settle()

    @rule(slug=st.sampled_from(SIZES), who=st.integers(0, 1))
    def reject(self, slug, who):
        outcome = self.sizes.get(slug)
        if self.state != "submitted":
            error, allowed = services.InvalidTransition, False
        elif outcome is None:
            error, allowed = InvalidInput, False
        elif outcome not in UNDECIDED:
            error, allowed = Conflict, False
        else:
            error, allowed = None, True
        self._expect(
            allowed,
            lambda: services.application_reject(
                application=self.app,
                reviewer=self.reviewers[who],
                variants=[self.variants[slug]],
                reason="No.",
            ),
            error=error,
        )
        if allowed:
            self.sizes[slug] = SizeOutcome.REJECTED
            self.refused = True
            self._settle()

    @precondition(lambda self: bool(self.active))
    @rule(data=st.data())
    def revoke(self, data):
        slug = data.draw(st.sampled_from(sorted(self.active)))
        grant = Grant.objects.get(
            user=self.user, variant=self.variants[slug], status=GrantStatus.ACTIVE
        )
        services.grant_revoke(grant=grant, actor=self.reviewers[0], reason="Broke the terms.")
        del self.active[slug]
        self.refused = True

    @rule()
    def publish_license_version(self):
        services.license_publish_version(
            license=self.license, title="Amended", text=f"Amended terms {self.license.pk}."
        )
        self.accepted = False

    # --- what must always hold -----------------------------------------------------------
    @invariant()
    def database_agrees_with_the_model(self):
        row = Application.objects.get(pk=self.app.pk)
        assert row.state == self.state
        assert {d.variant.slug: d.outcome for d in row.decisions.select_related("variant")} == (
            self.sizes
        )
        live = Grant.objects.filter(user=self.user, status=GrantStatus.ACTIVE)
        assert dict(live.values_list("variant__slug", "application_id")) == self.active

    @invariant()
    def every_grant_in_force_is_justified(self):
        for grant in Grant.objects.filter(status=GrantStatus.ACTIVE).select_related(
            "application", "variant", "user"
        ):
            assert grant_problems(grant) == [], (grant, grant_problems(grant))

    @invariant()
    def access_follows_grants_and_the_license(self):
        for slug, variant in self.variants.items():
            decision = access_check(user=self.user, variant=variant, purpose="download")
            expected = slug in self.active and self.accepted and variant.is_published
            assert decision.allowed == expected, (slug, decision)

    @invariant()
    def every_state_change_has_its_event(self):
        moves = [
            (e.from_state, e.to_state)
            for e in self.app.events.order_by("id")
            if e.from_state != e.to_state
        ]
        for (_, to_a), (from_b, _) in itertools.pairwise(moves):
            assert to_a == from_b  # the events chain without gaps
        assert moves[-1][1] == self.state


@pytest.mark.django_db
def test_random_lives_of_a_researcher_keep_every_grant_justified():
    run_state_machine_as_test(
        ResearcherLife,
        settings=settings(
            max_examples=40,
            stateful_step_count=16,
            deadline=None,
            database=None,  # no example files in the working tree; the runs are small anyway
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert audit_first_broken() is None
