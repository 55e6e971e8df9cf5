"""Review console render times with 100,000 applications (prints, asserts nothing).

    .venv/bin/python bench/review_console.py [--applications 100000] [--runs 30]
        [--db-name bench_review_console] [--keep]

Creates a scratch PostgreSQL database (same server as DATABASE_URL, or 127.0.0.1 as
postgres), migrates it, fills it with bulk_create (applications with their size decisions,
events, flags, claims and grants), then renders through Django's test client, signed in as
a reviewer:

- the queue (default view, oldest first, 25 rows), the queue with filters and a search,
  the queue at 100 rows a page,
- the detail page of pending applications (a different one each run),
- the dashboard (a few runs: it aggregates the whole history),

and prints the median and 95th percentile render time and the queries of each. The
database is dropped at the end unless --keep.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 5000


def admin_connection():
    import psycopg

    return psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True)


def create_database(name: str) -> None:
    with admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def configure(name: str) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "portal.settings",
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
            "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY", "bench-only-" + "x" * 40),
            "DJANGO_DEBUG": "0",
            "DJANGO_ALLOWED_HOSTS": "testserver,localhost",
            "DJANGO_SECURE_SSL_REDIRECT": "0",
            "DJANGO_SESSION_COOKIE_SECURE": "0",
            "DJANGO_CSRF_COOKIE_SECURE": "0",
            "DJANGO_STATICFILES_MANIFEST": "0",
            "DJANGO_LOG_LEVEL": "ERROR",
            "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        }
    )
    import django

    django.setup()


def fill(n: int, seed: int = 7) -> dict:
    """n applications by n people, 20 % waiting in the queue, spread over two years."""
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django.db import connection
    from django.utils import timezone

    from accounts.models import (
        Application,
        ApplicationEvent,
        Grant,
        OrganizationType,
        SizeDecision,
        User,
    )
    from accounts.selectors import REVIEWER_GROUP
    from catalog.models import ModelVariant
    from review.models import Claim, Flag, FlagCode, InternalNote

    rng = random.Random(seed)
    now = timezone.now()
    password = make_password("bench-password-123456")
    sizes = list(ModelVariant.objects.exclude(slug="demo").order_by("position"))
    reviewers = []
    group, _ = Group.objects.get_or_create(name=REVIEWER_GROUP)
    for i in range(5):
        user = User.objects.create_user(
            email=f"reviewer{i}@portal.example.org", password=None, is_staff=True
        )
        user.groups.add(group)
        reviewers.append(user)

    t0 = time.perf_counter()
    User.objects.bulk_create(
        [
            User(
                email=f"person{i}@lab{i % 900}.example.edu",
                first_name=f"First{i}",
                last_name=f"Last{i}",
                password=password,
            )
            for i in range(n)
        ],
        batch_size=BATCH,
    )
    user_ids = list(
        User.objects.filter(email__startswith="person").order_by("pk").values_list("pk", flat=True)
    )
    org_types = [c for c, _ in OrganizationType.choices]
    countries = ["US", "GB", "DE", "FR", "NL", "IN", "CN", "BR", "CA", "JP", "KR", "IT", "ES"]
    states = ["submitted"] * 18 + ["returned"] * 2 + ["approved"] * 55 + ["rejected"] * 20
    states += ["withdrawn"] * 5
    apps = []
    for i, uid in enumerate(user_ids):
        state = rng.choice(states)
        if state in ("submitted", "returned"):
            submitted = now - timedelta(days=rng.uniform(0, 30))
        else:
            submitted = now - timedelta(days=rng.uniform(5, 730))
        decided = (
            submitted + timedelta(days=rng.uniform(0.2, 20))
            if state in ("approved", "rejected")
            else None
        )
        apps.append(
            Application(
                user_id=uid,
                state=state,
                full_name=f"First{i} Last{i}",
                email=f"person{i}@lab{i % 900}.example.edu",
                affiliation=f"Laboratory {i % 900} of Examples",
                organization_type=rng.choice(org_types),
                country=rng.choice(countries),
                position="Researcher",
                orcid="0000-0002-1825-0097",
                web_page=f"https://lab{i % 900}.example.edu/people/{i}",
                publications="Some papers.",
                use_case=(
                    f"Study {i}: we evaluate model size against task accuracy on benchmark "
                    f"{i % 97} and publish the code; keywords topic{i % 313} method{i % 41}. "
                )
                * 3,
                submitted_ip=f"10.{i % 250}.{(i // 250) % 250}.{i % 7}",
                submitted_at=submitted,
                last_submitted_at=submitted,
                decided_at=decided,
            )
        )
    Application.objects.bulk_create(apps, batch_size=BATCH)
    apps = list(
        Application.objects.order_by("pk").only(
            "pk", "user_id", "state", "submitted_at", "decided_at"
        )
    )

    decisions, events, flags, claims, grants, notes = [], [], [], [], [], []
    flag_codes = [c for c, _ in FlagCode.choices]
    for app in apps:
        chosen = rng.sample(sizes, rng.randint(1, 3))
        when = app.submitted_at
        events.append(
            ApplicationEvent(
                application_id=app.pk,
                actor_id=app.user_id,
                from_state="",
                to_state="draft",
                created_at=when - timedelta(hours=1),
            )
        )
        events.append(
            ApplicationEvent(
                application_id=app.pk,
                actor_id=app.user_id,
                from_state="draft",
                to_state="submitted",
                public_message="Application received.",
                created_at=when,
            )
        )
        reviewer = rng.choice(reviewers)
        for variant in chosen:
            if app.state == "approved":
                outcome = "approved"
            elif app.state == "rejected":
                outcome = "rejected"
            elif app.state == "withdrawn":
                outcome = "withdrawn"
            else:
                outcome = "pending"
            decided = app.decided_at
            decisions.append(
                SizeDecision(
                    application_id=app.pk,
                    variant=variant,
                    outcome=outcome,
                    reason="Not research use." if outcome == "rejected" else "",
                    decided_by=reviewer if decided else None,
                    decided_at=decided,
                )
            )
            if decided:
                events.append(
                    ApplicationEvent(
                        application_id=app.pk,
                        actor=reviewer,
                        from_state="submitted",
                        to_state="submitted",
                        variant=variant,
                        created_at=decided,
                        public_message=f"{variant} {outcome}.",
                    )
                )
            if outcome == "approved":
                grants.append(
                    Grant(
                        user_id=app.user_id,
                        variant=variant,
                        application_id=app.pk,
                        starts_at=decided,
                        ends_at=decided + timedelta(days=365),
                        status="active" if decided + timedelta(days=365) > now else "expired",
                    )
                )
        if app.decided_at:
            events.append(
                ApplicationEvent(
                    application_id=app.pk,
                    actor=reviewer,
                    from_state="submitted",
                    to_state=app.state,
                    created_at=app.decided_at,
                )
            )
        elif app.state == "withdrawn":
            events.append(
                ApplicationEvent(
                    application_id=app.pk,
                    actor_id=app.user_id,
                    from_state="submitted",
                    to_state="withdrawn",
                    created_at=app.submitted_at + timedelta(days=2),
                )
            )
        elif app.state == "returned":
            events.append(
                ApplicationEvent(
                    application_id=app.pk,
                    actor=reviewer,
                    from_state="submitted",
                    to_state="returned",
                    public_message="Please describe more.",
                    created_at=app.submitted_at + timedelta(days=1),
                )
            )
        if rng.random() < 0.3:
            for code in rng.sample(flag_codes, rng.randint(1, 2)):
                flags.append(Flag(application_id=app.pk, code=code, detail=f"{code} seen"))
        if app.state in ("submitted", "returned"):
            if rng.random() < 0.3:
                claims.append(Claim(application_id=app.pk, reviewer=reviewer))
            if rng.random() < 0.2:
                notes.append(InternalNote(application_id=app.pk, author=reviewer, text="Checked."))
    for model, rows in (
        (SizeDecision, decisions),
        (ApplicationEvent, events),
        (Flag, flags),
        (Claim, claims),
        (Grant, grants),
        (InternalNote, notes),
    ):
        model.objects.bulk_create(rows, batch_size=BATCH)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {
        "seconds": time.perf_counter() - t0,
        "applications": len(apps),
        "decisions": len(decisions),
        "events": len(events),
        "flags": len(flags),
        "claims": len(claims),
        "grants": len(grants),
        "reviewer": reviewers[0],
        "pending": [a.pk for a in apps if a.state in ("submitted", "returned")],
    }


def measure(client, url: str, runs: int) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):  # warm caches: templates, the connection, PostgreSQL's buffers
        assert client.get(url).status_code == 200, url
    times = []
    queries = 0
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, url
        queries = len(captured)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times), p95, queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--applications", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--db-name", default="bench_review_console")
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()

    create_database(args.db_name)
    try:
        configure(args.db_name)
        from django.core.management import call_command
        from django.test import Client

        t0 = time.perf_counter()
        call_command("migrate", verbosity=0)
        print(f"migrated in {time.perf_counter() - t0:.1f} s")
        data = fill(args.applications)
        print(
            f"filled in {data['seconds']:.1f} s: {data['applications']} applications, "
            f"{data['decisions']} size decisions, {data['events']} events, {data['flags']} "
            f"flags, {data['claims']} claims, {data['grants']} grants; "
            f"{len(data['pending'])} in the queue"
        )
        client = Client()
        client.force_login(data["reviewer"])
        rng = random.Random(11)
        pages = [
            ("queue (25 rows, oldest first)", "/review/", args.runs),
            ("queue (100 rows)", "/review/?per_page=100", args.runs),
            (
                "queue (filters + search)",
                "/review/?state=submitted&flag=any&size=13b&organization_type=academic"
                "&q=benchmark+5&order=newest",
                args.runs,
            ),
            ("queue (page 200)", "/review/?page=200", args.runs),
        ]
        print(f"\n{'page':40} {'median ms':>10} {'p95 ms':>9} {'queries':>8}")
        for label, url, runs in pages:
            median, p95, queries = measure(client, url, runs)
            print(f"{label:40} {median:10.1f} {p95:9.1f} {queries:8d}")
        # The detail page: a different pending application each run.
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        ids = rng.sample(data["pending"], args.runs + 3)
        times, queries = [], set()
        for i, pk in enumerate(ids):
            with CaptureQueriesContext(connection) as captured:
                start = time.perf_counter()
                response = client.get(f"/review/applications/{pk}/")
                elapsed = (time.perf_counter() - start) * 1000
            assert response.status_code == 200
            if i >= 3:
                times.append(elapsed)
                queries.add(len(captured))
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        print(
            f"{'detail (random pending application)':40} {statistics.median(times):10.1f} "
            f"{p95:9.1f} {'/'.join(map(str, sorted(queries))):>8}"
        )
        median, p95, q = measure(client, "/review/dashboard/", max(5, args.runs // 5))
        print(f"{'dashboard (12 weeks)':40} {median:10.1f} {p95:9.1f} {q:8d}")
    finally:
        from django.db import connections

        connections.close_all()
        if args.keep:
            print(f"kept database {args.db_name}")
        else:
            drop_database(args.db_name)
            print(f"dropped database {args.db_name}")


if __name__ == "__main__":
    main()
