"""A property-based model of an application's life: random sequences of every action by
applicant and reviewers, checked step by step against a plain-Python model of the rules."""

from __future__ import annotations

import itertools

import pytest
from django.db import transaction
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from accounts import services
from accounts.models import TRANSITIONS, Application, Grant, SizeOutcome
from accounts.selectors import audit_first_broken
from accounts.tests.factories import ReviewerFactory, UserFactory, application_fill
from catalog.models import ModelVariant
from core.errors import Conflict

SIZES = ("7b", "33b")  # one reviewer; two reviewers
UNDECIDED = {SizeOutcome.PENDING, SizeOutcome.AWAITING_SECOND}


class ApplicationLife(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self._atomic = transaction.atomic()
        self._atomic.__enter__()  # each run is rolled back in teardown
        self.user = UserFactory()
        self.reviewers = [ReviewerFactory(), ReviewerFactory()]
        self.variants = {slug: ModelVariant.objects.get(slug=slug) for slug in SIZES}
        self.app = application_fill(self.user, *SIZES, submit=False)
        self.state = "draft"
        self.sizes: dict[str, str] = {}  # slug -> outcome, once submitted
        self.first: dict[str, int] = {}  # slug -> index of the first approver

    def teardown(self):
        transaction.set_rollback(True)
        self._atomic.__exit__(None, None, None)

    # --- the model's own rules ---------------------------------------------------------
    def _settle(self):
        if self.sizes and all(o not in UNDECIDED for o in self.sizes.values()):
            approved = any(o == SizeOutcome.APPROVED for o in self.sizes.values())
            self.state = "approved" if approved else "rejected"

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
        self._expect(
            allowed, lambda: services.application_submit(application=self.app, user=self.user)
        )
        if allowed:
            self.state = "submitted"
            for slug in SIZES:
                self.sizes.setdefault(slug, SizeOutcome.PENDING)

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

    @rule()
    def edit(self):
        allowed = self.state in ("draft", "returned")
        self._expect(
            allowed,
            lambda: services.application_save_draft(
                application=self.app, user=self.user, data={"position": "Professor"}
            ),
        )

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

    @rule(slug=st.sampled_from(SIZES), who=st.integers(0, 1))
    def approve(self, slug, who):
        outcome = self.sizes.get(slug)
        if self.state != "submitted":
            error, allowed = services.InvalidTransition, False
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
            self._settle()

    @rule(slug=st.sampled_from(SIZES), who=st.integers(0, 1))
    def reject(self, slug, who):
        outcome = self.sizes.get(slug)
        if self.state != "submitted":
            error, allowed = services.InvalidTransition, False
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
            self._settle()

    # --- what must always hold -----------------------------------------------------------
    @invariant()
    def database_agrees_with_the_model(self):
        row = Application.objects.get(pk=self.app.pk)
        assert row.state == self.state
        assert {d.variant.slug: d.outcome for d in row.decisions.select_related("variant")} == (
            self.sizes
        )
        approved = {s for s, o in self.sizes.items() if o == SizeOutcome.APPROVED}
        granted = set(Grant.objects.filter(application=row).values_list("variant__slug", flat=True))
        assert granted == approved

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
def test_random_lives_of_an_application_follow_the_rules():
    run_state_machine_as_test(
        ApplicationLife,
        settings=settings(
            max_examples=25,
            stateful_step_count=12,
            deadline=None,
            database=None,  # no example files in the working tree; the runs are small anyway
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert audit_first_broken() is None
