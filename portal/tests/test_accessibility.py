"""axe-core (shipped by `axe-playwright-python`, no network) on every main page in headless
Chromium: no serious or critical violation. Each page is seen as the person who uses it, in
the state with the most on it (files listed, forms to fill, a file to review)."""

from __future__ import annotations

import json

import pytest
from axe_playwright_python.sync_playwright import Axe

from accounts.models import Application
from accounts.tests.factories import CAST_PASSWORD
from portal.tests.browser import open_page, sign_in

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
]

BLOCKING = {"serious", "critical"}
# Swagger UI's own widgets (the drf-spectacular-sidecar bundle), not markup of ours: its
# method badges, version stamp and Authorize button fall short of contrast, and each
# operation's summary nests buttons. Only these rules, only on that page.
THIRD_PARTY = {"api docs": {"color-contrast", "nested-interactive"}}

# name, who looks (a cast fixture, or None: signed out), path (`{application}`: the
# applicant's application)
PAGES = [
    ("home", None, "/"),
    ("models", None, "/models/"),
    ("model page", "researcher", "/models/7b/"),
    ("license", "outsider", "/access/license/"),
    ("apply", "outsider", "/access/apply/"),
    ("access status", "researcher", "/access/"),
    ("tokens", "researcher", "/access/tokens/"),
    ("playground", "researcher", "/playground/"),
    ("review queue", "reviewer", "/review/"),
    ("review detail", "reviewer", "/review/applications/{application}/"),
    ("api docs", "researcher", "/api/v1/docs/"),
]


@pytest.fixture
def published_7b(s3, tmp_path_factory, transactional_db):
    from catalog.models import ModelVariant
    from weights.services import variant_publish
    from weights.tests.checkpoints import write_checkpoint

    variant = ModelVariant.objects.get(slug="7b")
    directory = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "7B", variant)
    variant_publish(variant=variant, directory=directory)
    return variant


def report(violations: list[dict]) -> str:
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        lines.extend(f"    {node['target']} {node['html'][:160]}" for node in v["nodes"][:5])
    return "\n".join(lines)


@pytest.mark.parametrize(("name", "who", "path"), PAGES, ids=[p[0] for p in PAGES])
def test_the_page_has_no_serious_accessibility_violation(
    name, who, path, request, live_server, browser, applicant, published_7b, tmp_path
):
    base = live_server.url
    page, _csp_errors = open_page(browser, timeout_ms=60_000)
    if who is not None:
        user = request.getfixturevalue(who)
        sign_in(page, base, user.email, CAST_PASSWORD)
    application = Application.objects.get(user=applicant)
    url = base + path.format(application=application.pk)
    response = page.goto(url)
    assert response.status == 200, (url, response.status)
    page.wait_for_load_state("networkidle")
    if name == "api docs":
        page.get_by_text("/api/v1/jobs/{job_id}/cancel").first.wait_for()

    results = Axe().run(page)

    violations = results.response["violations"]
    (tmp_path / "axe.json").write_text(json.dumps(violations, indent=2))
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    print(f"\naxe {name}: {len(violations)} violation(s)\n{report(violations)}")
    known = THIRD_PARTY.get(name, set())
    blocking = [v for v in violations if v["impact"] in BLOCKING and v["id"] not in known]
    assert not blocking, f"{name} ({url}):\n{report(blocking)}"


NARROW_PAGES = [p for p in PAGES if p[0] in ("model page", "review queue", "review detail")]


@pytest.mark.parametrize(("name", "who", "path"), NARROW_PAGES, ids=[p[0] for p in NARROW_PAGES])
def test_the_page_fits_a_390_pixel_wide_screen(
    name, who, path, request, live_server, browser, applicant, published_7b
):
    """Tables on the model page and in the console scroll inside themselves on a phone;
    the page itself never scrolls sideways."""
    base = live_server.url
    page, _csp_errors = open_page(browser, timeout_ms=60_000)
    user = request.getfixturevalue(who)
    sign_in(page, base, user.email, CAST_PASSWORD)
    page.set_viewport_size({"width": 390, "height": 844})
    application = Application.objects.get(user=applicant)
    response = page.goto(base + path.format(application=application.pk))
    assert response.status == 200
    page.wait_for_load_state("networkidle")
    assert page.locator("table").count() > 0  # the page has the tables this is about
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"{name} is {width} px wide at a 390 px viewport"
