"""Helpers for the browser tests: pages that collect CSP violations, and signing in."""

from __future__ import annotations

# Debian's Chromium, headless, as root, with nothing that reaches for the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def open_page(browser, *, timeout_ms: int = 15_000):
    """A page in a fresh context, and the list its Content-Security-Policy errors land in."""
    page = browser.new_context().new_page()
    page.set_default_timeout(timeout_ms)
    csp_errors: list[str] = []
    page.on(
        "console",
        lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    return page, csp_errors


def sign_in(page, base: str, email: str, password: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=login]", email)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
