"""Helpers for the browser tests: pages that collect CSP violations, signing in, and a
journal of screenshots, one per step."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

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


class Journal:
    """Screenshots of a browser test's steps, numbered, in one folder (printed when made).

    `with journal.step("apply", page): ...` saves the page's screenshot when the step ends;
    when it fails, the page's HTML and screenshot are saved (`NN-name-FAILED.*`) before the
    error goes on, so the failure can be read as the browser saw it.
    """

    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0
        print(f"\nbrowser screenshots: {self.folder}")

    def _stem(self, name: str) -> str:
        self.count += 1
        return str(self.folder / f"{self.count:02d}-{re.sub(r'[^a-z0-9]+', '-', name.lower())}")

    @contextlib.contextmanager
    def step(self, name: str, page):
        stem = self._stem(name)
        try:
            yield
        except BaseException:
            try:
                with open(f"{stem}-FAILED.html", "w", encoding="utf-8") as out:
                    out.write(page.content())
                page.screenshot(path=f"{stem}-FAILED.png", full_page=True)
                print(f"step {name!r} failed: its page is saved as {stem}-FAILED.html/.png")
            except Exception as exc:  # the page may be gone; the step's own error matters
                print(f"step {name!r} failed, and its page could not be saved: {exc!r}")
            raise
        page.screenshot(path=f"{stem}.png", full_page=True)
