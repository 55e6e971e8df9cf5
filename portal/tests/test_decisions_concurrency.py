"""Two reviewers (and a double-submitted form) deciding one application at the same moment,
on PostgreSQL: one decision wins, every other answer is a 409 that says why.

(`test_sqlite_concurrency.py` checks the same on the embedded SQLite database.)
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from django.test import Client


def _reject(reviewer, application_id: int, start: threading.Barrier, answers: list) -> None:
    client = Client()
    client.force_login(reviewer)
    try:
        start.wait()
        response = client.post(
            f"/review/applications/{application_id}/reject/",
            {"size": "7b", "reason": "Not a research use.", "confirmed": "1"},
        )
        answers.append((response.status_code, response.content.decode()))
    finally:
        connections.close_all()  # this thread's own connection


@pytest.mark.django_db(transaction=True)
def test_one_of_four_simultaneous_rejections_wins_and_the_others_get_409(
    applicant, reviewer, second_reviewer
):
    application = applicant.applications.get()
    deciders = [reviewer, reviewer, second_reviewer, second_reviewer]
    start = threading.Barrier(len(deciders))
    answers: list[tuple[int, str]] = []
    threads = [
        threading.Thread(target=_reject, args=(who, application.pk, start, answers))
        for who in deciders
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    statuses = sorted(status for status, _ in answers)
    assert statuses == [302, 409, 409, 409], [(s, b[:300]) for s, b in answers]
    for status, body in answers:
        if status == 409:
            message = body.split('class="error-message">', 1)[1].split("<", 1)[0]
            assert message.strip()
    application.refresh_from_db()
    assert application.decisions.filter(outcome="rejected").count() == 1
