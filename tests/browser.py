"""What the browser tests share: Debian's Chromium driven by Playwright, and a skip when either is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing that would reach the network on its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def browser_missing() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return "needs /usr/bin/chromium (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "needs playwright (./venv/bin/pip install playwright; not `playwright install`)"
    return None


browser_only = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
