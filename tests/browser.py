"""Headless Chromium (Debian's, installed by `make browser`) driven by Playwright, for the HTML
reports: each page records console messages, uncaught errors and dialogs, so a test can assert that
a report loads cleanly and that no text from a file ever ran as script."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("COE_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps dialling out, which a closed network refuses.
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@dataclass
class PageEvents:
    console: list[str] = field(default_factory=list)  # "type: text" of every console message
    errors: list[str] = field(default_factory=list)  # uncaught exceptions
    dialogs: list[str] = field(default_factory=list)  # alert(), confirm(), prompt()
    failed_requests: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for

    def problems(self) -> list[str]:
        noisy = [line for line in self.console if line.startswith(("error", "warning"))]
        return [*noisy, *self.errors, *(f"dialog: {d}" for d in self.dialogs), *self.failed_requests]


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium (or set COE_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium):
    """A fresh page (its own context) whose events are in `page.events`."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    events = PageEvents()
    page.on("console", lambda message: events.console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: events.errors.append(f"uncaught: {error}"))
    page.on("request", lambda request: events.requests.append(request.url))
    page.on("requestfailed", lambda request: events.failed_requests.append(f"request failed: {request.url}"))

    def dismiss(dialog):
        events.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.events = events
    yield page
    context.close()
